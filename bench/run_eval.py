"""Build the pooled evaluation index and score both shared/eval query sets with `mitsuke eval`.

The pooled index holds jsquad-dev + jaquad-train-sample (459 Japanese
Wikipedia articles, ~8.6k passages): each question is searched among both
corpora, a harder space than either alone. Everything goes through the
real CLI (`python -m mitsuke.cli`), exactly as a user would run it:

    mitsuke index ../shared/eval/jsquad-dev/corpus.jsonl \\
                  ../shared/eval/jaquad-train-sample/corpus.jsonl --index DIR --model none
    mitsuke eval --index DIR --queries ../shared/eval/<set>/queries.jsonl --mode lexical --json

Run from the repository root:
    PYTHONPATH=$PWD /work/venv/bin/python bench/run_eval.py
    PYTHONPATH=$PWD /work/venv/bin/python bench/run_eval.py --index /tmp/pooled --mode lexical -k 1,5,10,20
A dense or hybrid run needs an index built with a model (--model PATH).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, RESULTS, SHARED_EVAL, table, write_results  # noqa: E402

SETS = ("jsquad-dev", "jaquad-train-sample")


def mitsuke(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "mitsuke.cli", *args]
    print("$ mitsuke " + " ".join(args), flush=True)
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"mitsuke {args[0]} failed with exit code {done.returncode}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", default=str(RESULTS / "eval-pooled.idx"), help="index directory (built if absent)")
    ap.add_argument("--model", default="none", help="model for a new index ('none' = lexical-only)")
    ap.add_argument("--mode", default="lexical", choices=["lexical", "dense", "hybrid"])
    ap.add_argument("-k", default="1,5,10,20")
    ap.add_argument("--no-rerank", action="store_true")
    args = ap.parse_args(argv)
    if not (SHARED_EVAL / SETS[0] / "corpus.jsonl").exists():
        print(f"needs {SHARED_EVAL} (the shared eval data beside the repository)", file=sys.stderr)
        return 2
    corpora = [str(SHARED_EVAL / s / "corpus.jsonl") for s in SETS]
    t0 = time.perf_counter()
    built = mitsuke("index", *corpora, "--index", args.index, "--model", args.model, "--json")
    index_s = time.perf_counter() - t0
    info = mitsuke("info", "--index", args.index, "--json")
    print(f"index: {info['documents']} documents, {info['chunks']} chunks "
          f"(added {built['added']}, unchanged {built['unchanged']}) in {index_s:.1f} s", flush=True)

    rows, reports = [], {}
    for name in SETS:
        extra = ["--no-rerank"] if args.no_rerank else []
        rep = mitsuke("eval", "--index", args.index, "--queries", str(SHARED_EVAL / name / "queries.jsonl"),
                      "-k", args.k, "--mode", args.mode, *extra, "--json")
        reports[name] = rep
        m, c = rep["metrics"], rep["counts"]
        row = {"set": name, "scored": c["scored"], "title_q": c["title_questions"]}
        for key in ("span_hit@1", "span_hit@5", "span_hit@10", "span_hit@20", "answer_hit@5", "doc_hit@1",
                    "doc_hit@5", "mrr@10", "ndcg@10", "latency_p50_ms", "latency_p95_ms"):
            if key in m:
                row[key] = m[key]
        if rep["title_questions"]:
            row["title_doc_hit@5"] = rep["title_questions"].get("doc_hit@5")
        rows.append(row)
    cols = ["set", "scored", "span_hit@1", "span_hit@5", "span_hit@10", "span_hit@20", "mrr@10", "ndcg@10",
            "answer_hit@5", "doc_hit@1", "doc_hit@5", "latency_p50_ms", "latency_p95_ms", "title_q",
            "title_doc_hit@5"]
    print()
    print(table(rows, [c for c in cols if any(c in r for r in rows)],
                title=f"mitsuke eval, pooled index ({info['chunks']} chunks), mode {args.mode}"))
    path = write_results(f"eval-{args.mode}", {"index": info, "index_seconds": index_s, "build": built,
                                               "reports": reports, "rows": rows})
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
