"""Issue 15's acceptance check on the shared eval data: IVF-PQ forced at default settings vs a flat index.

Takes a directory index built with the tests' tiny model and the default (flat)
ANN (e.g. the pooled index `bench/fusion_check.py` builds), copies it, switches
the copy to IVF-PQ (`AnnConfig(kind="ivfpq")`: trained from the stored vectors,
recall measured and tuned by the builder, no re-embedding), then asks every
question of the given QA files (held out: the tuner measures itself on
perturbed stored vectors, never on these) for the dense top 10 on both, and
reports the mean top-10 overlap with flat, the share of identical top-10 sets,
and the recall the copy measured about itself (what `mitsuke info` shows).

    PYTHONPATH=$PWD python bench/ann_check.py --index bench/results/fusion_check/idx \
        --queries bench/results/fusion_check/jsquad-dev.jsonl,bench/results/fusion_check/jaquad-train-sample.jsonl
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine, write_results  # noqa: E402
from mitsuke.indexer import IndexBuilder  # noqa: E402
from mitsuke.indexer.config import AnnConfig  # noqa: E402
from mitsuke.search import Searcher  # noqa: E402


def questions(paths: list[str]) -> list[str]:
    out = []
    for p in paths:
        with open(p, encoding="utf-8") as fh:
            out += [json.loads(line)["question"] for line in fh if line.strip()]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", required=True, help="a flat directory index built with a (tiny) model")
    ap.add_argument("--queries", required=True, help="comma-separated QA JSONL files (eval format)")
    ap.add_argument("--work", default="/tmp/mitsuke-ann-check")
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    ivf = work / "ivfpq"
    shutil.copytree(args.index, ivf, ignore=shutil.ignore_patterns("LOCK"))
    t0 = time.perf_counter()
    with IndexBuilder.open(ivf, ann=AnnConfig(kind="ivfpq"), load_model=False):
        pass  # closing switches the ANN: train, add, measure recall, tune, save
    build_s = time.perf_counter() - t0
    qs = questions(args.queries.split(","))
    with Searcher.open(args.index) as flat, Searcher.open(ivf) as approx:
        info = approx.info()
        a = flat.search_batch(qs, k=args.k, mode="dense")
        b = approx.search_batch(qs, k=args.k, mode="dense")
    overlaps = [len({p.chunk_id for p in x} & {p.chunk_id for p in y}) / max(len(x), 1) for x, y in zip(a, b)]
    same = sum(1 for x, y in zip(a, b) if [p.chunk_id for p in x] == [p.chunk_id for p in y])
    result = {
        "index": str(args.index), "chunks": info["chunks"], "questions": len(qs), "k": args.k,
        "ann": info["ann"], "ann_tuning": info.get("ann_tuning"), "switch_s": round(build_s, 1),
        "mean_overlap": round(sum(overlaps) / len(overlaps), 4),
        "identical_sets": round(sum(1 for o in overlaps if o == 1.0) / len(overlaps), 4),
        "identical_order": round(same / len(overlaps), 4),
        "min_overlap": min(overlaps), "machine": machine(),
    }
    print(json.dumps(result, ensure_ascii=False, indent=1))
    write_results("ann_check", result)


if __name__ == "__main__":
    main()
