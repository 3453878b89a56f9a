"""IndexBuilder: add, update, skip and delete documents with crash-safe commits.

Write order for every batch (DESIGN.md invariants 1, 3, 6):
1. embed the batch's chunks (nothing on disk changes);
2. in one SQLite write transaction (BEGIN IMMEDIATE): append their vectors to
   ``vectors.f16`` past the committed rows and fsync, then delete replaced
   documents, insert documents, chunks and FTS5 terms, advance
   ``vector_rows`` and ``generation``, commit. A kill before the commit
   leaves only garbage rows past ``vector_rows``: the next writer truncates them;
3. the in-memory ANN index is updated; it is saved (atomically) at close and
   every ``ann_save_seconds``, then the manifest records its generation. A
   kill before that leaves an older ``ann.faiss`` that the next opener
   catches up from ``vectors.f16`` (idempotently: ids are removed before they
   are re-added).

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
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mitsuke.indexer.ann import AnnIndex
from mitsuke.indexer.chunking import Chunker
from mitsuke.indexer.config import AnnConfig, ChunkConfig, EmbedConfig
from mitsuke.indexer.durable import WriterLock, fault_point, leftover_temp_files
from mitsuke.indexer.errors import IndexFormatError
from mitsuke.indexer.layout import MANIFEST_FILE, META_FILE, VECTORS_FILE, AnnState, Counts, IndexPaths, Manifest
from mitsuke.indexer.location import is_url
from mitsuke.indexer.recovery import load_ann, rebuild_ann
from mitsuke.indexer.store import MetadataStore
from mitsuke.indexer.vectors import VectorStore
from mitsuke.indexer.writer import IndexSummary, IndexWriter, _Pending, embedding_input, settle_open

if TYPE_CHECKING:
    from mitsuke.indexer.embedding import Embedder

__all__ = ["IndexBuilder", "IndexSummary", "embedding_input", "settle_open"]

log = logging.getLogger("mitsuke")


class IndexBuilder(IndexWriter):
    """Build or update an index directory. Use as a context manager: it commits on exit.

    >>> with IndexBuilder.open("idx", model="none") as b:          # doctest: +SKIP
    ...     b.add_paths(["data/"])
    """

    def __init__(self, path: Path, manifest: Manifest, embedder: Embedder | None, lock: WriterLock, *,
                 batch_docs: int = 64, batch_chunks: int = 512, ann_save_seconds: float = 300.0,
                 compact_ratio: float = 0.25, compact_min_rows: int = 1024) -> None:
        self.path = path
        self.paths = IndexPaths(path)
        self.manifest = manifest
        self.embedder = embedder
        self._lock = lock
        self.chunk_config = manifest.chunking
        self.chunker = Chunker(self.chunk_config, embedder.count_tokens if embedder else None)
        self.store = MetadataStore(self.paths.meta)
        self.dim = manifest.dim
        self.vectors = VectorStore(self.paths.vectors, self.dim) if self.dim else None
        self.batch_docs = batch_docs
        self.batch_chunks = batch_chunks
        self.ann_save_seconds = ann_save_seconds
        # Compact vectors.f16 when more than this share of its rows is dead (and
        # at least compact_min_rows are): a quarter wasted is where the copy
        # starts paying for itself in disk and page cache.
        self.compact_ratio = compact_ratio
        self.compact_min_rows = compact_min_rows
        self.summary = IndexSummary()
        self.on_progress: Callable[[str, int], None] | None = None
        self._pending: list[_Pending] = []
        self._pending_chunks = 0
        self._seen: set[str] = set()
        self._started = time.monotonic()
        self._closed = False
        with self.store.begin() as conn:
            self._known = self.store.document_hashes(conn)
            self.generation = self.store.generation(conn)
            committed_rows = self.store.vector_rows(conn)
            epoch = self.store.vectors_epoch(conn)
        self.ann: AnnIndex | None = None
        self._ann_dirty = False
        self._last_ann_save = time.monotonic()
        _remove_temp_files(path)
        if self.vectors is not None:
            self.vectors.tidy(epoch)
            if self.vectors.rows_on_disk != committed_rows:
                log.info("reclaiming %d uncommitted vector rows", self.vectors.rows_on_disk - committed_rows)
            self.vectors.truncate(committed_rows)
            self._open_ann()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        path: str | Path,
        model: str | None = None,
        *,
        chunking: ChunkConfig | None = None,
        ann: AnnConfig | None = None,
        embed: EmbedConfig | None = None,
        embedder: Embedder | None = None,
        **kwargs: Any,
    ) -> "IndexBuilder":
        """Open (or create) the index at ``path`` for writing.

        ``model``: a hub id or local directory, ``"none"`` for a lexical-only
        index, or ``None`` to use the index's own model (the default model for a
        new index). An existing index refuses another model.
        """
        if is_url(path):  # a PostgreSQL index: many writers, no directory lock
            from mitsuke.indexer.pg_builder import PgIndexBuilder

            return PgIndexBuilder.open_url(path, model, chunking=chunking, ann=ann, embed=embed, embedder=embedder,
                                           **kwargs)
        path = Path(path)
        paths = IndexPaths(path)
        path.mkdir(parents=True, exist_ok=True)
        lock = WriterLock(paths.lock)
        lock.acquire()
        try:
            manifest = Manifest.read(path)
            if manifest is None and paths.meta.exists():
                raise IndexFormatError(f"{path} has {META_FILE} but no {MANIFEST_FILE}: not a complete mitsuke index")
            manifest, embedder, new = settle_open(path, manifest, model, chunking=chunking, ann=ann, embed=embed,
                                                  embedder=embedder)
            if new:
                # Written before meta.sqlite exists: a kill during the first
                # run must leave an index that opens (invariant 6).
                manifest = manifest.write(path)
            return cls(path, manifest, embedder, lock, **kwargs)
        except BaseException:
            lock.release()
            raise

    def _open_ann(self) -> None:
        saved = self.manifest.ann
        if saved is None:
            return
        with self.store.begin() as conn:
            self.ann, changed = load_ann(self.paths.ann, self.store, conn, self.vectors, saved.params,
                                         saved.generation, self.generation)
        if changed:
            self._save_ann()

    # ------------------------------------------------------------------ context manager
    def close(self, commit: bool = True) -> None:
        if self._closed:
            return
        try:
            if commit:
                self.flush()
            else:  # an error mid-run: what was not committed stays uncommitted
                self._pending, self._pending_chunks = [], 0
            if self.vectors is not None:
                self.maybe_compact()
                self._maybe_switch_ann()
                if self._ann_dirty:
                    self._save_ann()
            self._write_manifest()
        finally:
            self._closed = True
            self.summary.seconds = time.monotonic() - self._started
            self.store.close()
            self._lock.release()

    def delete(self, keys: Iterable[str]) -> int:
        """Delete documents by key (their chunks leave SQLite, FTS5 and the ANN index); returns how many existed."""
        self.flush()
        keys = [k for k in dict.fromkeys(keys) if k in self._known]
        total = 0
        step = max(self.batch_docs, 1) * 16  # deletions are cheap: bigger transactions than adds
        for i in range(0, len(keys), step):
            part = keys[i:i + step]
            self._commit([], delete_doc_ids=[self._known[k][0] for k in part])
            for k in part:
                del self._known[k]
            self.summary.deleted += len(part)
            total += len(part)
        return total

    def _commit(self, pending: list[_Pending], delete_doc_ids: list[int] = ()) -> None:
        vecs, terms = self._embed_batch(pending)
        generation = self.generation + 1
        with self.store.begin() as conn:
            first_row = self.store.vector_rows(conn)
            if vecs is not None:
                # Step 2 of the write order: vectors are durable before SQLite points at them.
                self.vectors.append(vecs, first_row)
                fault_point("vectors_appended")
            replaced = [p.old_doc_id for p in pending if p.old_doc_id is not None]
            removed = self.store.delete_documents(conn, list(delete_doc_ids) + replaced, generation)
            next_id = self.store.next_chunk_id(conn)
            chunk_rows: list[dict[str, Any]] = []
            doc_ids: dict[str, int] = {}
            for p in pending:
                doc = p.doc
                doc_id = self.store.insert_document(conn, {
                    "key": doc.key, "content_hash": doc.content_hash, "title": doc.title, "source": doc.source,
                    "source_type": doc.source_type, "encoding": doc.encoding, "meta": doc.metadata,
                    "n_chars": len(doc.text), "generation": generation,
                    "page_starts": list(doc.page_starts) or None,
                })
                doc_ids[doc.key] = doc_id
                for c in p.chunks:
                    chunk_rows.append({
                        "id": next_id + len(chunk_rows), "doc_id": doc_id, "chunk_index": c.index,
                        "char_start": c.char_start, "char_end": c.char_end, "text": c.text,
                        "token_count": c.token_count, "headings": list(c.headings),
                        "vector_row": (first_row + len(chunk_rows)) if vecs is not None else None,
                        "generation": generation,
                    })
            self.store.insert_chunks(conn, chunk_rows, terms)
            if vecs is not None:
                self.store.set_state(conn, "vector_rows", first_row + len(vecs))
            self.store.set_state(conn, "generation", generation)
            fault_point("before_commit")
        fault_point("after_commit")
        self.generation = generation
        for p in pending:
            if p.old_doc_id is None:
                self.summary.added += 1
            else:
                self.summary.updated += 1
            self._known[p.doc.key] = (doc_ids[p.doc.key], p.doc.content_hash)
        self.summary.chunks_embedded += len(chunk_rows) if vecs is not None else 0
        if self.on_progress:
            self.on_progress("documents", len(pending))
        if self.vectors is not None:
            self._update_ann(np.array([r["id"] for r in chunk_rows], dtype=np.int64), vecs, removed)

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
        with self.store.begin() as conn:
            live = self.store.live_vectors(conn, by_row=True)
            epoch = self.store.vectors_epoch(conn) + 1
            before = self.store.vector_rows(conn)
        ids = np.array([c for c, _ in live], dtype=np.int64)
        old_rows = np.array([r for _, r in live], dtype=np.int64)
        log.info("compacting %s: %d live of %d rows (epoch %d)", VECTORS_FILE, len(live), before, epoch)
        self.vectors.write_compacted(old_rows, epoch)
        fault_point("compact_written")
        self.vectors.retire(epoch - 1)
        with self.store.begin() as conn:
            self.store.renumber_vectors(conn, ids, np.arange(len(ids)))
            self.store.set_state(conn, "vector_rows", len(ids))
            self.store.set_state(conn, "vectors_epoch", epoch)
            self.store.prune_deleted(conn, self.generation)
            fault_point("compact_before_commit")
        fault_point("compact_committed")
        self.vectors.install(epoch)
        self.vectors.tidy(epoch)
        # The ANN index holds ids, not rows, so it is still right; it is rebuilt
        # anyway (reusing its training) so a long-lived index sheds the
        # imbalance that many removals leave in the inverted lists.
        if self.ann is not None:
            with self.store.begin() as conn:
                self.ann = rebuild_ann(self.store, conn, self.vectors, self.ann.params, trained=self.ann)
            self._save_ann()

    # ------------------------------------------------------------------ ANN choice
    def _maybe_switch_ann(self) -> None:
        """Pick (or re-pick) the ANN kind now that the number of vectors is known."""
        with self.store.begin() as conn:
            n = self.store.counts(conn)["chunks"]
            wanted = self.manifest.ann_params(n)
            current = self.ann.params if self.ann is not None else None
            # Re-train IVF-PQ only when the collection grew or shrank 4x past its sizing.
            grew = current is not None and current.kind == "ivfpq" and wanted.kind == "ivfpq" and (
                wanted.nlist >= 4 * current.nlist or wanted.nlist * 4 <= current.nlist)
            if current is None or current.kind != wanted.kind or grew or not self.ann.is_trained:
                log.info("building %s ANN index over %d vectors", wanted.kind, n)
                self.ann = rebuild_ann(self.store, conn, self.vectors, wanted)
                self._ann_dirty = True

    def _save_ann(self) -> None:
        if self.ann is None:
            return
        self.ann.save(self.paths.ann)
        fault_point("ann_saved")  # ann.faiss is newer than the manifest says: caught up idempotently
        self.manifest = replace(self.manifest, ann=AnnState(self.ann.params, self.generation))
        self._write_manifest()
        self._ann_dirty = False
        self._last_ann_save = time.monotonic()

    def _write_manifest(self) -> None:
        with self.store.begin() as conn:
            counts = self.store.counts(conn)
        self.manifest = replace(self.manifest, generation=self.generation, counts=Counts(**counts)).write(self.path)



def _remove_temp_files(path: Path) -> None:
    """Temp files of an atomic replace that a killed writer never renamed."""
    for tmp in leftover_temp_files(path):
        log.info("removing %s left by an interrupted write", tmp.name)
        tmp.unlink(missing_ok=True)

