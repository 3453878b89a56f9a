"""Chunk id -> row of ``vectors.f16`` in memory, one immutable map per (generation, vectors epoch).

The dense leg's exact rerank needs the vector row of every ANN candidate.
Asking SQLite for them (``Snapshot.chunk_vector_rows``) cost a query and a
Python dict per search; a :class:`RowMap` answers with two ``searchsorted``
calls over numpy arrays.

Correctness rests on what the writer guarantees (the same facts
``indexer.ann_delta.AnnView.catch_up`` relies on):

- chunk ids are never reused, and a chunk's vector row changes only when
  ``vectors.f16`` is renumbered (compaction: the vectors epoch changes) or
  when salvage gives a chunk a row (``deleted_floor`` moves past the
  generation the map was made at);
- every commit that deletes a chunk records it in ``deleted_chunks`` with its
  generation; every chunk written by a commit carries that generation.

So the map of generation ``g1`` is the map of ``g0`` (same epoch, ``g0`` at
or after ``deleted_floor``) minus the chunks deleted after ``g0``, plus the
chunks added after ``g0``: reading only the change. Anything else (another
epoch, a pruned history) rebuilds the map from every live chunk.

A map is used only by snapshots of exactly its key: a thread whose snapshot
is older than every kept map gets ``None`` and falls back to SQL, so a map
can never hand out a row of a chunk its snapshot does not have (or not yet).
Maps are immutable; a newer one is swapped into :class:`RowMaps` under a
lock, and threads already holding an older one keep using it safely.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict

import numpy as np

from mitsuke.indexer.store import Snapshot

__all__ = ["RowMap", "RowMaps", "MERGE_SHARE", "KEEP_MAPS"]

log = logging.getLogger("mitsuke")

# Fold the delta into new base arrays once it holds this share of the base (at least 4096 entries).
MERGE_SHARE = 0.05
# Maps kept per Searcher (threads whose snapshots are a few commits apart each find theirs).
KEEP_MAPS = 4

_EMPTY = np.zeros(0, np.int64)


def _find(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions, found) of ``ids`` in ``sorted_ids``."""
    if sorted_ids.size == 0:
        return np.zeros(ids.shape, np.int64), np.zeros(ids.shape, bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), sorted_ids.size - 1)
    return pos, sorted_ids[pos] == ids


class RowMap:
    """``chunk id -> vector row`` of the live chunks with a vector, at one generation and vectors epoch.

    ``base_ids``/``base_rows`` (sorted by id) are shared between the maps of
    one base; ``gone`` (sorted) hides base entries deleted since, ``new_ids``/
    ``new_rows`` (sorted) hold entries added since. Nothing is modified after
    construction.
    """

    def __init__(self, generation: int, epoch: int, base_ids: np.ndarray, base_rows: np.ndarray,
                 gone: np.ndarray = _EMPTY, new_ids: np.ndarray = _EMPTY, new_rows: np.ndarray = _EMPTY) -> None:
        self.generation, self.epoch = generation, epoch
        self.base_ids, self.base_rows = base_ids, base_rows
        self.gone, self.new_ids, self.new_rows = gone, new_ids, new_rows

    @property
    def key(self) -> tuple[int, int]:
        return self.generation, self.epoch

    def __len__(self) -> int:
        return self.base_ids.size - self.gone.size + self.new_ids.size

    @classmethod
    def build(cls, snap: Snapshot, epoch: int) -> "RowMap":
        """Every live chunk's row at ``snap`` (one SQL scan of the chunks)."""
        pairs = np.array(snap.live_vectors(), dtype=np.int64).reshape(-1, 2)  # ordered by chunk id
        return cls(snap.generation, epoch, np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1]))

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Vector rows of ``ids`` (any shape), -1 where the chunk is unknown, deleted or has no vector."""
        ids = np.asarray(ids, dtype=np.int64)
        pos, hit = _find(self.base_ids, ids)
        out = np.where(hit, self.base_rows[pos] if self.base_rows.size else -1, -1)
        if self.gone.size:
            out[_find(self.gone, ids)[1]] = -1
        if self.new_ids.size:
            pos, hit = _find(self.new_ids, ids)
            out[hit] = self.new_rows[pos[hit]]
        return out

    def advanced(self, snap: Snapshot, epoch: int) -> "RowMap":
        """The map at ``snap`` (newer than this one): incremental when the history allows, else rebuilt."""
        if epoch != self.epoch or self.generation < snap.store.deleted_floor(snap.conn):
            return RowMap.build(snap, epoch)
        deleted = np.unique(np.asarray(snap.deleted_since(self.generation), dtype=np.int64))
        added = np.array(snap.live_vectors(self.generation), dtype=np.int64).reshape(-1, 2)
        a_ids, a_rows = added[:, 0], added[:, 1]  # sorted by id
        changed = np.union1d(deleted, a_ids)
        keep = ~_find(changed, self.new_ids)[1] if self.new_ids.size else np.zeros(0, bool)
        new_ids = np.concatenate([self.new_ids[keep], a_ids])
        new_rows = np.concatenate([self.new_rows[keep], a_rows])
        order = np.argsort(new_ids, kind="stable")
        in_base = changed[_find(self.base_ids, changed)[1]]
        gone = np.union1d(self.gone, in_base)
        out = RowMap(snap.generation, epoch, self.base_ids, self.base_rows, gone, new_ids[order], new_rows[order])
        if gone.size + new_ids.size > max(4096, MERGE_SHARE * self.base_ids.size):
            out = out.merged()
        return out

    def merged(self) -> "RowMap":
        """The same map with the delta folded into new base arrays."""
        live = ~_find(self.gone, self.base_ids)[1] if self.gone.size else np.ones(self.base_ids.size, bool)
        if self.new_ids.size:  # an id re-added after a deletion is answered by the delta
            live &= ~_find(self.new_ids, self.base_ids)[1]
        ids = np.concatenate([self.base_ids[live], self.new_ids])
        rows = np.concatenate([self.base_rows[live], self.new_rows])
        order = np.argsort(ids, kind="stable")
        return RowMap(self.generation, self.epoch, ids[order], rows[order])


class RowMaps:
    """A Searcher's recent :class:`RowMap` s; ``for_snapshot`` gives the one of a snapshot (or None)."""

    def __init__(self, keep: int = KEEP_MAPS) -> None:
        self._maps: OrderedDict[tuple[int, int], RowMap] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def for_snapshot(self, snap: Snapshot, epoch: int | None = None) -> RowMap | None:
        """The map of exactly ``snap``'s generation and vectors epoch; None for a snapshot older than all kept."""
        epoch = snap.vectors_epoch() if epoch is None else epoch
        key = (snap.generation, epoch)
        found = self._maps.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._maps.get(key)
            if found is not None:
                return found
            same = [m for m in self._maps.values() if m.epoch == epoch]
            newest = max(same, key=lambda m: m.generation, default=None)
            if newest is not None and newest.generation > snap.generation:
                return None  # an old snapshot: the caller asks SQL (rare, never wrong)
            if self._maps and newest is None and max(m.generation for m in self._maps.values()) > snap.generation:
                return None  # a snapshot from before a compaction that newer ones have seen
            made = RowMap.build(snap, epoch) if newest is None else newest.advanced(snap, epoch)
            self._maps[key] = made
            while len(self._maps) > self._keep:
                self._maps.popitem(last=False)
            return made
