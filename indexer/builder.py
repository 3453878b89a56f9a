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
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mitsuke.indexer.ann import AnnIndex
from mitsuke.indexer.ann_tune import needs_tuning, tune_ann
from mitsuke.indexer.checksums import Block, extend_blocks, file_blocks
from mitsuke.indexer.chunking import Chunk, Chunker
from mitsuke.indexer.config import DEFAULT_MODEL, AnnConfig, ChunkConfig, EmbedConfig
from mitsuke.indexer.documents import Document, LoadFailure, document_from_mapping
from mitsuke.indexer.durable import WriterLock, fault_point, leftover_temp_files
from mitsuke.indexer.errors import IndexFormatError, MitsukeError
from mitsuke.indexer.identity import adopt_identity, check_files_beside
from mitsuke.indexer.japanese import LEXICAL_ANALYSIS_VERSION
from mitsuke.indexer.layout import MANIFEST_FILE, META_FILE, VECTORS_FILE, AnnState, Counts, IndexPaths, Manifest
from mitsuke.indexer.loaders import FormatOptions, iter_documents
from mitsuke.indexer.prepared import PreparedDocument, chunk_terms, embedding_input
from mitsuke.indexer.protocol import check_embedder, model_info
from mitsuke.indexer.recovery import load_ann, rebuild_ann
from mitsuke.indexer.salvage import Salvage, reembed_missing, settle_vectors
from mitsuke.indexer.store import MetadataStore
from mitsuke.indexer.vectors import VectorStore

if TYPE_CHECKING:
    from mitsuke.indexer.embedding import Embedder

__all__ = ["IndexBuilder", "IndexSummary", "embedding_input", "record_embedding"]

log = logging.getLogger("mitsuke")


@dataclass
class IndexSummary:
    """What one indexing run did (``mitsuke index --json`` prints it)."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    chunks_embedded: int = 0
    chunks_added: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": self.added, "updated": self.updated, "unchanged": self.unchanged,
            "deleted": self.deleted, "failed": list(self.failed),
            "chunks_embedded": self.chunks_embedded, "chunks_added": self.chunks_added,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class _Pending:
    doc: Document | PreparedDocument
    chunks: list[Chunk]
    old_doc_id: int | None


class IndexBuilder:
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
            self._sums, self.salvage = settle_vectors(self.store, self.vectors, self._embed_chunks)
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
    ) -> "IndexBuilder":
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
        """
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
            embed = embed or EmbedConfig()
            wanted = model if model is not None else (manifest.model_name if manifest else DEFAULT_MODEL)
            if embedder is not None:
                check_embedder(embedder)
            if embedder is not None and model is None:
                wanted = embedder.info.name  # a ready embedder names its own model
            lexical_only = str(wanted).lower() == "none"
            if manifest is not None:
                manifest.check_model(path, model=model, embedder=embedder, writing=True)
                if manifest.lexical_analysis_differs:
                    raise IndexFormatError(
                        f"index {path} holds lexical terms of analysis v{manifest.lexical_analysis}, this mitsuke "
                        f"writes v{LEXICAL_ANALYSIS_VERSION}; mixing them breaks BM25: rebuild the index in a new "
                        "directory"
                    )
                if chunking is not None and manifest.chunking != chunking:
                    raise IndexFormatError(
                        f"index {path} was built with chunking {asdict(manifest.chunking)}; "
                        "changing it needs a new index"
                    )
            if not load_model and manifest is None:
                raise IndexFormatError(f"{path} is not a mitsuke index (no {MANIFEST_FILE}); nothing to change")
            if embedder is None and not lexical_only and load_model:
                from mitsuke.indexer.embedding import Embedder

                recorded = manifest.model if manifest else None  # reopen: the recorded directory/revision
                embedder = Embedder.from_pretrained(
                    recorded.source() if recorded else wanted, device=embed.device, dtype=embed.dtype,
                    max_length=embed.max_length, trust_remote_code=embed.trust_remote_code,
                    batch_tokens=embed.batch_tokens, revision=recorded.revision if recorded else None)
                if manifest is not None:
                    manifest.check_dim(embedder)
            if manifest is None:
                try:  # a bad budget/overlap pair must fail before the manifest is written
                    Chunker(chunking or ChunkConfig(), embedder.count_tokens if embedder else None)
                except ValueError as exc:
                    raise MitsukeError(f"chunking settings: {exc}") from None
                manifest = Manifest.new(model_info(embedder) if embedder else None, chunking or ChunkConfig(),
                                        ann or AnnConfig())
                # Written before meta.sqlite exists: a kill during the first
                # run must leave an index that opens (invariant 6).
                manifest = manifest.write(path)
            elif ann is not None:
                manifest = replace(manifest, ann_config=ann)
            if recall_target is not None:
                try:
                    cfg = replace(manifest.ann_config, recall_target=float(recall_target))
                except (TypeError, ValueError) as exc:
                    raise MitsukeError(f"--recall-target {recall_target!r}: {exc}") from None
                manifest = replace(manifest, ann_config=cfg)
            return cls(path, manifest, embedder, lock, **kwargs)
        except BaseException:
            lock.release()
            _remove_created(created_files, created)
            raise

    def _open_ann(self) -> None:
        saved = self.manifest.ann
        if saved is None:
            return
        with self.store.begin() as conn:
            self.ann, changed = load_ann(self.paths.ann, self.store, conn, self.vectors, saved.params,
                                         saved.generation, self.generation, saved=saved,
                                         index_id=self.manifest.index_id)
        if changed:
            self._save_ann()

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> "IndexBuilder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(commit=exc_type is None or issubclass(exc_type, KeyboardInterrupt))

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

    # ------------------------------------------------------------------ adding
    def add_paths(self, paths: Iterable[str], *, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
                  encoding: str | None = None, stdin=None, formats: FormatOptions | None = None) -> IndexSummary:
        """Index files, directories (recursive) and ``-`` (JSONL on stdin); ``formats``: PDF/CSV options."""
        return self.add_documents(iter_documents(paths, include=include, exclude=exclude, encoding=encoding,
                                                 stdin=stdin, formats=formats))

    def add_documents(self, docs: Iterable[Document | LoadFailure | Mapping[str, Any]]) -> IndexSummary:
        """Add or update documents; unchanged ones (same key and content hash) are skipped.

        A mapping becomes a ``Document`` by the JSONL rule (``document_from_mapping``);
        one without an id is keyed ``<documents>#<position>`` (1-based, in this call).
        """
        for n, item in enumerate(docs, 1):
            if isinstance(item, Mapping):
                item = document_from_mapping(item, where=f"<documents>#{n}", fallback_key=f"<documents>#{n}")
            if isinstance(item, LoadFailure):
                self._fail(item.path, item.reason)
                continue
            self._add_one(item)
        self.flush()
        return self.summary

    def add_prepared(self, items: Iterable[PreparedDocument | LoadFailure]) -> IndexSummary:
        """Commit documents chunked, analysed and embedded elsewhere (see :mod:`mitsuke.indexer.distributed`).

        The rules of :meth:`add_documents` hold: failures are recorded, a key seen
        twice keeps the first, a document whose hash the index holds is unchanged
        (``chunks is None`` marks one found unchanged where it was loaded); the
        rest is committed in batches through the same crash-safe write path.
        """
        for item in items:
            if isinstance(item, LoadFailure):
                self._fail(item.path, item.reason)
            elif self._admit(item) is not None:
                if item.chunks is None:
                    raise MitsukeError(f"document {item.key!r} came back unprepared although the index "
                                       "does not hold it unchanged: was it loaded against another index?")
                self._queue(_Pending(item, item.chunks, self._known[item.key][0] if item.key in self._known
                                     else None))
        self.flush()
        return self.summary

    def known_hashes(self) -> dict[str, str]:
        """``{key: content_hash}`` of the committed documents (what a distributed run skips early)."""
        return {key: digest for key, (_, digest) in self._known.items()}

    def _admit(self, doc: Document | PreparedDocument) -> Document | PreparedDocument | None:
        """``doc`` if it needs indexing; ``None`` for a duplicate key (a failure) or an unchanged document."""
        if doc.key in self._seen:
            self._fail(doc.source or doc.key, f"duplicate document key {doc.key!r} in this run; kept the first")
            return None
        self._seen.add(doc.key)
        known = self._known.get(doc.key)
        if known and known[1] == doc.content_hash:
            self.summary.unchanged += 1
            if self.on_progress:
                self.on_progress("unchanged", 1)
            return None
        return doc

    def _queue(self, pending: _Pending) -> None:
        self._pending.append(pending)
        self._pending_chunks += len(pending.chunks)
        if len(self._pending) >= self.batch_docs or self._pending_chunks >= self.batch_chunks:
            self.flush()

    def _fail(self, path: str, reason: str) -> None:
        # Reported once, by whoever reads summary.failed (the CLI prints it); logged for -v.
        log.info("skipped %s: %s", path, reason)
        self.summary.failed.append({"path": path, "reason": reason})
        if self.on_progress:
            self.on_progress("failed", 1)

    def _add_one(self, doc: Document) -> None:
        if self._admit(doc) is None:
            return
        known = self._known.get(doc.key)
        try:
            chunks = self.chunker.chunk(doc.text, markdown=doc.has_headings, breaks=doc.page_starts)
        except Exception as exc:  # a chunker bug on one document must not end the run
            log.exception("chunking failed for %s", doc.key)
            self._fail(doc.source or doc.key, f"chunking failed: {type(exc).__name__}: {exc}")
            return
        self._queue(_Pending(doc, chunks, known[0] if known else None))

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

    def prune(self) -> int:
        """Delete every document not seen in this run (the index mirrors the inputs)."""
        self.flush()
        gone = [k for k in self._known if k not in self._seen]
        return self.delete(gone)

    # ------------------------------------------------------------------ committing
    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending, self._pending_chunks = self._pending, [], 0
        self._commit(pending)

    def _commit(self, pending: list[_Pending], delete_doc_ids: list[int] = ()) -> None:
        if pending and isinstance(pending[0].doc, PreparedDocument):
            vecs, terms = self._prepared_parts(pending)  # embedded elsewhere (mitsuke.indexer.distributed)
        else:
            if pending and self.embedder is None and self.dim:
                raise MitsukeError(f"index {self.path} was opened without its model (load_model=False): "
                                   "it can delete and compact, not add documents")
            texts = [embedding_input(c.text, p.doc.title, c.headings, self.chunk_config.title_context)
                     for p in pending for c in p.chunks]
            vecs = None
            if self.vectors is not None and self.embedder is None and texts:
                raise MitsukeError(f"index {self.path} was opened without its model (repair): "
                                   "it cannot add documents")
            if self.embedder is not None and texts:
                record_embedding((p.doc.key, p.doc.content_hash) for p in pending)
                vecs = self.embedder.encode_documents(texts, progress=self._token_progress)
            terms = [t for p in pending for t in chunk_terms(p.chunks, p.doc.title)]
        generation = self.generation + 1
        self._lock.ensure_valid()
        changed: dict[int, Block] = {}
        with self.store.begin() as conn:
            first_row = self.store.vector_rows(conn)
            if vecs is not None:
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
                doc_id = self.store.insert_document(conn, {
                    "key": doc.key, "content_hash": doc.content_hash, "title": doc.title, "source": doc.source,
                    "source_type": doc.source_type, "encoding": doc.encoding, "meta": doc.metadata,
                    "n_chars": doc.n_chars if isinstance(doc, PreparedDocument) else len(doc.text),
                    "generation": generation, "page_starts": list(doc.page_starts) or None,
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

    def _prepared_parts(self, pending: list[_Pending]) -> tuple[np.ndarray | None, list[str]]:
        """Vectors (float32 of the float16 that travelled) and term strings of prepared documents."""
        terms = [t for p in pending for t in p.doc.terms]
        if self.vectors is None or not any(p.chunks for p in pending):
            return None, terms
        parts = []
        for p in pending:
            v = p.doc.vectors
            if v is None or v.shape != (len(p.chunks), self.dim):
                raise MitsukeError(f"document {p.doc.key!r} came back with vectors of shape "
                                   f"{None if v is None else v.shape}, expected ({len(p.chunks)}, {self.dim}): "
                                   "were the workers given this index's model?")
            parts.append(v)
        return np.concatenate(parts).astype(np.float32), terms

    def _embed_chunks(self, chunk_ids) -> np.ndarray | None:
        """Vectors of stored chunks, embedded again from their stored text (lost vectors)."""
        if self.embedder is None:
            return None
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

    def rebuild_ann(self) -> None:
        """Rebuild ``ann.faiss`` from the stored vectors and save it (it is derived data)."""
        if self.vectors is None:
            return
        with self.store.begin() as conn:
            params = self.manifest.ann_params(self.store.counts(conn)["chunks"])
            self.ann = rebuild_ann(self.store, conn, self.vectors, params)
        self._save_ann()

    def _token_progress(self, n_tokens: int) -> None:
        if self.on_progress:
            self.on_progress("tokens", n_tokens)

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
        target = self.vectors.write_compacted(old_rows, epoch)
        sums = file_blocks(target, self.vectors.row_bytes, len(ids))
        fault_point("compact_written")
        self.vectors.retire(epoch - 1)
        self._lock.ensure_valid()
        with self.store.begin() as conn:
            self.store.set_block_checksums(conn, sums, replace_all=True)
            self.store.renumber_vectors(conn, ids, np.arange(len(ids)))
            self.store.set_state(conn, "vector_rows", len(ids))
            self.store.set_state(conn, "vectors_epoch", epoch)
            self.store.prune_deleted(conn, self.generation)
            fault_point("compact_before_commit")
        fault_point("compact_committed")
        self._sums = sums
        self.vectors.install(epoch)
        self.vectors.expect(self._sums)
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
        state = self.manifest.ann
        if state is None or not needs_tuning(state.tuning, self.ann, self.manifest.ann_config.recall_target):
            return
        with self.store.begin() as conn:
            live = self.store.live_vectors(conn)
        ids = np.array([c for c, _ in live], dtype=np.int64)
        rows = np.array([r for _, r in live], dtype=np.int64)
        tuned = tune_ann(self.ann, self.vectors, ids, rows, target=self.manifest.ann_config.recall_target)
        if tuned is not None:
            self.manifest = replace(self.manifest, ann=replace(state, tuning=tuned))  # close() writes it next

    def _write_manifest(self) -> None:
        with self.store.begin() as conn:
            counts = self.store.counts(conn)
        self.manifest = replace(self.manifest, generation=self.generation, counts=Counts(**counts)).write(self.path)


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


def record_embedding(docs: Iterable[tuple[str, str]]) -> None:
    """Test hook: ``MITSUKE_TEST_EMBED_LOG=FILE`` appends ``key<TAB>hash`` per document about to be embedded.

    The crash tests use it to prove that no committed document is embedded again
    (the Ray workers call it too, before they embed).
    """
    target = os.environ.get("MITSUKE_TEST_EMBED_LOG")
    if not target:
        return
    with open(target, "a", encoding="utf-8") as fh:
        fh.writelines(f"{key}\t{digest}\n" for key, digest in docs)
        fh.flush()
        os.fsync(fh.fileno())
