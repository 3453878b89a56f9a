"""mitsuke's overhead over raw FAISS (issue 15): same index, same parameters, same queries, side by side.

For each (nprobe, pool) setting and each held-out question, interleaved (the
order of the paths alternates per question), single thread, embedding excluded:

- ``raw``: ``faiss.read_index(ann.faiss)`` searched with ``SearchParametersIVF``,
  the pool's float16 rows read from a plain ``np.memmap`` of ``vectors.f16``
  and reranked by a matmul (the bench knows row = id - 1: no lookup at all);
- ``leg``: mitsuke's dense leg alone (``search.dense.dense_leg`` on an open
  snapshot: ANN view, id -> row map, block-checksummed reads, rerank);
- ``search``: ``Searcher.search(mode="dense")``: snapshot, dense leg and the
  ``Passage`` objects with their text (one SQL read of the k rows).

The query "embedding" is a dict lookup of a precomputed vector (timed
separately and reported). Medians per path, and the median of the per-question
differences to ``raw``, both in wall-clock time and in the thread's CPU time
(``time.thread_time``: on a shared, loaded machine the wall clock also counts
the time the thread waited for a core; CPU time does not). The top-10 ids of
every path must be identical.

Needs an index built by ``bench/ann_recall.py`` (chunk id i+1 holds source row i):

    PYTHONPATH=$PWD python bench/ann_overhead.py --index /tmp/annrec100k/idx --settings 32:30,256:500
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import cProfile  # noqa: E402
import pstats  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ann_build import Clustered  # noqa: E402
from bench.ann_recall import Lookup  # noqa: E402
from bench.common import write_results  # noqa: E402
from mitsuke.indexer.layout import Manifest  # noqa: E402
from mitsuke.search import Searcher  # noqa: E402
from mitsuke.search.dense import dense_leg  # noqa: E402


def stages(s: Searcher, queries: np.ndarray, k: int, nprobe: int, pool: int) -> dict[str, float]:
    """Median µs of each stage of one ``Searcher.search(mode="dense")``, run as search_batch runs them."""
    from mitsuke.search.dense import ann_candidates
    from mitsuke.search.ranking import make_passages
    from mitsuke.search.request import check_queries

    laps: dict[str, list[int]] = {}

    def lap(name: str, t0: int) -> int:
        t1 = time.perf_counter_ns()
        laps.setdefault(name, []).append(t1 - t0)
        return t1

    for rep in range(2):  # the first pass warms up
        for i in range(len(queries)):
            t = t_all = time.perf_counter_ns()
            qs = check_queries([f"q{i}"])
            req = s._cached_request(k, "dense", None, pool, nprobe, None, None, None, None, None)
            t = lap("check + request", t)
            qvecs = s._embed(qs, [0])
            t = lap("embedding lookup (excluded by the target)", t)
            cm = s.store.snapshot()
            snap = cm.__enter__()
            s.vectors.bind(snap.vectors_epoch())
            s.vectors.expect(s._block_sums(snap))
            ann, rowmap = s._ann_for(snap), s._rowmaps.for_snapshot(snap)
            t = lap("snapshot open + per-generation state", t)
            dense = ann_candidates(snap, ann, s.vectors, qvecs[0][None, :], k, pool, True, nprobe, None, rowmap)[0]
            t = lap("dense leg (ANN + row map + rerank)", t)
            lexical = s._lexical_leg(snap, req, qs[0])
            ranked, extra = s._fuse(snap, req, qvecs[0], dense, lexical.ranked)
            rows = snap.chunk_rows([c for c, _ in ranked[:k]])
            t = lap("passage rows (SQLite)", t)
            make_passages(rows, ranked[:k], dense, lexical.ranked, extra, lexical.matches)
            t = lap("Passage objects", t)
            cm.__exit__(None, None, None)
            t = lap("snapshot close", t)
            laps.setdefault("total", []).append(t - t_all)
        if rep == 0:
            laps.clear()
    return {name: round(float(np.median(v)) / 1000, 1) for name, v in laps.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--settings", default="32:30,256:500", help="nprobe:pool pairs")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--profile", action="store_true", help="also cProfile the dense leg at the first setting")
    ap.add_argument("--stages", action="store_true",
                    help="also time the stages of Searcher.search one by one at the first setting (current code only)")
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    idx = Path(args.index)
    manifest = Manifest.read(idx)
    dim, k = manifest.dim, args.k
    queries = Clustered(dim).block(args.queries, seed=99)
    raw_index = faiss.read_index(str(idx / "ann.faiss"))
    n = raw_index.ntotal
    mm = np.memmap(idx / "vectors.f16", dtype=np.float16, mode="r", shape=(n, dim))
    with open(idx / "vectors.f16", "rb") as fh:  # a long-running searcher has the vectors in the page cache
        while fh.read(1 << 24):
            pass
    emb = Lookup(None, queries)  # queries only: the index exists
    out: dict = {"index": str(idx), "n": n, "dim": dim, "queries": args.queries, "k": k,
                 "ann": manifest.ann.params.to_dict(), "load_avg": os.getloadavg(), "settings": []}
    s = Searcher.open(idx, embedder=emb)
    s.search("q0", k=k, mode="dense")  # loads the ANN index and the row map
    maps = hasattr(s, "_rowmaps")
    out["row_map"] = maps
    t = time.perf_counter()
    for i in range(args.queries):
        emb.encode_queries([f"q{i}"])
    out["embed_lookup_us"] = (time.perf_counter() - t) / args.queries * 1e6

    for setting in args.settings.split(","):
        nprobe, pool = (int(x) for x in setting.split(":"))
        sp = faiss.SearchParametersIVF(nprobe=nprobe)

        def raw(q: np.ndarray) -> np.ndarray:
            cand = raw_index.search(q[None, :], pool, params=sp)[1][0]
            cand = cand[cand >= 0]
            r = np.sort(cand - 1)
            sc = np.asarray(mm[r], dtype=np.float32) @ q
            return (r + 1)[np.lexsort((r, -sc))[:k]]

        def leg(q: np.ndarray) -> np.ndarray:
            with s.store.snapshot() as snap:
                s.vectors.bind(snap.vectors_epoch())
                s.vectors.expect(s._block_sums(snap))
                extra = (s._rowmaps.for_snapshot(snap),) if maps else ()  # older mitsuke: no row map
                hits = dense_leg(snap, s._ann_for(snap), s.vectors, q[None, :], k, pool, True, nprobe, None,
                                 *extra)[0]
            return np.array([c for c, _ in hits])

        def search(i: int) -> np.ndarray:
            return np.array([p.chunk_id for p in s.search(f"q{i}", k=k, mode="dense", nprobe=nprobe,
                                                          candidates=pool)])

        lat: dict[str, list[float]] = {"raw": [], "leg": [], "search": []}
        cpu: dict[str, list[float]] = {"raw": [], "leg": [], "search": []}
        same = {"leg": 0, "search": 0}
        paths = [("raw", lambda i: raw(queries[i])), ("leg", lambda i: leg(queries[i])), ("search", search)]
        for i in range(args.queries):  # warm-up, untimed: every vector block's first-touch checksum done
            for _, fn in paths:
                fn(i)
        for i in range(args.queries):
            order = paths if i % 2 == 0 else paths[::-1]
            got = {}
            for name, fn in order:
                c = time.thread_time()
                t = time.perf_counter()
                got[name] = fn(i)
                lat[name].append((time.perf_counter() - t) * 1000)
                cpu[name].append((time.thread_time() - c) * 1000)
            for name in same:
                same[name] += int(np.array_equal(got[name], got["raw"]))
        row = {"nprobe": nprobe, "pool": pool}
        for name, values in lat.items():
            row[f"{name}_p50_ms"] = round(float(np.median(values)), 4)
            row[f"{name}_p95_ms"] = round(float(np.percentile(values, 95)), 4)
            row[f"{name}_cpu_p50_ms"] = round(float(np.median(cpu[name])), 4)
        for name in ("leg", "search"):
            diff = np.array(lat[name]) - np.array(lat["raw"])
            row[f"{name}_minus_raw_p50_ms"] = round(float(np.median(diff)), 4)
            cdiff = np.array(cpu[name]) - np.array(cpu["raw"])
            row[f"{name}_minus_raw_cpu_p50_ms"] = round(float(np.median(cdiff)), 4)
            row[f"{name}_same_top{k}"] = same[name]
        out["settings"].append(row)
        print(row, flush=True)
        if args.profile and len(out["settings"]) == 1:
            prof = cProfile.Profile()
            prof.enable()
            for i in range(args.queries):
                leg(queries[i])
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    if args.stages:
        out["stages_us"] = stages(s, queries, k, *(int(x) for x in args.settings.split(",")[0].split(":")))
        print(out["stages_us"], flush=True)
    s.close()
    out["load_avg_end"] = os.getloadavg()
    print(write_results(f"ann_overhead_{n}", out))


if __name__ == "__main__":
    main()
