"""IVF-PQ index parameters chosen by measurement (issue 15): 8-bit PQ vs 4-bit fast-scan PQ, nlist.

At equal bytes per vector (64-byte codes: ``PQ64x8`` = 64 sub-quantizers of
8 bits, ``PQ128x4fs`` = FAISS's SIMD fast-scan with 128 sub-quantizers of 4
bits) and for each ``nlist``, every index is built on the same vectors
(``bench/ann_recall.py``'s ``source.f16``; generated if missing), then
measured the way mitsuke measures its own indexes (``indexer.ann_tune``): the
cheapest (nprobe, rerank pool) reaching the recall target, its single-thread
p50 (ANN search + exact rerank), and the recall of held-out questions at
those settings. The coarse quantizer is a flat (exact) one everywhere: at the
nlist values here (≤ 1024) scanning the centroids costs ~0.1 ms per query;
an HNSW quantizer pays off only for much larger nlist.

    PYTHONPATH=$PWD python bench/ann_params.py --n 100000 --work /tmp/annrec100k
    nice -n 5 env PYTHONPATH=$PWD python bench/ann_params.py --n 1000000 --nlist 1024 --kinds PQ128x4fs \
        --queries 300 --work /tmp/annrec1m

Resumable: each index is saved to the work directory once trained and once
filled (with its train/add seconds beside it), and reloaded by a rerun.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ann_build import GEN_BLOCK, Clustered  # noqa: E402
from bench.common import write_results  # noqa: E402
from mitsuke.indexer.ann import AnnIndex, AnnParams, choose_params  # noqa: E402
from mitsuke.indexer.ann_tune import exact_neighbours, tune_ann  # noqa: E402
from mitsuke.indexer.recovery import training_sample  # noqa: E402
from mitsuke.indexer.vectors import VectorStore  # noqa: E402


def build(kind: str, quantizer, dim: int, nlist: int, faiss):
    if kind == "PQ64x8":
        return faiss.IndexIVFPQ(quantizer, dim, nlist, 64, 8, faiss.METRIC_INNER_PRODUCT)
    return faiss.IndexIVFPQFastScan(quantizer, dim, nlist, 128, 4, faiss.METRIC_INNER_PRODUCT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1792)
    ap.add_argument("--nlist", default="256,1024")
    ap.add_argument("--kinds", default="PQ64x8,PQ128x4fs")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--target", type=float, default=0.97)
    ap.add_argument("--work", default="/tmp/mitsuke-annrec")
    ap.add_argument("--sweep", default="", help="also measure these nprobe:pool pairs (e.g. 1:30,2:30,4:30)")
    ap.add_argument("--no-tune", action="store_true", help="skip the tuner (e.g. a resumed run that only sweeps)")
    ap.add_argument("--repeat", type=int, default=1, help="passes over the questions per setting (median of all)")
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    src = VectorStore(work / "source.f16", args.dim)
    if src.rows_on_disk != args.n:
        src.truncate(0)
        gen = Clustered(args.dim)
        for i, start in enumerate(range(0, args.n, GEN_BLOCK)):
            src.append(gen.block(min(GEN_BLOCK, args.n - start), seed=1000 + i), start)
    rows = np.arange(args.n)
    ids = rows + 1
    queries = Clustered(args.dim).block(args.queries, seed=99)
    truth = exact_neighbours(src, ids, rows, queries, 10)
    with open(src.path, "rb") as fh:
        while fh.read(1 << 24):
            pass
    results = []
    for nlist in [int(x) for x in args.nlist.split(",")]:
        base = choose_params(args.n, args.dim, "ivfpq", nlist=nlist)
        sample = src.read(training_sample(rows, base.train_size))
        quantizer = None
        for kind in args.kinds.split(","):
            stem = work / f"ivf{nlist}_{kind}"
            done, trained = stem.with_suffix(".faiss"), stem.with_suffix(".trained.faiss")
            times = json.loads(stem.with_suffix(".json").read_text()) if stem.with_suffix(".json").exists() else {}
            if done.exists() and "add_s" in times:  # resumed: filled earlier
                index = faiss.read_index(str(done))
                train_s, add_s = times["train_s"], times["add_s"]
                print(f"{kind} nlist {nlist}: loaded {done}", flush=True)
            else:
                if trained.exists() and "train_s" in times:
                    index = faiss.read_index(str(trained))
                    train_s = times["train_s"]
                else:
                    q = faiss.IndexFlatIP(args.dim) if quantizer is None else faiss.clone_index(quantizer)
                    index = build(kind, q, args.dim, nlist, faiss)
                    keep = q  # noqa: F841  (the index holds a raw pointer to its quantizer)
                    t = time.perf_counter()
                    index.train(sample)
                    train_s = time.perf_counter() - t
                    faiss.write_index(index, str(trained))
                    times["train_s"] = train_s
                    stem.with_suffix(".json").write_text(json.dumps(times))
                    print(f"{kind} nlist {nlist}: trained in {train_s:.1f} s", flush=True)
                if quantizer is None:
                    quantizer = faiss.clone_index(faiss.downcast_index(index.quantizer))  # the next kind reuses it
                t = time.perf_counter()
                for s in range(0, args.n, 16384):
                    index.add_with_ids(src.read(rows[s:s + 16384]), ids[s:s + 16384])
                add_s = time.perf_counter() - t
                faiss.write_index(index, str(done))
                times["add_s"] = add_s
                stem.with_suffix(".json").write_text(json.dumps(times))
                print(f"{kind} nlist {nlist}: added {args.n} in {add_s:.1f} s", flush=True)
            params = AnnParams(kind="ivfpq", dim=args.dim, nlist=nlist, m=64 if kind == "PQ64x8" else 128,
                               nbits=8 if kind == "PQ64x8" else 4, nprobe=base.nprobe, train_size=base.train_size)
            ann = AnnIndex(index, params)
            # The tuner's choice (skipped with --no-tune: then its own settings are the first sweep pair).
            tu = None if args.no_tune else tune_ann(ann, src, ids, rows, target=args.target, time_budget_s=300)

            def measure(index, nprobe: int, pool: int, cpu: list[float] | None = None) -> tuple[list[float], float]:
                lat, found = [], []
                for qv in queries:
                    c = time.thread_time()
                    t = time.perf_counter()
                    sp = faiss.SearchParametersIVF(nprobe=nprobe)
                    cand = index.search(qv[None, :], pool, params=sp)[1][0]
                    cand = np.sort(cand[cand >= 0])
                    found.append(cand[np.argsort(-(src.read(cand - 1) @ qv), kind="stable")[:10]])
                    lat.append((time.perf_counter() - t) * 1000)
                    if cpu is not None:
                        cpu.append((time.thread_time() - c) * 1000)
                rec = float(np.mean([len(set(f.tolist()) & set(tr.tolist())) / 10 for f, tr in zip(found, truth)]))
                return lat, rec

            lat0, rec0 = measure(index, base.nprobe, 100)  # the formula defaults (nlist/8, 10 x k) for comparison
            print(f"{kind} nlist {nlist} formula defaults nprobe {base.nprobe} pool 100: p50 "
                  f"{np.median(lat0):.3f} ms, recall@10 {rec0:.4f}", flush=True)
            first = [int(x) for x in (args.sweep.split(",")[0] or "1:100").split(":")]
            chosen = (tu.nprobe, tu.candidates) if tu is not None else (first[0], first[1])
            lat, held = measure(index, *chosen)
            sweep = []
            for pair in filter(None, args.sweep.split(",")):
                nprobe, pool = (int(x) for x in pair.split(":"))
                lat_s: list[float] = []
                cpu_s: list[float] = []
                for _ in range(args.repeat):
                    part, rec_s = measure(index, nprobe, pool, cpu_s)
                    lat_s += part
                sweep.append({"nprobe": nprobe, "pool": pool, "held_out_recall": round(rec_s, 4),
                              "p50_ms": round(float(np.median(lat_s)), 3),
                              "p95_ms": round(float(np.percentile(lat_s, 95)), 3),
                              "cpu_p50_ms": round(float(np.median(cpu_s)), 3), "load_avg": os.getloadavg()[0]})
                print(f"{kind} nlist {nlist} nprobe {nprobe} pool {pool}: {sweep[-1]}", flush=True)
            r = {"codes": kind, "nlist": nlist, "bytes_per_vector": 64, "train_s": round(train_s, 1),
                 "add_s": round(add_s, 1), "nprobe": chosen[0], "pool": chosen[1], "met": tu and tu.met,
                 "estimated_recall": tu and tu.recall, "estimated_low": tu and tu.recall_low,
                 "frontier": tu and tu.frontier, "held_out_recall": round(held, 4),
                 "p50_ms": round(float(np.median(lat)), 3), "p95_ms": round(float(np.percentile(lat, 95)), 3),
                 "tune_s": tu and tu.seconds, "sweep": sweep,
                 "defaults": {"nprobe": base.nprobe, "pool": 100, "recall": round(rec0, 4),
                              "p50_ms": round(float(np.median(lat0)), 3)}}
            results.append(r)
            print(r, flush=True)
            del index, ann
    print()
    print("| codes (64 B/vector) | nlist | train s | add s | nprobe | pool | held-out recall@10 | p50 ms | p95 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['codes']} | {r['nlist']} | {r['train_s']} | {r['add_s']} | {r['nprobe']} | {r['pool']} | "
              f"{r['held_out_recall']:.3f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} |")
    print(write_results(f"ann_params_{args.n}", {"n": args.n, "dim": args.dim, "target": args.target,
                                                 "results": results}))


if __name__ == "__main__":
    main()
