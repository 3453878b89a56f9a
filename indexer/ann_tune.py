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
4. **Latency** (single query, ANN search + exact rerank from ``vectors.f16``)
   of the cheapest pool meeting the target at each nprobe frontier point;
   the fastest measured one wins.

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
           "TUNE_QUERIES", "POOL_FACTORS", "PERTURB", "RETUNE_GROWTH", "EXPENSIVE_SHARE"]

log = logging.getLogger("mitsuke")

DEFAULT_RECALL_TARGET = 0.97
# 200 queries: the mean recall@10 of 2,000 neighbour slots, standard error ~0.004 at 0.97.
TUNE_QUERIES = 200
# Rerank pools tried, as multiples of k (pool = k × factor).
POOL_FACTORS = (3, 5, 10, 20, 30, 50)
# Relative norm of the noise added to a sampled stored vector (see module docstring).
PERTURB = 0.3
# Re-measure when the index holds this many times the vectors it was measured at.
RETUNE_GROWTH = 2.0
# A target met only by visiting more than this share of the IVF cells is not met cheaply.
EXPENSIVE_SHARE = 0.25
# Queries timed per frontier configuration (the recall grid uses all of them).
LATENCY_QUERIES = 50
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
            hits = 0
            for qi in range(len(queries)):
                cand = found[qi]
                cand = cand[(cand >= 0) & (cand != exclude[qi])][:pool]
                hits += len(truth_sets[qi].intersection(cand.tolist()))
            recall = hits / (k * len(queries))
            out.append({"nprobe": nprobe, "factor": f, "recall": recall})
            if recall >= target:
                met.add(f)
        if len(met) == len(factors):
            break
        if time.monotonic() > deadline:
            out.append({"nprobe": nprobe, "factor": 0, "recall": -1.0})  # marks a grid cut short
            break
    return out


def _latency(ann: AnnIndex, vectors: VectorStore, id_to_row: tuple[np.ndarray, np.ndarray], queries: np.ndarray,
             k: int, nprobe: int, pool: int) -> tuple[float, float]:
    """p50 / p95 ms of one query at a time: ANN search for ``pool`` candidates + exact rerank."""
    sorted_ids, sorted_rows = id_to_row
    lat = []
    for q in queries:
        t = time.perf_counter()
        _, cand = ann.search(q[None, :], pool, nprobe)
        cand = cand[0][cand[0] >= 0]
        rows = sorted_rows[np.searchsorted(sorted_ids, cand)]
        order = np.argsort(rows)
        exact = vectors.read(rows[order]) @ q
        _ = cand[order][np.argsort(-exact, kind="stable")[:k]]
        lat.append((time.perf_counter() - t) * 1000)
    return float(np.median(lat)), float(np.percentile(lat, 95))


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
    # Frontier: per factor, the smallest nprobe meeting the target; if none does, the best recall seen.
    frontier = []
    for f in factors:
        ok = [g for g in grid if g["factor"] == f and g["recall"] >= target]
        if ok:
            frontier.append(min(ok, key=lambda g: g["nprobe"]))
    met = bool(frontier)
    if not met:
        best = max(g["recall"] for g in grid)
        frontier = [min((g for g in grid if g["recall"] >= best - 1e-12), key=lambda g: (g["nprobe"], g["factor"]))]
    o = np.argsort(ids)
    id_to_row = (ids[o], rows[o])
    lq = qv[:LATENCY_QUERIES]
    timed = []
    for g in frontier:
        p50, p95 = _latency(ann, vectors, id_to_row, lq, k, int(g["nprobe"]), k * int(g["factor"]))
        timed.append(dict(g, p50_ms=p50, p95_ms=p95))
    best = min(timed, key=lambda g: (g["p50_ms"], g["factor"]))
    nlist = ann.params.nlist
    note = ""
    if not met:
        note = (f"recall target {target} not met: best mean recall@{k} {best['recall']:.3f} at nprobe "
                f"{best['nprobe']} of {nlist}, pool {k * best['factor']}; use exact search (--ann flat) "
                f"or a larger --nlist")
        if cut is not None:
            note += f" (measurement stopped by its {time_budget_s:.0f} s budget after nprobe {cut})"
    elif best["nprobe"] > EXPENSIVE_SHARE * nlist:
        note = (f"recall target {target} met only by visiting {best['nprobe']} of {nlist} IVF cells; "
                f"exact search (--ann flat) or a larger --nlist may be cheaper")
    if note:
        log.warning("%s", note)
    tuning = AnnTuning(
        nprobe=int(best["nprobe"]), candidate_factor=int(best["factor"]), k=k, recall=round(best["recall"], 4),
        p50_ms=round(best["p50_ms"], 3), p95_ms=round(best["p95_ms"], 3), target=target, met=met,
        queries=len(qv), vectors=int(ann.ntotal), nlist=nlist, perturb=perturb,
        seconds=round(time.monotonic() - started, 2), note=note,
        frontier=[{key: (round(v, 4) if isinstance(v, float) else v) for key, v in g.items()} for g in timed])
    log.info("ANN recall measured on %d queries in %.1f s: nprobe %d, pool %d -> recall@%d %.3f, p50 %.2f ms",
             tuning.queries, tuning.seconds, tuning.nprobe, tuning.candidates, k, tuning.recall, tuning.p50_ms)
    return tuning
