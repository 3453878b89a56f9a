"""The issue-14 checks through the command line, with the tests' random tiny model as the dense leg.

One pooled index (all jsquad-dev articles + the first ``--jaquad-docs`` jaquad-train-sample
articles, tiny random LLaMA, flat ANN), then, per question set (``answer_is_title``
questions left out, at most ``--questions`` of each):

1. ``mitsuke eval --mode lexical`` and ``mitsuke eval`` (default hybrid): a useless dense
   leg must keep default hybrid within 0.03 of lexical at span hit@1/5/10;
2. ``mitsuke tune --save`` on one set's questions (the development questions), then
   ``mitsuke eval`` on the other set's (held out): at least as good as default hybrid.

    PYTHONPATH=$PWD .venv/bin/python bench/fusion_check.py [--jaquad-docs 80] [--questions 600]

Work files go to bench/results/fusion_check/; results to bench/results/fusion_check.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.common import RESULTS, SHARED_EVAL, machine, write_results  # noqa: E402

OUT = RESULTS / "fusion_check"
SETS = ("jsquad-dev", "jaquad-train-sample")
HITS = ("span_hit@1", "span_hit@5", "span_hit@10")
MITSUKE = [sys.executable, "-m", "mitsuke.cli"]


def mitsuke(*args) -> str:
    r = subprocess.run([*MITSUKE, *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"mitsuke {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return r.stdout


def prepare(jaquad_docs: int, n_questions: int) -> tuple[Path, dict[str, Path]]:
    from conftest import build_tiny_llama

    OUT.mkdir(parents=True, exist_ok=True)
    keep: set[str] = set()
    with open(OUT / "corpus.jsonl", "w", encoding="utf-8") as dst:
        for name in SETS:
            with open(SHARED_EVAL / name / "corpus.jsonl", encoding="utf-8") as src:
                for i, line in enumerate(src):
                    if name == "jaquad-train-sample" and i >= jaquad_docs:
                        break
                    keep.add(json.loads(line)["doc_id"])
                    dst.write(line)
    questions = {}
    for name in SETS:
        path = OUT / f"{name}.jsonl"
        with open(SHARED_EVAL / name / "queries.jsonl", encoding="utf-8") as src:
            lines = [ln for ln in src if (q := json.loads(ln))["doc_id"] in keep and not q["answer_is_title"]]
        step = max(1, len(lines) // n_questions)
        path.write_text("".join(lines[::step][:n_questions]), encoding="utf-8")
        questions[name] = path
    model = OUT / "tiny-llama"
    if not (model / "config.json").exists():
        build_tiny_llama(model)
    return model, questions


def hits(report: dict) -> dict[str, float]:
    m = report["metrics"]
    return {k: round(m[k], 4) for k in (*HITS, "mrr@10")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jaquad-docs", type=int, default=80)
    ap.add_argument("--questions", type=int, default=600)
    args = ap.parse_args()
    started = machine()
    model, questions = prepare(args.jaquad_docs, args.questions)
    idx = OUT / "idx"
    if not (idx / "manifest.json").exists():
        t0 = time.perf_counter()
        mitsuke("index", OUT / "corpus.jsonl", "--index", idx, "--model", model, "--device", "cpu", "--quiet")
        print(f"built {idx} in {time.perf_counter() - t0:.0f} s", flush=True)
    info = json.loads(mitsuke("info", "--index", idx, "--json"))
    ev = lambda index, q, *opts: json.loads(mitsuke("eval", "--index", index, "--queries", q,  # noqa: E731
                                                    "-k", "1,5,10", "--json", *opts))
    out = {"chunks": info["chunks"], "documents": info["documents"], "sets": {}, "tuned": {}}
    for name, q in questions.items():
        lexical, hybrid = ev(idx, q, "--mode", "lexical"), ev(idx, q)
        rrf = ev(idx, q, "--fusion", "rrf", "--weights", "1,1")
        out["sets"][name] = {"questions": lexical["counts"]["scored"], "lexical": hits(lexical),
                             "default hybrid": hits(hybrid), "rrf 1:1 (old default)": hits(rrf),
                             "worst gap to lexical": round(max(lexical["metrics"][h] - hybrid["metrics"][h]
                                                               for h in HITS), 4)}
        print(name, json.dumps(out["sets"][name]), flush=True)
    for dev, held in (SETS, SETS[::-1]):
        tuned_idx = OUT / f"idx-tuned-on-{dev}"
        shutil.rmtree(tuned_idx, ignore_errors=True)
        shutil.copytree(idx, tuned_idx)
        t0 = time.perf_counter()
        mitsuke("tune", "--index", tuned_idx, "--queries", questions[dev], "--save")
        seconds = time.perf_counter() - t0
        saved = json.loads(mitsuke("info", "--index", tuned_idx, "--json"))["search_defaults"]
        after = hits(ev(tuned_idx, questions[held]))
        before = out["sets"][held]["default hybrid"]
        out["tuned"][f"{dev} -> {held}"] = {
            "saved": saved, "tune_seconds": round(seconds, 1), "held_out_default": before, "held_out_tuned": after,
            "gain": {k: round(after[k] - before[k], 4) for k in after}}
        print(f"tuned on {dev}, eval on {held}:", json.dumps(out["tuned"][f"{dev} -> {held}"]), flush=True)
    print("results:", write_results("fusion_check", {"machine": started, "args": vars(args), **out}))


if __name__ == "__main__":
    main()
