"""ANN build and query benchmark over clustered synthetic vectors (no embedding).

Measures, for n vectors of dimension d (default 1792, sarashina's):
training time, add throughput, peak memory, bytes per vector in RAM and on
disk; then query latency p50/p95 (ANN search + exact rerank of 10×k
candidates from ``vectors.f16``) and top-10 agreement with exact search, for
several ``nprobe`` values.

Vectors are written through ``VectorStore`` in chunks, and exact ground
truth is a chunked matmul over the memmap, so memory stays bounded (~1.5 GiB
at 1M × 1792).

    PYTHONPATH=$PWD python bench/ann_build.py --n 100000
    PYTHONPATH=$PWD python bench/ann_build.py --n 1000000 --keep /tmp/ann1m
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import write_results  # noqa: E402
from mitsuke.indexer.ann import AnnIndex, choose_params  # noqa: E402
from mitsuke.indexer.recovery import training_sample  # noqa: E402
from mitsuke.indexer.vectors import VectorStore  # noqa: E402

GEN_BLOCK = 20_000
ADD_BLOCK = 16_384


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Clustered:
    """Unit vectors around ``clusters`` centres, varying inside a low-rank subspace.

    Real sentence embeddings have a low intrinsic dimension; isotropic noise
    in 1792 dimensions would make every neighbour equidistant and measure
    nothing. x = normalise(centre + z @ basis + noise), |centre| = 1, |z @ basis| ≈ 1, |noise| ≈ 0.1.
    """

    def __init__(self, dim: int, clusters: int = 1000, rank: int = 16, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.centres = rng.standard_normal((clusters, dim), dtype=np.float32)
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)
        basis = rng.standard_normal((rank, dim), dtype=np.float32)
        self.basis = basis / np.linalg.norm(basis, axis=1, keepdims=True)
        self.rank = rank

    def block(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        c = rng.integers(0, len(self.centres), n)
        z = rng.standard_normal((n, self.rank), dtype=np.float32) * 0.5 / np.sqrt(self.rank)
        x = self.centres[c] + z @ self.basis + 0.05 / np.sqrt(self.dim) * rng.standard_normal(
            (n, self.dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def exact_top(vs: VectorStore, n: int, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids by a chunked matmul over the float16 rows."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, n, 65536):
        rows = np.arange(start, min(n, start + 65536))
        s = queries @ vs.read(rows).T
        s_all = np.concatenate([best_s, s], axis=1)
        i_all = np.concatenate([best_i, np.broadcast_to(rows, s.shape)], axis=1)
        part = np.argpartition(-s_all, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(s_all, part, 1)
        best_i = np.take_along_axis(i_all, part, 1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_i, order, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1792)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--candidates", default="10,30", help="ANN candidates per result (rerank pool k×this), comma-separated")
    ap.add_argument("--nprobe", default="16,32,64,128,256")
    ap.add_argument("--keep", default=None, help="work directory to keep (default: a temp dir, deleted)")
    ap.add_argument("--json", default=None, help="write results here (default bench/results/ann_build_N.json)")
    args = ap.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mitsuke-ann-"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"n": args.n, "dim": args.dim, "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    gen = Clustered(args.dim)
    vs = VectorStore(work / "vectors.f16", args.dim)
    t = time.perf_counter()
    if vs.rows_on_disk != args.n:
        vs.truncate(0)
        for i, start in enumerate(range(0, args.n, GEN_BLOCK)):
            vs.append(gen.block(min(GEN_BLOCK, args.n - start), seed=1000 + i), start)
    out["generate_s"] = time.perf_counter() - t
    out["vectors_f16_bytes"] = os.path.getsize(vs.path)
    print(f"vectors: {args.n} x {args.dim} in {out['generate_s']:.1f} s", flush=True)

    params = choose_params(args.n, args.dim, "ivfpq")
    out["params"] = params.to_dict()
    rss0 = rss_mib()
    ann = AnnIndex.create(params)
    rows = np.arange(args.n, dtype=np.int64)
    t = time.perf_counter()
    sample = vs.read(training_sample(rows, params.train_size))
    out["sample_read_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ann.train(sample)
    out["train_s"] = time.perf_counter() - t
    del sample
    print(f"trained {params} in {out['train_s']:.1f} s", flush=True)
    rss1 = rss_mib()  # adds only grow the inverted lists: the RSS growth is their size
    t = time.perf_counter()
    ids = rows + 1  # chunk ids start at 1
    ann.add_bulk((ids[i:i + ADD_BLOCK], vs.read(rows[i:i + ADD_BLOCK])) for i in range(0, args.n, ADD_BLOCK))
    out["add_s"] = time.perf_counter() - t
    out["add_per_s"] = args.n / out["add_s"]
    vs.close()
    rss2 = rss_mib()
    out["ram_bytes_per_vector"] = max(0.0, rss2 - rss1) * 2**20 / args.n
    # What the inverted lists hold per vector: the PQ code and the 8-byte id.
    out["code_bytes_per_vector"] = params.m * params.nbits // 8 + 8
    out["rss_index_mib"] = rss2 - rss0
    t = time.perf_counter()
    ann.save(work / "ann.faiss")
    out["save_s"] = time.perf_counter() - t
    out["disk_bytes_per_vector"] = os.path.getsize(work / "ann.faiss") / args.n
    print(f"added at {out['add_per_s']:.0f} vectors/s; ann.faiss {out['disk_bytes_per_vector']:.1f} B/vector", flush=True)

    queries = Clustered(args.dim).block(args.queries, seed=99)
    t = time.perf_counter()
    truth = exact_top(vs, args.n, queries, args.k) + 1
    out["ground_truth_s"] = time.perf_counter() - t
    # Warm the page cache the way a long-running searcher has it warm (the
    # rerank reads random rows of vectors.f16; cold, each is a disk seek).
    with open(vs.path, "rb") as fh:
        while fh.read(1 << 24):
            pass
    out["queries"] = []
    for nprobe in [int(x) for x in args.nprobe.split(",")]:
        for factor in [int(x) for x in args.candidates.split(",")]:
            lat, agree = [], []
            for qi, q in enumerate(queries):
                t = time.perf_counter()
                _, cand = ann.search(q[None, :], args.k * factor, nprobe)
                cand = cand[0][cand[0] >= 0]
                exact = vs.read(cand - 1) @ q
                top = cand[np.argsort(-exact, kind="stable")[:args.k]]
                lat.append((time.perf_counter() - t) * 1000)
                agree.append(len(set(top.tolist()) & set(truth[qi].tolist())) / args.k)
            r = {"nprobe": nprobe, "pool": args.k * factor, "p50_ms": float(np.median(lat)),
                 "p95_ms": float(np.percentile(lat, 95)), "top10_agreement": float(np.mean(agree))}
            out["queries"].append(r)
            print(f"nprobe {nprobe:>4} pool {r['pool']:>4}: p50 {r['p50_ms']:.2f} ms  p95 {r['p95_ms']:.2f} ms  "
                  f"top-{args.k} agreement {r['top10_agreement']:.3f}", flush=True)
    out["peak_rss_mib"] = peak_mib()

    print()
    print("| n | dim | nlist | m | train sample | train s | add vec/s | peak RSS MiB | RAM B/vec (measured / codes+id) "
          "| ann.faiss B/vec | vectors.f16 B/vec |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.n:,} | {args.dim} | {params.nlist} | {params.m} | {params.train_size:,} | {out['train_s']:.1f} | "
          f"{out['add_per_s']:,.0f} | {out['peak_rss_mib']:,.0f} | {out['ram_bytes_per_vector']:.1f} / "
          f"{out['code_bytes_per_vector']} | {out['disk_bytes_per_vector']:.1f} | {args.dim * 2} |")
    print()
    print("| nprobe | rerank pool | p50 ms | p95 ms | top-10 agreement with exact |")
    print("|---|---|---|---|---|")
    for r in out["queries"]:
        print(f"| {r['nprobe']} | {r['pool']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['top10_agreement']:.3f} |")
    write_results(f"ann_build_{args.n}", out, path=args.json)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
