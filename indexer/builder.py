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

Compaction and the ANN index's upkeep are ``indexer.upkeep``'s; what every
writer shares (loading, chunking, batching, embedding) is ``indexer.writer``'s.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mitsuke.indexer.ann import AnnIndex
from mitsuke.indexer.checksums import Block, extend_blocks
from mitsuke.indexer.chunking import Chunker
from mitsuke.indexer.config import AnnConfig, ChunkConfig, EmbedConfig
from mitsuke.indexer.durable import WriterLock, fault_point, leftover_temp_files
from mitsuke.indexer.errors import IndexFormatError
from mitsuke.indexer.identity import adopt_identity, check_files_beside
from mitsuke.indexer.layout import MANIFEST_FILE, META_FILE, IndexPaths, Manifest
from mitsuke.indexer.location import is_url
from mitsuke.indexer.prepared import embedding_input
from mitsuke.indexer.recovery import load_ann
from mitsuke.indexer.salvage import Salvage, reembed_missing, settle_vectors
from mitsuke.indexer.store import MetadataStore
from mitsuke.indexer.upkeep import DirectoryUpkeep
from mitsuke.indexer.vectors import VectorStore
from mitsuke.indexer.writer import IndexSummary, IndexWriter, _Pending, document_row, record_embedding, settle_open

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from mitsuke.indexer.embedding import Embedder
    from mitsuke.indexer.pg_builder import PgIndexBuilder

__all__ = ["IndexBuilder", "IndexSummary", "embedding_input", "record_embedding"]

log = logging.getLogger("mitsuke")


class IndexBuilder(IndexWriter, DirectoryUpkeep):
    """Build or update an index directory (or a PostgreSQL index). Use as a context manager: it commits on exit.

    >>> with IndexBuilder.open("idx", model="none") as b:          # doctest: +SKIP
    ...     b.add_paths(["data/"])
    """

    path: Path  # a directory (IndexWriter's path may be a PgLocation)

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
        self._start_run(batch_docs, batch_chunks)
        self.ann_save_seconds = ann_save_seconds
        # Compact vectors.f16 when more than this share of its rows is dead (and
        # at least compact_min_rows are): a quarter wasted is where the copy
        # starts paying for itself in disk and page cache.
        self.compact_ratio = compact_ratio
        self.compact_min_rows = compact_min_rows
        with self.store.begin() as conn:
            self.manifest = adopt_identity(self.store, conn, manifest, self.paths)
            epoch = self.store.vectors_epoch(conn)
        self.ann: AnnIndex | None = None
        self._ann_dirty = False
        self._last_ann_save = time.monotonic()
        self._sums: dict[int, Block] = {}
        self.salvage = Salvage()
        _remove_temp_files(path)
        if self.vectors is not None:
            self.vectors.tidy(epoch)
            # Never truncated or extended to agree with SQLite: damaged rows are salvaged (indexer.salvage).
            self._sums, self.salvage = settle_vectors(self.store, self.vectors,
                                                      self._embed_chunks if embedder is not None else None)
            self.vectors.expect(self._sums)
        with self.store.begin() as conn:
            self._known = self.store.document_hashes(conn)
            self.generation = self.store.generation(conn)
        if self.vectors is not None:
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
        load_model: bool = True,
        recall_target: float | None = None,
        **kwargs: Any,
    ) -> IndexBuilder | PgIndexBuilder:
        """Open (or create) the index at ``path`` for writing.

        ``model``: a hub id or local directory, ``"none"`` for a lexical-only
        index, or ``None`` to use the index's own model (the default model for a
        new index). An existing index refuses another model.
        ``load_model=False`` opens an existing index without loading its model:
        it can delete, compact, settle and rebuild (``mitsuke docs delete``,
        ``compact``, ``repair`` when the model cannot be loaded), not add
        documents (that raises ``MitsukeError``).

        ``recall_target``: mean recall@10 that the measured IVF-PQ search
        settings must reach (default 0.97; kept in the manifest's ``ann_config``).

        ``path`` may be a PostgreSQL URL (``indexer.location``): the writer is
        then a ``PgIndexBuilder`` (many at once, no directory lock).
        """
        if is_url(path):
            from mitsuke.indexer.pg_builder import PgIndexBuilder

            return PgIndexBuilder.open_url(path, model, chunking=chunking, ann=ann, embed=embed, embedder=embedder,
                                           load_model=load_model, recall_target=recall_target, **kwargs)
        path = Path(path)
        paths = IndexPaths(path)
        # What this call creates is removed again if opening fails: directories, LOCK, a first manifest.
        created = [p for p in (path, *path.parents) if not p.exists()]
        created_files = [f for f in (paths.lock, paths.manifest) if not f.exists()]
        path.mkdir(parents=True, exist_ok=True)
        lock = WriterLock(paths.lock)
        lock.acquire()
        try:
            manifest = Manifest.read(path)
            if manifest is None and paths.meta.exists():
                raise IndexFormatError(f"{path} has {META_FILE} but no {MANIFEST_FILE}: not a complete mitsuke index")
            check_files_beside(paths, manifest)
            manifest, embedder, new = settle_open(path, manifest, model, chunking=chunking, ann=ann, embed=embed,
                                                  embedder=embedder, load_model=load_model,
                                                  recall_target=recall_target)
            if new:
                # Written before meta.sqlite exists: a kill during the first
                # run must leave an index that opens (invariant 6).
                manifest = manifest.write(path)
            return cls(path, manifest, embedder, lock, **kwargs)
        except BaseException:
            lock.release()
            _remove_created(created_files, created)
            raise

    def _open_ann(self) -> None:
        saved = self.manifest.ann
        if saved is None:
            return
        assert self.vectors is not None  # __init__ opens the ANN index only when there are vectors
        with self.store.begin() as conn:
            self.ann, changed = load_ann(self.paths.ann, self.store, conn, self.vectors, saved.params,
                                         saved.generation, self.generation, saved=saved,
                                         index_id=self.manifest.index_id)
        if changed:
            self._save_ann()

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
                self._maybe_tune()
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

    # ------------------------------------------------------------------ committing
    def _commit(self, pending: list[_Pending], delete_doc_ids: Sequence[int] = ()) -> None:
        vecs, terms = self._embed_batch(pending)  # before the transaction: the slow part holds no lock
        generation = self.generation + 1
        self._lock.ensure_valid()
        changed: dict[int, Block] = {}
        with self.store.begin() as conn:
            first_row = self.store.vector_rows(conn)
            if vecs is not None:
                assert self.vectors is not None  # vectors come only from a model, which gave the index a dim
                # Step 2 of the write order: vectors are durable before SQLite points at them.
                self.vectors.append(vecs, first_row)
                fault_point("vectors_appended")
                changed = extend_blocks(self._sums, first_row, np.asarray(vecs, dtype=np.float32)
                                        .astype(np.float16).tobytes(), self.vectors.row_bytes)
                self.store.set_block_checksums(conn, changed)
            replaced = [p.old_doc_id for p in pending if p.old_doc_id is not None]
            removed = self.store.delete_documents(conn, list(delete_doc_ids) + replaced, generation)
            next_id = self.store.next_chunk_id(conn)
            chunk_rows: list[dict[str, Any]] = []
            doc_ids: dict[str, int] = {}
            for p in pending:
                doc = p.doc
                doc_id = self.store.insert_document(conn, document_row(doc, generation))
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
        self._sums.update(changed)
        self.generation = generation
        for p in pending:
            if p.old_doc_id is None:
                self.summary.added += 1
            else:
                self.summary.updated += 1
            self._known[p.doc.key] = (doc_ids[p.doc.key], p.doc.content_hash)
        self.summary.chunks_embedded += len(chunk_rows) if vecs is not None else 0
        self.summary.chunks_added += len(chunk_rows)
        if self.on_progress:
            self.on_progress("documents", len(pending))
        if self.vectors is not None:
            self._update_ann(np.array([r["id"] for r in chunk_rows], dtype=np.int64), vecs, removed)

    def _embed_chunks(self, chunk_ids: Sequence[int]) -> np.ndarray:
        """Vectors of stored chunks, embedded again from their stored text (lost vectors)."""
        assert self.embedder is not None  # handed to settle_vectors / reembed_missing only with a model
        with self.store.begin() as conn:
            rows = self.store.chunk_rows(conn, chunk_ids)
        texts = [embedding_input(rows[i].text, rows[i].title, rows[i].headings, self.chunk_config.title_context)
                 for i in chunk_ids]
        log.warning("embedding %d chunks again whose stored vectors were lost", len(texts))
        return self.embedder.encode_documents(texts, progress=self._token_progress)

    def reembed_missing(self) -> int:
        """Embed the chunks left without vectors by an earlier loss (``mitsuke repair``); returns how many."""
        if self.vectors is None or self.embedder is None:
            return 0
        self.flush()
        self._lock.ensure_valid()
        self._sums, n = reembed_missing(self.store, self.vectors, self._embed_chunks, self._sums)
        self.vectors.expect(self._sums)
        if n:
            with self.store.begin() as conn:
                self.generation = self.store.generation(conn)
                self._known = self.store.document_hashes(conn)
            self.rebuild_ann()
        return n


def _remove_created(files: list[Path], directories: list[Path]) -> None:
    """Undo a failed open: the files it created, then the directories it made (deepest first)."""
    for file in files:
        file.unlink(missing_ok=True)
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:  # something else is in it now: not ours to remove
            break


def _remove_temp_files(path: Path) -> None:
    """Temp files of an atomic replace that a killed writer never renamed."""
    for tmp in leftover_temp_files(path):
        log.info("removing %s left by an interrupted write", tmp.name)
        tmp.unlink(missing_ok=True)
