"""Measured recall tuning (issue 15), side by side on one set of clustered synthetic vectors.

One run, embedding excluded (passages and questions map to precomputed vectors):

1. ``n`` clustered vectors of ``dim`` (``ann_build.Clustered``) are indexed through
   ``IndexBuilder`` (IVF-PQ forced, default parameters): build time, IVF-PQ
   train + add time, and the recall tuning's own time (the build cost
   before/after this issue is train + add vs train + add + tuning);
2. held-out questions from the same distribution (never in the index), exact
   top-10 by a matmul over ``vectors.f16``;
3. single-thread latency and mean recall@10 of
   - the pre-issue defaults (nprobe nlist/8, pool 10×k) through raw FAISS + exact rerank,
   - the tuned settings through raw FAISS alone (search only), raw FAISS + exact
     rerank, and ``Searcher.search(mode="dense")`` (mitsuke's overhead = its
     p50 minus raw FAISS's, same parameters, same queries);
4. the tuner's recall estimate with and without the perturbation of its
   sampled queries, against the held-out recall at the same settings.

    PYTHONPATH=$PWD python bench/ann_recall.py --n 100000 --keep /tmp/annrec100k
    PYTHONPATH=$PWD python bench/ann_recall.py --n 1000000 --queries 200 --keep /tmp/annrec1m
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # single-thread latency, as the targets are stated

import argparse  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ann_build import GEN_BLOCK, Clustered  # noqa: E402
from bench.common import write_results  # noqa: E402
from mitsuke.indexer import IndexBuilder  # noqa: E402
from mitsuke.indexer.ann import AnnIndex  # noqa: E402
from mitsuke.indexer.ann_tune import exact_neighbours, tune_ann  # noqa: E402
from mitsuke.indexer.config import AnnConfig  # noqa: E402
from mitsuke.indexer.layout import Manifest  # noqa: E402
from mitsuke.indexer.vectors import VectorStore  # noqa: E402
from mitsuke.search import Searcher  # noqa: E402


class Lookup:
    """``p<i>`` -> row i of the generated vectors, ``q<i>`` -> held-out query i (mitsuke's embedder interface).

    Without a ``store`` it only answers queries (a bench that searches an existing index).
    """

    name = "synthetic-lookup"
    device = "cpu"
    dtype_name = "float32"

    def __init__(self, store: VectorStore | None, queries: np.ndarray) -> None:
        self.store, self.queries, self.dim = store, queries, int(queries.shape[1])

    @property
    def info(self):
        from mitsuke.indexer.embedding import ModelInfo

        return ModelInfo(name=self.name, revision=None, dim=self.dim, pooling="none", normalize=True,
                         max_length=1_000_000)

    def count_tokens(self, texts):
        return [len(t) for t in texts]

    def encode_documents(self, texts, progress=None):
        if self.store is None:
            raise NotImplementedError("this lookup only answers queries")
        return self.store.read([int(re.search(r"p(\d+)", t).group(1)) for t in texts])

    def encode_queries(self, texts):
        return self.queries[[int(re.search(r"q(\d+)", t).group(1)) for t in texts]]


def timed_queries(fn, queries: np.ndarray) -> tuple[list[float], list[np.ndarray]]:
    lat, out = [], []
    for i, q in enumerate(queries):
        t = time.perf_counter()
        out.append(fn(i, q))
        lat.append((time.perf_counter() - t) * 1000)
    return lat, out


def recall(found: list[np.ndarray], truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(np.asarray(f)[:k].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1792)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--target", type=float, default=0.97)
    ap.add_argument("--keep", default="/tmp/mitsuke-annrec", help="work directory (vectors are reused if present)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import faiss

    faiss.omp_set_num_threads(1)
    k = 10
    work = Path(args.keep)
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"n": args.n, "dim": args.dim, "queries": args.queries, "target": args.target}
    gen = Clustered(args.dim)
    src = VectorStore(work / "source.f16", args.dim)
    if src.rows_on_disk != args.n:
        src.truncate(0)
        for i, start in enumerate(range(0, args.n, GEN_BLOCK)):
            src.append(gen.block(min(GEN_BLOCK, args.n - start), seed=1000 + i), start)
    queries = Clustered(args.dim).block(args.queries, seed=99)
    emb = Lookup(src, queries)

    # ---- 1. build through IndexBuilder, timing the ANN phases
    idx = work / "idx"
    phases: dict[str, float] = {"train_s": 0.0, "add_s": 0.0}
    orig_train, orig_add = AnnIndex.train, AnnIndex.add_bulk

    def train(self, v):
        t = time.perf_counter()
        orig_train(self, v)
        phases["train_s"] += time.perf_counter() - t

    def add_bulk(self, blocks):
        t = time.perf_counter()
        orig_add(self, blocks)
        phases["add_s"] += time.perf_counter() - t

    if not (idx / "manifest.json").exists():
        AnnIndex.train, AnnIndex.add_bulk = train, add_bulk
        t = time.perf_counter()
        with IndexBuilder.open(idx, embedder=emb, ann=AnnConfig(kind="ivfpq"), recall_target=args.target,
                               batch_docs=5000, batch_chunks=5000) as b:
            b.add_documents({"id": f"d{i}", "text": f"第{i}段落 p{i}"} for i in range(args.n))
        out["build_s"] = time.perf_counter() - t
        AnnIndex.train, AnnIndex.add_bulk = orig_train, orig_add
        out.update(phases)
    m = Manifest.read(idx)
    tuning = m.ann.tuning
    params = m.ann.params
    out["params"] = params.to_dict()
    out["tuning"] = tuning.to_dict()
    print(f"built: {out.get('build_s', 0):.0f} s (train {phases['train_s']:.0f} s, add {phases['add_s']:.0f} s); "
          f"tuning {tuning.seconds:.1f} s -> nprobe {tuning.nprobe}, pool {tuning.candidates}, "
          f"recall {tuning.recall}, p50 {tuning.p50_ms} ms", flush=True)

    # ---- 2. exact truth for held-out questions
    store = VectorStore(idx / "vectors.f16", args.dim)
    rows = np.arange(args.n)
    ids = rows + 1  # chunk ids follow insertion order here, vector rows too
    t = time.perf_counter()
    truth = exact_neighbours(store, ids, rows, queries, k)
    out["truth_s"] = time.perf_counter() - t
    with open(store.path, "rb") as fh:  # a long-running searcher has vectors.f16 in the page cache
        while fh.read(1 << 24):
            pass
    ann = AnnIndex.load(idx / "ann.faiss", params)
    sp = faiss.SearchParametersIVF

    def raw(nprobe, pool):
        def fn(i, q):
            return ann.index.search(q[None, :], pool, params=sp(nprobe=nprobe))[1][0]
        return fn

    def raw_rerank(nprobe, pool):
        def fn(i, q):
            cand = ann.index.search(q[None, :], pool, params=sp(nprobe=nprobe))[1][0]
            cand = cand[cand >= 0]
            r = np.sort(cand - 1)
            return (r + 1)[np.argsort(-(store.read(r) @ q), kind="stable")[:k]]
        return fn

    rows_out = []

    def run(label, fn, nprobe, pool):
        lat, found = timed_queries(fn, queries)
        rec = recall(found, truth, k)
        r = {"path": label, "nprobe": nprobe, "pool": pool, "p50_ms": float(np.median(lat)),
             "p95_ms": float(np.percentile(lat, 95)), "recall@10": rec}
        rows_out.append(r)
        print(f"{label:<34} nprobe {nprobe:>4} pool {pool:>4}: p50 {r['p50_ms']:.3f} ms  p95 {r['p95_ms']:.3f} ms  "
              f"recall@10 {rec:.3f}", flush=True)
        return r

    run("pre-issue defaults, FAISS + rerank", raw_rerank(params.nprobe, 10 * k), params.nprobe, 10 * k)
    np_, pool = tuning.nprobe, tuning.candidates
    raw_r = run("tuned, raw FAISS search only", raw(np_, pool), np_, pool)
    run("tuned, raw FAISS + numpy rerank", raw_rerank(np_, pool), np_, pool)
    with Searcher.open(idx, embedder=emb) as s:
        s.search("q0", k=k, mode="dense")  # load the index
        mit = run("tuned, mitsuke Searcher (dense)", lambda i, q: np.array(
            [h.chunk_id for h in s.search(f"q{i}", k=k, mode="dense")]), np_, pool)
    out["overhead_p50_ms"] = mit["p50_ms"] - raw_r["p50_ms"]
    print(f"mitsuke overhead over raw FAISS at p50: {out['overhead_p50_ms']:.3f} ms", flush=True)
    out["paths"] = rows_out

    # ---- 4. the tuner's estimate, with and without perturbed sample queries, vs held-out recall
    est = []
    for perturb in (0.0, 0.3, 0.6):
        t2 = tune_ann(ann, store, ids, rows, target=args.target, perturb=perturb)
        held = recall([raw_rerank(t2.nprobe, t2.candidates)(i, q) for i, q in enumerate(queries)], truth, k)
        est.append({"perturb": perturb, "nprobe": t2.nprobe, "pool": t2.candidates, "estimated": t2.recall,
                    "held_out": held, "seconds": t2.seconds})
        print(f"tuner perturb {perturb}: nprobe {t2.nprobe} pool {t2.candidates} estimated {t2.recall:.3f} "
              f"held-out {held:.3f} ({t2.seconds:.1f} s)", flush=True)
    out["sampling"] = est
    print(write_results(f"ann_recall_{args.n}", out))


if __name__ == "__main__":
    main()
