"""Upkeep of an index directory's derived and packed files: ANN index, compaction, recall tuning.

Compaction (when more than ``compact_ratio`` of the rows are dead):
1. copy the live rows, in row order, to ``vectors.f16.compact-E`` and fsync;
2. hard-link the current file as ``vectors.f16.epoch-(E-1)`` for readers
   whose snapshot is older;
3. one SQLite transaction: every chunk's new ``vector_row``, ``vector_rows``,
   ``vectors_epoch`` = E, deletions up to now forgotten (``deleted_floor``);
4. rename ``compact-E`` over ``vectors.f16``;
5. rebuild the ANN index from the new file and save it.
A kill before 3 leaves an uncommitted ``compact-E`` that the next writer
deletes; after 3, the next writer (or any reader) uses ``compact-E`` until
the rename is finished.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from mitsuke.indexer.ann_tune import needs_tuning, tune_ann
from mitsuke.indexer.checksums import file_blocks
from mitsuke.indexer.durable import fault_point
from mitsuke.indexer.layout import VECTORS_FILE, AnnState, Counts
from mitsuke.indexer.recovery import rebuild_ann

if TYPE_CHECKING:
    from pathlib import Path

    from mitsuke.indexer.ann import AnnIndex
    from mitsuke.indexer.checksums import Block
    from mitsuke.indexer.durable import WriterLock
    from mitsuke.indexer.layout import IndexPaths, Manifest
    from mitsuke.indexer.store import MetadataStore
    from mitsuke.indexer.vectors import VectorStore

__all__ = ["DirectoryUpkeep"]

log = logging.getLogger("mitsuke")


class DirectoryUpkeep:
    """The ``IndexBuilder`` methods that keep ``ann.faiss``, ``vectors.f16`` and the manifest up to date.

    A mixin: it uses the builder's attributes declared below and its ``flush``.
    """

    path: Path
    store: MetadataStore
    vectors: VectorStore | None
    ann: AnnIndex | None
    paths: IndexPaths
    manifest: Manifest
    generation: int
    ann_save_seconds: float
    compact_ratio: float
    compact_min_rows: int
    _lock: WriterLock
    _sums: dict[int, Block]
    _ann_dirty: bool
    _last_ann_save: float

    def flush(self) -> None:  # the writer's (IndexWriter.flush, first in the builder's bases)
        raise NotImplementedError

    def rebuild_ann(self) -> None:
        """Rebuild ``ann.faiss`` from the stored vectors and save it (it is derived data)."""
        if self.vectors is None:
            return
        with self.store.begin() as conn:
            params = self.manifest.ann_params(self.store.counts(conn)["chunks"])
            self.ann = rebuild_ann(self.store, conn, self.vectors, params)
        self._save_ann()

    # ------------------------------------------------------------------ ANN upkeep
    def _update_ann(self, ids: np.ndarray, vecs: np.ndarray | None, removed: list[int]) -> None:
        if self.ann is None or not self.ann.is_trained:
            self._ann_dirty = True  # built (and trained) at close, when the count is known
            return
        self.ann.remove(removed)
        if vecs is not None and len(ids):
            self.ann.add(ids, vecs)
        self._ann_dirty = True
        if time.monotonic() - self._last_ann_save > self.ann_save_seconds:
            self._save_ann()

    # ------------------------------------------------------------------ compaction
    def maybe_compact(self, force: bool = False) -> bool:
        """Compact ``vectors.f16`` if enough of it is dead (or ``force``); returns whether it did."""
        if self.vectors is None:
            return False
        self.flush()
        with self.store.begin() as conn:
            dead = self.store.dead_vector_rows(conn)
            total = self.store.vector_rows(conn)
        if dead == 0 or not force and (dead < self.compact_min_rows or dead <= self.compact_ratio * total):
            return False
        self.compact()
        return True

    def compact(self) -> None:
        """Rewrite ``vectors.f16`` with live rows only and rebuild the ANN index from it (no re-embedding).

        See the module docstring for the order of steps and what a kill at each one leaves.
        """
        vectors = self.vectors
        assert vectors is not None  # only an index with vectors is compacted (maybe_compact checks)
        with self.store.begin() as conn:
            live = self.store.live_vectors(conn, by_row=True)
            epoch = self.store.vectors_epoch(conn) + 1
            before = self.store.vector_rows(conn)
        ids = np.array([c for c, _ in live], dtype=np.int64)
        old_rows = np.array([r for _, r in live], dtype=np.int64)
        log.info("compacting %s: %d live of %d rows (epoch %d)", VECTORS_FILE, len(live), before, epoch)
        target = vectors.write_compacted(old_rows, epoch)
        sums = file_blocks(target, vectors.row_bytes, len(ids))
        fault_point("compact_written")
        vectors.retire(epoch - 1)
        self._lock.ensure_valid()
        with self.store.begin() as conn:
            self.store.set_block_checksums(conn, sums, replace_all=True)
            self.store.renumber_vectors(conn, ids.tolist(), range(len(ids)))
            self.store.set_state(conn, "vector_rows", len(ids))
            self.store.set_state(conn, "vectors_epoch", epoch)
            self.store.prune_deleted(conn, self.generation)
            fault_point("compact_before_commit")
        fault_point("compact_committed")
        self._sums = sums
        vectors.install(epoch)
        vectors.expect(self._sums)
        vectors.tidy(epoch)
        # The ANN index holds ids, not rows, so it is still right; it is rebuilt
        # anyway (reusing its training) so a long-lived index sheds the
        # imbalance that many removals leave in the inverted lists.
        if self.ann is not None:
            with self.store.begin() as conn:
                self.ann = rebuild_ann(self.store, conn, vectors, self.ann.params, trained=self.ann)
            self._save_ann()

    # ------------------------------------------------------------------ ANN choice
    def _maybe_switch_ann(self) -> None:
        """Pick (or re-pick) the ANN kind now that the number of vectors is known."""
        assert self.vectors is not None  # called (by close) only for an index with vectors
        with self.store.begin() as conn:
            n = self.store.counts(conn)["chunks"]
            wanted = self.manifest.ann_params(n)
            ann = self.ann
            # Re-train IVF-PQ only when the collection grew or shrank 4x past its sizing.
            grew = ann is not None and ann.params.kind == "ivfpq" and wanted.kind == "ivfpq" and (
                wanted.nlist >= 4 * ann.params.nlist or wanted.nlist * 4 <= ann.params.nlist)
            if ann is None or ann.params.kind != wanted.kind or grew or not ann.is_trained:
                log.info("building %s ANN index over %d vectors", wanted.kind, n)
                self.ann = rebuild_ann(self.store, conn, self.vectors, wanted)
                self._ann_dirty = True

    def _save_ann(self) -> None:
        if self.ann is None:
            return
        self._lock.ensure_valid()
        size, crc = self.ann.save(self.paths.ann)
        fault_point("ann_saved")  # ann.faiss does not match the manifest's checksum: rebuilt from vectors
        old = self.manifest.ann
        # The measurement stays with the index it was made on (same parameters).
        tuning = old.tuning if old is not None and old.params == self.ann.params else None
        self.manifest = replace(self.manifest, ann=AnnState(self.ann.params, self.generation, size=size, crc=crc,
                                                            index_id=self.manifest.index_id, tuning=tuning))
        self._write_manifest()
        self._ann_dirty = False
        self._last_ann_save = time.monotonic()

    def _maybe_tune(self) -> None:
        """Measure recall and choose nprobe / rerank pool when the IVF-PQ index is new or grew 2× (ann_tune)."""
        state, ann = self.manifest.ann, self.ann
        if state is None or not needs_tuning(state.tuning, ann, self.manifest.ann_config.recall_target):
            return
        assert ann is not None and self.vectors is not None  # needs_tuning is False without an ANN index
        with self.store.begin() as conn:
            live = self.store.live_vectors(conn)
        ids = np.array([c for c, _ in live], dtype=np.int64)
        rows = np.array([r for _, r in live], dtype=np.int64)
        tuned = tune_ann(ann, self.vectors, ids, rows, target=self.manifest.ann_config.recall_target)
        if tuned is not None:
            self.manifest = replace(self.manifest, ann=replace(state, tuning=tuned))  # close() writes it next

    def _write_manifest(self) -> None:
        with self.store.begin() as conn:
            counts = self.store.counts(conn)
        self.manifest = replace(self.manifest, generation=self.generation, counts=Counts(**counts)).write(self.path)
