"""Exact cosine over stored vectors: float32 queries against float16 rows read from the memmap.

Vectors are L2-normalised at index time, so the inner product is the cosine.
Only the rows asked for are read (``VectorStore.read`` indexes the memmap),
in row order so the reads walk the file forwards.
"""
from __future__ import annotations

import numpy as np

from mitsuke.indexer.vectors import VectorStore

__all__ = ["exact_scores", "exact_top_k", "SCAN_BLOCK_ROWS"]

# Rows scored per block in an exact scan: 16k rows of 1792-d float16 are
# 57 MB as float32 — big enough for BLAS, small enough for the memory budget.
SCAN_BLOCK_ROWS = 16384
# Queries scored together in a scan (a batch of thousands would need GBs of scores).
SCAN_QUERY_GROUP = 64


def exact_scores(query: np.ndarray, vectors: VectorStore, rows: list[int] | np.ndarray) -> np.ndarray:
    """Inner products of one (normalised) float32 query with the given rows, in the order given."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return np.zeros(0, dtype=np.float32)
    order = np.argsort(rows, kind="stable")
    mat = vectors.read(rows[order])
    out = np.empty(rows.size, dtype=np.float32)
    out[order] = mat @ np.asarray(query, dtype=np.float32)
    return out


def exact_top_k(queries: np.ndarray, vectors: VectorStore, ids: np.ndarray, rows: np.ndarray, k: int
                ) -> list[list[tuple[int, float]]]:
    """Best ``k`` of the given (chunk id, vector row) pairs for each query, by exact cosine.

    Ties break by chunk id, as brute force with a stable sort would.
    """
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    ids = np.asarray(ids, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    nq = len(queries)
    if ids.size == 0 or k <= 0:
        return [[] for _ in range(nq)]
    if nq > SCAN_QUERY_GROUP:
        # Bounded score matrices: SCAN_QUERY_GROUP × SCAN_BLOCK_ROWS floats at a time.
        out: list[list[tuple[int, float]]] = []
        for start in range(0, nq, SCAN_QUERY_GROUP):
            out += exact_top_k(queries[start:start + SCAN_QUERY_GROUP], vectors, ids, rows, k)
        return out
    best_s = np.full((nq, 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((nq, 0), dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    ids, rows = ids[order], rows[order]
    for start in range(0, len(rows), SCAN_BLOCK_ROWS):
        block = vectors.read(rows[start:start + SCAN_BLOCK_ROWS])
        s = queries @ block.T
        cand_s = np.concatenate([best_s, s], axis=1)
        cand_i = np.concatenate([best_i, np.broadcast_to(ids[start:start + SCAN_BLOCK_ROWS], s.shape)], axis=1)
        if cand_s.shape[1] > k:
            # Keep a margin past k so ties at the cut are resolved by id below, not by partition order.
            part = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
            kth = np.take_along_axis(cand_s, part, axis=1).min(axis=1, keepdims=True)
            keep = cand_s >= kth
            # Rows may keep more than k on ties; pad to a rectangle with -inf.
            width = int(keep.sum(axis=1).max())
            new_s = np.full((nq, width), -np.inf, dtype=np.float32)
            new_i = np.full((nq, width), np.iinfo(np.int64).max, dtype=np.int64)
            for q in range(nq):
                sel = np.flatnonzero(keep[q])
                new_s[q, :sel.size] = cand_s[q, sel]
                new_i[q, :sel.size] = cand_i[q, sel]
            cand_s, cand_i = new_s, new_i
        best_s, best_i = cand_s, cand_i
    out = []
    for q in range(nq):
        o = np.lexsort((best_i[q], -best_s[q]))
        out.append([(int(best_i[q, j]), float(best_s[q, j])) for j in o[:k] if np.isfinite(best_s[q, j])])
    return out
