"""A reader's ANN view that catches up new commits in proportion to the change (issue 15).

Readers used to clone the whole FAISS index for every commit they observed
(a 1M IVF-PQ clone is ~80 MB copied and re-allocated). An :class:`AnnView`
is immutable and made of

- ``base``: an :class:`AnnIndex` that is never modified once a view holds it
  (threads may be searching it; FAISS allows concurrent searches, not a
  search during add/remove);
- ``segments``: the vectors added since the base's generation, one small
  segment per catch-up, scored exactly (a matrix product over float32 copies
  of the stored float16 vectors: what a flat index or the exact rerank gives);
- ``hidden``: chunk ids the base must not return (deleted, or re-added and
  therefore answered by a segment), filtered out by a FAISS IDSelector.

:meth:`AnnView.advance` returns a new view that shares the base and the old
segments' vectors: the cost is reading the changed chunks' vectors plus
O(delta) bookkeeping on ids (no vector is copied). When the delta outgrows
``MERGE_SHARE`` of the base (or ``MAX_SEGMENTS`` segments), the next advance
merges everything into a fresh copy of the base, once: amortised over the
commits that filled the delta, the copy costs ~1/MERGE_SHARE × the change.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from mitsuke.indexer.ann import AnnIndex, AnnParams, _as_stored
from mitsuke.indexer.store import SqlStore
from mitsuke.indexer.vectors import VectorStore

__all__ = ["AnnView", "Segment", "MERGE_SHARE", "MERGE_MIN", "MERGE_BYTES", "MAX_SEGMENTS"]

log = logging.getLogger("mitsuke")

# Merge the delta into a fresh base once it holds this share of the base's vectors ...
MERGE_SHARE = 0.05
# ... but never below this many rows (exact scoring of 4k × 1792 floats is ~1 ms per query) ...
MERGE_MIN = 4096
# ... or once its float32 vectors take this much memory (9,362 vectors of 1792-d; a 1M IVF-PQ base is ~80 MB).
MERGE_BYTES = 64 << 20
# Segments scored separately before they are concatenated into one.
MAX_SEGMENTS = 16


@dataclass(frozen=True)
class Segment:
    """Vectors added by one catch-up, in a FAISS flat index filled once and then only searched.

    ``alive`` (bool per row) is cleared by a later deletion or re-add, as a new
    array, never in place. Scores come from the same FAISS inner-product code
    as a flat base index, so a flat view scores exactly as a fresh open does.
    """

    ids: np.ndarray
    index: Any  # faiss.IndexIDMap2(IndexFlatIP)
    alive: np.ndarray

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray) -> "Segment":
        import faiss

        index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
        index.add_with_ids(_as_stored(vectors), np.ascontiguousarray(ids, dtype=np.int64))
        return cls(np.asarray(ids, dtype=np.int64), index, np.ones(len(ids), bool))

    @property
    def live(self) -> int:
        return int(self.alive.sum())

    @property
    def vectors(self) -> np.ndarray:
        """The float32 vectors (a read-only view of the flat index's storage)."""
        import faiss

        flat = faiss.downcast_index(self.index.index)
        n, d = flat.ntotal, flat.d
        return faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d)  # type: ignore[attr-defined]  # SWIG

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        if allowed is None and self.alive.all():
            return self.index.search(q, min(k, len(self.ids)))
        keep = self.alive if allowed is None else self.alive & np.isin(self.ids, allowed)
        if not keep.any():
            return _empty(len(q))
        sel = faiss.IDSelectorBatch(np.ascontiguousarray(self.ids[keep]))
        params = faiss.SearchParameters(sel=sel)  # type: ignore[call-arg]  # SWIG keyword constructor
        out = self.index.search(q, min(k, int(keep.sum())), params=params)
        del sel
        return out


def _empty(shape1: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((shape1, 0), np.float32), np.zeros((shape1, 0), np.int64)


class AnnView:
    """The ANN index of one generation as a reader searches it: immutable base + exact delta - hidden ids."""

    def __init__(self, base: AnnIndex, segments: tuple[Segment, ...] = (), hidden: np.ndarray | None = None,
                 base_ids: np.ndarray | None = None) -> None:
        self.base = base
        self.segments = segments
        # Sorted ids the base holds (read once per base, shared by the views on it).
        self.base_ids = _ids_of(base) if base_ids is None else base_ids
        self.hidden = np.zeros(0, np.int64) if hidden is None else hidden  # sorted, unique, all in base_ids
        self.delta_rows = sum(s.live for s in segments)

    # ------------------------------------------------------------------ what dense search reads
    @property
    def params(self) -> AnnParams:
        return self.base.params

    @property
    def ntotal(self) -> int:
        return self.base.ntotal - len(self.hidden) + self.delta_rows

    @property
    def index(self):
        """The base's FAISS index (for code that needs the raw index; it does not see the delta)."""
        return self.base.index

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None,
               allowed_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the ``k`` best vectors per query, as ``AnnIndex.search`` gives them."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if k <= 0:
            return _empty(len(q))
        allowed = None if allowed_ids is None else np.unique(np.asarray(allowed_ids, dtype=np.int64))
        bs, bi = self._search_base(q, k, nprobe, allowed)
        if not self.delta_rows:
            return bs, bi
        parts_s, parts_i = [bs], [bi]
        for seg in self.segments:
            ss, si = seg.search(q, k, allowed)
            parts_s.append(ss)
            parts_i.append(si)
        s_all = np.concatenate(parts_s, axis=1)
        i_all = np.concatenate(parts_i, axis=1)
        s_all = np.where(i_all >= 0, s_all, -np.inf)
        order = _order(s_all, i_all, k)
        out_s = np.take_along_axis(s_all, order, 1)
        out_i = np.take_along_axis(i_all, order, 1)
        out_i[~np.isfinite(out_s)] = -1
        return out_s.astype(np.float32), out_i

    def _search_base(self, q: np.ndarray, k: int, nprobe: int | None, allowed: np.ndarray | None
                     ) -> tuple[np.ndarray, np.ndarray]:
        if self.base.ntotal == 0:
            return _empty(len(q))
        if allowed is not None:
            if len(self.hidden):
                allowed = np.setdiff1d(allowed, self.hidden, assume_unique=True)
            if allowed.size == 0:
                return _empty(len(q))
            return _selected_search(self.base, q, k, nprobe, allowed, exclude=False)
        if len(self.hidden) == 0:
            return self.base.search(q, k, nprobe)
        return _selected_search(self.base, q, k, nprobe, self.hidden, exclude=True)

    # ------------------------------------------------------------------ catching up
    def advance(self, deleted: np.ndarray, added_ids: np.ndarray, added_vectors: np.ndarray) -> "AnnView":
        """The view after a commit that deleted ``deleted`` and (re-)added ``added_ids``; self is unchanged."""
        deleted = np.asarray(deleted, dtype=np.int64)
        added_ids = np.asarray(added_ids, dtype=np.int64)
        changed = np.unique(np.concatenate([deleted, added_ids]))
        if changed.size == 0:
            return self
        segments = []
        for seg in self.segments:
            gone = np.isin(seg.ids, changed)
            segments.append(Segment(seg.ids, seg.index, seg.alive & ~gone) if gone.any() else seg)
        if added_ids.size:
            segments.append(Segment.build(added_ids, added_vectors))
        segments = [s for s in segments if s.live]
        if len(segments) > MAX_SEGMENTS:
            segments = [_concat(segments)]
        in_base = changed[_contains(self.base_ids, changed)]
        view = AnnView(self.base, tuple(segments), np.union1d(self.hidden, in_base), self.base_ids)
        if (view.delta_rows * self.params.dim * 4 > MERGE_BYTES
                or view.delta_rows + len(view.hidden) > max(MERGE_MIN, MERGE_SHARE * self.base.ntotal)):
            return view.merged()
        return view

    def merged(self) -> "AnnView":
        """A view whose fresh base holds everything (one copy of the base; the old base is left alone)."""
        base = self.base.copy()
        base.remove(self.hidden)
        live = [s for s in self.segments if s.live]
        if live:
            seg = _concat(live)
            base.add(seg.ids, seg.vectors)
        log.debug("ANN view merged: %d vectors", base.ntotal)
        return AnnView(base)

    def catch_up(self, store: SqlStore, conn: Any, vectors: VectorStore,
                 since_generation: int) -> "AnnView":
        """The view at the snapshot ``conn`` reads, from this view at ``since_generation``.

        Reads only the chunks deleted and added since then (plus their vectors).
        A compaction since then forgot the deletions (``deleted_floor``): the
        base is then refilled from the stored vectors (keeping its training).
        """
        if since_generation < store.deleted_floor(conn):
            from mitsuke.indexer.recovery import rebuild_ann

            log.info("ANN view at generation %d predates the last compaction: refilling it", since_generation)
            return AnnView(rebuild_ann(store, conn, vectors, self.params, trained=self.base))
        deleted = np.asarray(store.deleted_since(conn, since_generation), dtype=np.int64)
        added = store.live_vectors(conn, min_generation=since_generation)
        ids = np.array([c for c, _ in added], dtype=np.int64)
        rows = np.array([r for _, r in added], dtype=np.int64)
        vecs = vectors.read(rows) if len(rows) else np.zeros((0, self.params.dim), np.float32)
        return self.advance(deleted, ids, vecs)


def _ids_of(ann: AnnIndex) -> np.ndarray:
    """Sorted ids held by a flat (IndexIDMap2) or IVF index."""
    import faiss

    index = ann.index
    if hasattr(index, "id_map"):
        ids = faiss.vector_to_array(index.id_map)
    else:
        invlists = index.invlists
        parts = []
        for lst in range(index.nlist):
            size = invlists.list_size(lst)
            if size:
                parts.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy())
        ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return np.sort(ids.astype(np.int64, copy=False))


def _contains(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    if sorted_ids.size == 0:
        return np.zeros(len(ids), bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), sorted_ids.size - 1)
    return sorted_ids[pos] == ids


def _order(s: np.ndarray, i: np.ndarray, k: int) -> np.ndarray:
    """Column order of the best ``k`` per row: score descending, then id ascending."""
    return np.stack([np.lexsort((i[r], -s[r]))[:k] for r in range(len(s))]) if len(s) else np.zeros((0, 0), int)


def _concat(segments: list[Segment]) -> Segment:
    ids = np.concatenate([s.ids[s.alive] for s in segments])
    vecs = np.concatenate([s.vectors[s.alive] for s in segments])
    return Segment.build(ids, vecs)


def _selected_search(ann: AnnIndex, q: np.ndarray, k: int, nprobe: int | None, ids: np.ndarray, *, exclude: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Search the CPU index restricted to ``ids`` (or to everything but them, ``exclude``) via an IDSelector."""
    import faiss

    k = min(k, ann.ntotal)
    # Selectors must outlive the search: FAISS keeps only raw pointers to them.
    batch = faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))
    sel = faiss.IDSelectorNot(batch) if exclude else batch
    # (FAISS's SWIG classes take their fields as keywords; its stubs do not say so.)
    params: Any
    if ann.params.kind == "ivfpq":
        params = faiss.SearchParametersIVF(sel=sel,  # type: ignore[call-arg]
                                           nprobe=min(int(nprobe or ann.params.nprobe), ann.params.nlist))
    else:
        params = faiss.SearchParameters(sel=sel)  # type: ignore[call-arg]
    scores, found = ann.index.search(q, k, params=params)
    del sel, batch
    return scores, found
