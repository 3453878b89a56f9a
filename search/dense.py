"""The dense leg: ANN candidates (or an exact scan of a filter's rows), reranked by exact cosine.

- No filter: the ANN index gives ``pool`` candidates per query, rescored by
  exact cosine over their stored float16 vectors (``rerank``); a flat index
  is exact already.
- A filter: the matching (chunk id, vector row) pairs come from the store. A
  narrow filter is answered by an exact scan of its rows; a broad one by the
  ANN index restricted to the matching ids (an IDSelector), then the rerank,
  falling back to the exact scan when the ANN comes back short.

Everything reads one store snapshot, so ids and vector rows agree.
"""
from __future__ import annotations

import logging

import numpy as np

from mitsuke.indexer.ann import AnnIndex
from mitsuke.indexer.ann_delta import AnnView
from mitsuke.indexer.store import Filter, Snapshot
from mitsuke.indexer.vectors import VectorStore
from mitsuke.search.rerank import exact_scores, exact_top_k

__all__ = ["dense_leg", "ann_candidates", "cosines", "CANDIDATE_FACTOR", "EXACT_SCAN_ELEMENTS"]

log = logging.getLogger("mitsuke")

# ANN candidates per requested result, rescored exactly; PQ codes misorder
# near neighbours, the exact rerank puts them back.
CANDIDATE_FACTOR = 10
# A filter whose matching vectors hold at most this many numbers (rows × dim) is
# answered by an exact scan of them: 4M float16 numbers (2,340 rows of 1792-d,
# 10,900 of 384-d) convert and score in ~21 ms (bench/filter_scan.py, BENCHMARKS.md "Query engine").
# Broader filters go through the ANN index restricted to the matching ids (a
# FAISS IDSelector), then the exact rerank.
EXACT_SCAN_ELEMENTS = 1 << 22

Hits = list[tuple[int, float]]


def dense_leg(snap: Snapshot, ann: AnnIndex | AnnView, vectors: VectorStore, qvecs: np.ndarray, n_out: int,
              pool: int, rerank: bool, nprobe: int | None, flt: Filter | None) -> list[Hits]:
    """Best ``n_out`` (chunk id, cosine) per query vector, best first."""
    flat = ann.params.kind == "flat"
    if flt is None:
        return ann_candidates(snap, ann, vectors, qvecs, n_out, pool, rerank and not flat, nprobe, None)
    allowed = [(c, r) for c, r in snap.filtered_vectors(flt) if r is not None]
    if not allowed:
        return [[] for _ in qvecs]
    ids = np.fromiter((c for c, _ in allowed), dtype=np.int64, count=len(allowed))
    rows = np.fromiter((r for _, r in allowed), dtype=np.int64, count=len(allowed))
    if flat:
        # The flat index holds float32 copies of the same rows in memory: with an
        # IDSelector it scores only the matching ones, exactly, faster than the memmap.
        return ann_candidates(snap, ann, vectors, qvecs, n_out, pool, False, nprobe, ids)
    use_nprobe = nprobe or ann.params.nprobe
    # Allowed vectors an IVF search would visit: too few for a full pool means the
    # ANN would come back short, and an exact scan of them is cheap anyway.
    visited = len(allowed) * min(1.0, use_nprobe / max(ann.params.nlist, 1))
    if len(allowed) * vectors.dim <= EXACT_SCAN_ELEMENTS or visited < 2 * pool:
        return exact_top_k(qvecs, vectors, ids, rows, n_out)
    out = ann_candidates(snap, ann, vectors, qvecs, n_out, pool, rerank, nprobe, ids)
    for qi, cand in enumerate(out):
        if len(cand) < min(n_out, len(allowed)):
            log.debug("filtered ANN search came back short (%d < %d): exact scan", len(cand), n_out)
            out[qi] = exact_top_k(qvecs[qi], vectors, ids, rows, n_out)[0]
    return out


def ann_candidates(snap: Snapshot, ann: AnnIndex | AnnView, vectors: VectorStore, qvecs: np.ndarray, n_out: int,
                   pool: int, rerank: bool, nprobe: int | None, allowed_ids: np.ndarray | None) -> list[Hits]:
    """ANN search (restricted to ``allowed_ids`` when given), then exact rerank of the candidates."""
    fetch = max(pool, n_out) if rerank else n_out
    scores, ids = ann.search(qvecs, fetch, nprobe, allowed_ids)
    out: list[Hits] = []
    rows = snap.chunk_vector_rows({int(i) for i in ids.ravel() if i >= 0}) if rerank else {}
    for qi in range(len(qvecs)):
        cand = [(int(i), float(s)) for i, s in zip(ids[qi], scores[qi]) if i >= 0]
        if rerank and cand:
            # Ids deleted since the ANN snapshot have no row any more: they drop out here.
            cand = [(i, s) for i, s in cand if rows.get(i) is not None]
            exact = exact_scores(qvecs[qi], vectors, [rows[i] for i, _ in cand])
            cand = sorted(((i, float(s)) for (i, _), s in zip(cand, exact)), key=lambda x: (-x[1], x[0]))
        out.append(cand[:n_out])
    return out


def cosines(snap: Snapshot, vectors: VectorStore, qvec: np.ndarray, ids: list[int]) -> dict[int, float]:
    """Exact cosine of ``qvec`` with the given chunks (those that have a vector)."""
    if not ids:
        return {}
    rows = snap.chunk_vector_rows(ids)
    have = [i for i in ids if rows.get(i) is not None]
    scores = exact_scores(qvec, vectors, [rows[i] for i in have])
    return {i: float(s) for i, s in zip(have, scores)}
