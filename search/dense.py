"""The dense leg: ANN candidates (or an exact scan of a filter's rows), reranked by exact cosine.

- No filter: the ANN index gives ``pool`` candidates per query, rescored by
  exact cosine over their stored float16 vectors (``rerank``); a flat index
  is exact already.
- A filter: the matching (chunk id, vector row) pairs come from the store. A
  narrow filter is answered by an exact scan of its rows; a broad one by the
  ANN index restricted to the matching ids (an IDSelector), then the rerank,
  falling back to the exact scan when the ANN comes back short.

Everything reads one store snapshot, so ids and vector rows agree. The
chunk id -> vector row lookups of the rerank come from an in-memory
``search.rowmap.RowMap`` of that snapshot's generation when the caller has
one (no SQL per search), else from the snapshot itself.
"""
from __future__ import annotations

import logging

import numpy as np

from mitsuke.indexer.ann import AnnIndex
from mitsuke.indexer.ann_delta import AnnView
from mitsuke.indexer.store import Filter, Snapshot
from mitsuke.indexer.vectors import VectorStore
from mitsuke.search.rerank import exact_scores, exact_top_k
from mitsuke.search.rowmap import RowMap

__all__ = ["dense_leg", "ann_candidates", "cosines", "vector_rows", "CANDIDATE_FACTOR", "EXACT_SCAN_ELEMENTS"]

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
              pool: int, rerank: bool, nprobe: int | None, flt: Filter | None, rowmap: RowMap | None = None
              ) -> list[Hits]:
    """Best ``n_out`` (chunk id, cosine) per query vector, best first.

    ``rowmap``: the snapshot's id -> vector row map (``RowMaps.for_snapshot``); None asks SQL.
    """
    flat = ann.params.kind == "flat"
    if flt is None:
        return ann_candidates(snap, ann, vectors, qvecs, n_out, pool, rerank and not flat, nprobe, None, rowmap)
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
    out = ann_candidates(snap, ann, vectors, qvecs, n_out, pool, rerank, nprobe, ids, rowmap)
    for qi, cand in enumerate(out):
        if len(cand) < min(n_out, len(allowed)):
            log.debug("filtered ANN search came back short (%d < %d): exact scan", len(cand), n_out)
            out[qi] = exact_top_k(qvecs[qi], vectors, ids, rows, n_out)[0]
    return out


def ann_candidates(snap: Snapshot, ann: AnnIndex | AnnView, vectors: VectorStore, qvecs: np.ndarray, n_out: int,
                   pool: int, rerank: bool, nprobe: int | None, allowed_ids: np.ndarray | None,
                   rowmap: RowMap | None = None) -> list[Hits]:
    """ANN search (restricted to ``allowed_ids`` when given), then exact rerank of the candidates."""
    fetch = max(pool, n_out) if rerank else n_out
    scores, ids = ann.search(qvecs, fetch, nprobe, allowed_ids)
    if not rerank:
        return [[(int(i), float(s)) for i, s in zip(ids[qi], scores[qi]) if i >= 0][:n_out]
                for qi in range(len(qvecs))]
    rows = vector_rows(snap, ids, rowmap)
    out: list[Hits] = []
    for qi in range(len(qvecs)):
        # Ids deleted since the ANN snapshot (or padding, -1) have no row: they drop out here.
        ok = rows[qi] >= 0
        cid, r = ids[qi][ok], rows[qi][ok]
        if cid.size == 0:
            out.append([])
            continue
        exact = exact_scores(qvecs[qi], vectors, r)
        best = np.lexsort((cid, -exact))[:n_out]  # cosine descending, ties by chunk id
        out.append(list(zip(cid[best].tolist(), exact[best].astype(np.float64).tolist())))
    return out


def vector_rows(snap: Snapshot, ids: np.ndarray, rowmap: RowMap | None) -> np.ndarray:
    """Vector rows of chunk ``ids`` (an array of any shape), -1 where a chunk has none or is gone."""
    ids = np.asarray(ids, dtype=np.int64)
    if rowmap is not None:
        return rowmap.lookup(ids)
    found = snap.chunk_vector_rows({int(i) for i in ids.ravel() if i >= 0})
    return np.array([-1 if i < 0 or found.get(int(i)) is None else found[int(i)] for i in ids.ravel()],
                    dtype=np.int64).reshape(ids.shape)


def cosines(snap: Snapshot, vectors: VectorStore, qvec: np.ndarray, ids: list[int],
            rowmap: RowMap | None = None) -> dict[int, float]:
    """Exact cosine of ``qvec`` with the given chunks (those that have a vector)."""
    if not ids:
        return {}
    cid = np.asarray(ids, dtype=np.int64)
    rows = vector_rows(snap, cid, rowmap)
    ok = rows >= 0
    scores = exact_scores(qvec, vectors, rows[ok])
    return dict(zip(cid[ok].tolist(), scores.astype(np.float64).tolist()))
