"""Measure an IVF-PQ index's recall against exact search and pick the cheapest nprobe / rerank pool.

mitsuke holds every vector exactly (``vectors.f16``), so it can measure what
its ANN + exact-rerank path loses instead of guessing (issue 15):

1. **Queries from the index itself.** ``queries`` chunks are drawn at random
   (seeded); each query is the chunk's stored vector plus isotropic Gaussian
   noise of relative norm ``perturb`` (renormalised), and the chunk itself is
   left out of both the exact and the ANN answer (*leave-one-out*). Without
   the noise and the leave-one-out the query would be its own top-1 in both
   answers and sit exactly on a stored point, which flatters recall; real
   questions land *near* passages, not on them. ``bench/ann_recall.py``
   compares the estimate with held-out queries from the same distribution.
2. **Exact top-k** by a chunked matmul over the float16 vectors (what the
   rerank scores), ids in the same order as FAISS returns them.
3. **Recall of ANN + exact rerank** for every (nprobe, pool) of a grid,
   without reading a single vector: the global exact top-k outranks every
   other vector, so after an exact rerank of a pool, the reranked top-k holds
   exactly the true neighbours that reached the pool. Recall@k = |pool ∩
   truth| / k. One batch search per nprobe (largest pool) serves every pool.
   A configuration **meets the target when the one-sided 95% lower
   confidence bound of its mean recall does** (mean − 1.645 × the standard
   error of the per-query recalls), not the sampled mean itself: a mean a
   hair over the target is as likely under it on other queries (at 1M the
   mean-based choice measured 0.973 and held out 0.9697). With 200 queries
   the bound sits ~0.005–0.01 under a mean near 0.97; where every query is
   perfect it is the mean. It covers sampling error only, not the
   difference between perturbed stored vectors and real questions.
4. **Latency** (single query, ANN search + exact rerank from ``vectors.f16``)
   of the cheapest pool meeting the target at each nprobe frontier point:
   ``LATENCY_QUERIES`` queries × ``LATENCY_ROUNDS`` rounds after an untimed
   warm-up round, the configurations interleaved query by query (so load
   from other processes hits all of them alike), compared by median. The
   fastest wins; medians within ``LATENCY_TIE`` of it are ties, won by the
   higher recall. At 1M (~1 ms per query) this costs ~2 s of build time.

If no configuration of the grid meets the target, the best one found is kept
with ``met=False``; if it takes more than ``EXPENSIVE_SHARE`` of the cells,
it is met but flagged. Both log a warning that suggests exact search (``--ann
flat``) or a larger ``--nlist``; ``mitsuke info`` shows the same note.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from mitsuke.indexer.ann_record import AnnTuning

if TYPE_CHECKING:
    from mitsuke.indexer.ann import AnnIndex
    from mitsuke.indexer.vectors import VectorStore

__all__ = ["AnnTuning", "tune_ann", "sample_queries", "exact_neighbours", "needs_tuning", "DEFAULT_RECALL_TARGET",
           "TUNE_QUERIES", "POOL_FACTORS", "PERTURB", "RETUNE_GROWTH", "EXPENSIVE_SHARE", "CONFIDENCE_Z",
           "LATENCY_QUERIES", "LATENCY_ROUNDS", "LATENCY_TIE"]

log = logging.getLogger("mitsuke")

DEFAULT_RECALL_TARGET = 0.97
# 200 queries: the mean recall@10 of 2,000 neighbour slots, standard error ~0.004 at 0.97.
TUNE_QUERIES = 200
# Rerank pools tried, as multiples of k (pool = k × factor).
POOL_FACTORS = (3, 5, 7, 10, 15, 20, 30, 50)
# Relative norm of the noise added to a sampled stored vector (see module docstring).
PERTURB = 0.3
# Re-measure when the index holds this many times the vectors it was measured at.
RETUNE_GROWTH = 2.0
# A target met only by visiting more than this share of the IVF cells is not met cheaply.
EXPENSIVE_SHARE = 0.25
# Queries timed per frontier configuration (the recall grid uses all of them), and timed rounds over them.
LATENCY_QUERIES = 100
LATENCY_ROUNDS = 3
# Medians within this share of the fastest one are ties (the higher recall wins).
LATENCY_TIE = 0.05
# One-sided 95% normal quantile: the lower confidence bound of a mean recall must meet the target.
CONFIDENCE_Z = 1.645
SEED = 4321


def needs_tuning(tuning: AnnTuning | None, ann: AnnIndex | None, target: float) -> bool:
    """Whether ``ann`` should be (re)measured: IVF-PQ never measured, re-sized, grown 2×, or a new target."""
    if ann is None or ann.params.kind != "ivfpq" or ann.ntotal == 0:
        return False
    if tuning is None:
        return True
    return (tuning.nlist != ann.params.nlist or abs(tuning.target - target) > 1e-9
            or ann.ntotal >= RETUNE_GROWTH * max(tuning.vectors, 1)
            or ann.ntotal * RETUNE_GROWTH <= tuning.vectors)


def sample_queries(vectors: VectorStore, ids: np.ndarray, rows: np.ndarray, n: int, perturb: float = PERTURB,
                   seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(query vectors, the chunk id each was drawn from): stored vectors of random chunks, perturbed."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(ids), size=min(n, len(ids)), replace=False))
    x = vectors.read(rows[pick])
    if perturb > 0:
        noise = rng.standard_normal(x.shape, dtype=np.float32)
        noise *= (perturb / np.linalg.norm(noise, axis=1, keepdims=True))
        x = x + noise * np.linalg.norm(x, axis=1, keepdims=True)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(x, dtype=np.float32), ids[pick]


def exact_neighbours(vectors: VectorStore, ids: np.ndarray, rows: np.ndarray, queries: np.ndarray, k: int,
                     exclude: np.ndarray | None = None, block: int = 65536) -> np.ndarray:
    """Exact top-``k`` chunk ids per query over the stored (float16) vectors; ``exclude[i]`` is left out."""
    nq = len(queries)
    best_s = np.full((nq, 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((nq, 0), dtype=np.int64)
    order = np.argsort(rows, kind="stable")  # read the file forwards
    ids, rows = ids[order], rows[order]
    for start in range(0, len(rows), block):
        part_ids = ids[start:start + block]
        s = queries @ vectors.read(rows[start:start + block]).T
        if exclude is not None:
            s[part_ids[None, :] == exclude[:, None]] = -np.inf
        s_all = np.concatenate([best_s, s], axis=1)
        i_all = np.concatenate([best_i, np.broadcast_to(part_ids, s.shape)], axis=1)
        if s_all.shape[1] > k:
            top = np.argpartition(-s_all, k - 1, axis=1)[:, :k]
            s_all, i_all = np.take_along_axis(s_all, top, 1), np.take_along_axis(i_all, top, 1)
        best_s, best_i = s_all, i_all
    o = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_i, o, 1)


def _probe_grid(nlist: int) -> list[int]:
    grid, p = [], 1
    while p < nlist:
        grid.append(p)
        p *= 2
    return grid + [nlist]


def mean_and_bound(per_query: np.ndarray, z: float = CONFIDENCE_Z) -> tuple[float, float]:
    """(mean, its lower confidence bound: mean − z × standard error) of per-query recalls."""
    n = len(per_query)
    mean = float(np.mean(per_query)) if n else 0.0
    se = float(np.std(per_query, ddof=1)) / np.sqrt(n) if n > 1 else 0.0
    return mean, mean - z * se


def frontier_of(grid: list[dict[str, float]], factors: tuple[int, ...], target: float
                ) -> tuple[list[dict[str, float]], bool]:
    """(configurations to time, whether the target was met).

    Met: per pool factor, the smallest nprobe whose recall bound (``low``) meets
    the target. Not met: the cheapest configuration of the best mean recall.
    """
    frontier = []
    for f in factors:
        ok = [g for g in grid if g["factor"] == f and g["low"] >= target]
        if ok:
            frontier.append(min(ok, key=lambda g: g["nprobe"]))
    if frontier:
        return frontier, True
    best = max(g["recall"] for g in grid)
    return [min((g for g in grid if g["recall"] >= best - 1e-12), key=lambda g: (g["nprobe"], g["factor"]))], False


def pick_fastest(timed: list[dict[str, float]], tie: float = LATENCY_TIE) -> dict[str, float]:
    """The fastest timed configuration by median; medians within ``tie`` of it are won by the higher recall."""
    fastest = min(g["p50_ms"] for g in timed)
    close = [g for g in timed if g["p50_ms"] <= fastest * (1 + tie)]
    return max(close, key=lambda g: (g["recall"], -g["p50_ms"], -g["factor"]))


def _recall_grid(ann: AnnIndex, queries: np.ndarray, exclude: np.ndarray, truth: np.ndarray, k: int,
                 factors: tuple[int, ...], target: float, deadline: float) -> list[dict[str, float]]:
    """Recall@k of every (nprobe, factor) tried; stops once every factor has met the target."""
    fmax = max(factors)
    fetch = k * fmax + 1  # +1: the query's own chunk may come back and is dropped
    met: set[int] = set()
    out: list[dict[str, float]] = []
    truth_sets = [set(t.tolist()) for t in truth]
    for nprobe in _probe_grid(ann.params.nlist):
        _, found = ann.search(queries, fetch, nprobe)
        for f in factors:
            if f in met:
                continue
            pool = k * f
            per_query = np.empty(len(queries))
            for qi in range(len(queries)):
                cand = found[qi]
                cand = cand[(cand >= 0) & (cand != exclude[qi])][:pool]
                per_query[qi] = len(truth_sets[qi].intersection(cand.tolist())) / k
            recall, low = mean_and_bound(per_query)
            out.append({"nprobe": nprobe, "factor": f, "recall": recall, "low": low})
            if low >= target:
                met.add(f)
        if len(met) == len(factors):
            break
        if time.monotonic() > deadline:
            out.append({"nprobe": nprobe, "factor": 0, "recall": -1.0})  # marks a grid cut short
            break
    return out


def _latencies(ann: AnnIndex, vectors: VectorStore, id_to_row: tuple[np.ndarray, np.ndarray], queries: np.ndarray,
               k: int, configs: list[tuple[int, int]], rounds: int = LATENCY_ROUNDS) -> list[list[float]]:
    """ms per query of each (nprobe, pool): ANN search for the pool + exact rerank, one query at a time.

    One untimed warm-up round, then ``rounds`` timed ones; within a round each
    query runs every configuration back to back, in an order that alternates.
    """
    sorted_ids, sorted_rows = id_to_row
    lat: list[list[float]] = [[] for _ in configs]
    for r in range(rounds + 1):
        for qi, q in enumerate(queries):
            order = list(range(len(configs)))
            if (qi + r) % 2:
                order.reverse()
            for ci in order:
                nprobe, pool = configs[ci]
                t = time.perf_counter()
                _, cand = ann.search(q[None, :], pool, nprobe)
                cand = cand[0][cand[0] >= 0]
                rows = sorted_rows[np.searchsorted(sorted_ids, cand)]
                o = np.argsort(rows)
                exact = vectors.read(rows[o]) @ q
                _ = cand[o][np.argsort(-exact, kind="stable")[:k]]
                if r:
                    lat[ci].append((time.perf_counter() - t) * 1000)
    return lat


def tune_ann(ann: AnnIndex, vectors: VectorStore, ids: np.ndarray, rows: np.ndarray, *,
             target: float = DEFAULT_RECALL_TARGET, k: int = 10, queries: int = TUNE_QUERIES,
             factors: tuple[int, ...] = POOL_FACTORS, perturb: float = PERTURB,
             time_budget_s: float = 120.0) -> AnnTuning | None:
    """Measure ``ann`` (IVF-PQ over the chunks ``ids`` whose vectors are ``rows``) and choose nprobe / pool.

    Returns None for a flat index (exact already) or fewer than ``k + 2`` vectors.
    """
    if ann.params.kind != "ivfpq" or len(ids) < k + 2:
        return None
    if not 0 < target <= 1:
        raise ValueError(f"recall target must be in (0, 1], got {target}")
    started = time.monotonic()
    ids = np.asarray(ids, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    qv, qid = sample_queries(vectors, ids, rows, queries, perturb)
    truth = exact_neighbours(vectors, ids, rows, qv, k, exclude=qid)
    # The budget bounds the grid; exact truth is a fixed cost (n × queries × dim).
    grid = _recall_grid(ann, qv, qid, truth, k, factors, target, time.monotonic() + time_budget_s)
    cut = grid[-1]["nprobe"] if grid and grid[-1]["factor"] == 0 else None
    grid = [g for g in grid if g["factor"]]
    frontier, met = frontier_of(grid, factors, target)
    o = np.argsort(ids)
    lat = _latencies(ann, vectors, (ids[o], rows[o]), qv[:LATENCY_QUERIES], k,
                     [(int(g["nprobe"]), k * int(g["factor"])) for g in frontier])
    timed = [dict(g, p50_ms=float(np.median(t)), p95_ms=float(np.percentile(t, 95)), timed=len(t))
             for g, t in zip(frontier, lat)]
    best = pick_fastest(timed)
    nlist = ann.params.nlist
    note = ""
    if not met:
        note = (f"recall target {target} not met: best mean recall@{k} {best['recall']:.3f} (95% lower bound "
                f"{best['low']:.3f}) at nprobe {best['nprobe']} of {nlist}, pool {k * best['factor']}; use exact "
                f"search (--ann flat) or a larger --nlist")
        if cut is not None:
            note += f" (measurement stopped by its {time_budget_s:.0f} s budget after nprobe {cut})"
    elif best["nprobe"] > EXPENSIVE_SHARE * nlist:
        note = (f"recall target {target} met only by visiting {best['nprobe']} of {nlist} IVF cells; "
                f"exact search (--ann flat) or a larger --nlist may be cheaper")
    if note:
        log.warning("%s", note)
    tuning = AnnTuning(
        nprobe=int(best["nprobe"]), candidate_factor=int(best["factor"]), k=k, recall=round(best["recall"], 4),
        recall_low=round(best["low"], 4),
        p50_ms=round(best["p50_ms"], 3), p95_ms=round(best["p95_ms"], 3), target=target, met=met,
        queries=len(qv), vectors=int(ann.ntotal), nlist=nlist, perturb=perturb,
        seconds=round(time.monotonic() - started, 2), note=note,
        frontier=[{key: (round(v, 4) if isinstance(v, float) else v) for key, v in g.items()} for g in timed])
    log.info("ANN recall measured on %d queries in %.1f s: nprobe %d, pool %d -> recall@%d %.3f (95%% lower bound "
             "%.3f), p50 %.2f ms", tuning.queries, tuning.seconds, tuning.nprobe, tuning.candidates, k, tuning.recall,
             tuning.recall_low, tuning.p50_ms)
    return tuning
