"""Choose chunking defaults by measurement: lexical span hit@k on the pooled eval corpora.

Builds one lexical-only index (``--model none``) of jsquad-dev + jaquad-train-sample
per chunking setting and scores every usable question of both sets in lexical
mode (BM25 over MeCab terms). Span hit@5 is the figure that matters (README of
shared/eval); mean chunk length is printed next to it because a bigger chunk
contains more answer spans by construction and costs more to embed and to read.

    PYTHONPATH=$PWD /work/venv/bin/python bench/chunk_defaults.py [--sizes 200,300,...] [--overlaps 0,0.25]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mitsuke.indexer.builder import IndexBuilder  # noqa: E402
from mitsuke.indexer.chunking import Chunker  # noqa: E402
from mitsuke.indexer.config import ChunkConfig  # noqa: E402
from bench.common import eval_corpus, write_results  # noqa: E402
from mitsuke.search.evaluate import evaluate, load_queries  # noqa: E402
from mitsuke.search.searcher import Searcher  # noqa: E402

EVAL = REPO.parent / "shared" / "eval"
SETS = ("jsquad-dev", "jaquad-train-sample")



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="150,200,300,400,500,600")
    ap.add_argument("--overlaps", default="0", help="overlap as a share of the budget")
    ap.add_argument("--extra", default="300:0.25,400:0.25", help="more SIZE:OVERLAP_SHARE settings")
    ap.add_argument("--limit", type=int, default=None, help="questions per set (default: all)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "chunk_defaults.json"))
    args = ap.parse_args()
    if not (EVAL / SETS[0]).exists():
        sys.exit(f"{EVAL} not found")
    docs = eval_corpus()
    queries = []
    for name in SETS:
        qs, _skipped = load_queries(EVAL / name / "queries.jsonl")
        queries += qs[: args.limit] if args.limit else qs
    rows = []
    print(f"{len(docs)} articles, {sum(len(d['text']) for d in docs):,} chars, {len(queries)} questions")
    print(f"{'max_chars':>9} {'overlap':>7} {'chunks':>7} {'mean len':>8} {'hit@1':>6} {'hit@5':>6} {'hit@10':>6} "
          f"{'mrr@10':>6} {'build s':>7}")
    settings = [(int(x), float(o)) for x in args.sizes.split(",") for o in args.overlaps.split(",")]
    settings += [(int(x.split(":")[0]), float(x.split(":")[1])) for x in args.extra.split(",") if x]
    for size, share in settings:
        overlap = int(size * share)
        config = ChunkConfig(max_chars=size, overlap=overlap)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            with IndexBuilder.open(tmp, "none", chunking=config) as b:
                b.add_documents(dict(d) for d in docs)
            build = time.perf_counter() - t0
            chunker = Chunker(config)
            lengths = [len(c.text) for d in docs for c in chunker.chunk(d["text"])]
            with Searcher.open(tmp) as s:
                report = evaluate(s, queries, (1, 5, 10), mode="lexical")
        m = report.metrics
        row = {"max_chars": size, "overlap": overlap, "chunks": len(lengths),
               "mean_len": statistics.mean(lengths) if lengths else None, **m, "build_s": build}
        rows.append(row)
        print(f"{size:>9} {overlap:>7} {row['chunks']:>7} {row['mean_len'] or 0:>8.1f} {m['span_hit@1']:>6.4f} "
              f"{m['span_hit@5']:>6.4f} {m['span_hit@10']:>6.4f} {m['mrr@10']:>6.4f} {build:>7.1f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_results("chunk_defaults", {"rows": rows}, path=args.out)


if __name__ == "__main__":
    main()
