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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mitsuke.indexer.ann import AnnIndex, AnnParams, choose_params
from mitsuke.indexer.chunking import Chunk, Chunker
from mitsuke.indexer.config import DEFAULT_MODEL, AnnConfig, ChunkConfig, EmbedConfig
from mitsuke.indexer.errors import IndexFormatError, MitsukeError, ModelMismatchError
from mitsuke.indexer.japanese import LEXICAL_ANALYSIS_VERSION, passage_terms
from mitsuke.indexer.loaders import Document, LoadFailure, iter_documents
from mitsuke.indexer.manifest import WriterLock, fault_point, read_manifest, write_manifest
from mitsuke.indexer.protocol import check_embedder, model_record
from mitsuke.indexer.recovery import load_ann, rebuild_ann
from mitsuke.indexer.store import MetadataStore
from mitsuke.indexer.vectors import VectorStore

__all__ = ["IndexBuilder", "IndexSummary", "embedding_input"]

log = logging.getLogger("mitsuke")

ANN_FILE = "ann.faiss"
META_FILE = "meta.sqlite"
VECTORS_FILE = "vectors.f16"


@dataclass
class IndexSummary:
    """What one indexing run did (``mitsuke index --json`` prints it)."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    chunks_embedded: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": self.added, "updated": self.updated, "unchanged": self.unchanged,
            "deleted": self.deleted, "failed": list(self.failed),
            "chunks_embedded": self.chunks_embedded, "seconds": round(self.seconds, 3),
        }


def embedding_input(chunk_text: str, title: str, headings: tuple[str, ...], with_context: bool) -> str:
    """What the model sees for a passage: title and heading path as context, then the passage."""
    if not with_context:
        return chunk_text
    context = [h for h in (title, *headings) if h]
    # A heading repeated as the passage's own first line is not worth two copies.
    if context and headings and context[-1] == headings[-1] and chunk_text.lstrip("# ").startswith(headings[-1]):
        context = context[:-1]
    if context and context[0] == title and len(context) > 1 and context[1] == title:
        context = context[1:]
    return (" / ".join(context) + "\n" + chunk_text) if context else chunk_text


@dataclass
class _Pending:
    doc: Document
    chunks: list[Chunk]
    old_doc_id: int | None


class IndexBuilder:
    """Build or update an index directory. Use as a context manager: it commits on exit.

    >>> with IndexBuilder.open("idx", model="none") as b:          # doctest: +SKIP
    ...     b.add_paths(["data/"])
    """

    def __init__(self, path: Path, manifest: dict[str, Any], embedder, lock: WriterLock, *,
                 batch_docs: int = 64, batch_chunks: int = 512, ann_save_seconds: float = 300.0,
                 compact_ratio: float = 0.25, compact_min_rows: int = 1024) -> None:
        self.path = path
        self.manifest = manifest
        self.embedder = embedder
        self._lock = lock
        self.chunk_config = ChunkConfig(**manifest["chunking"])
        self.ann_config = AnnConfig(**manifest["ann_config"])
        self.chunker = Chunker(self.chunk_config, embedder.count_tokens if embedder else None)
        self.store = MetadataStore(path / META_FILE)
        self.dim = int(manifest["model"]["dim"]) if manifest.get("model") else 0
        self.vectors = VectorStore(path / VECTORS_FILE, self.dim) if self.dim else None
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
        with self.store.engine.begin() as conn:
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
        embedder=None,
        **kwargs: Any,
    ) -> "IndexBuilder":
        """Open (or create) the index at ``path`` for writing.

        ``model``: a hub id or local directory, ``"none"`` for a lexical-only
        index, or ``None`` to use the index's own model (the default model for a
        new index). An existing index refuses another model.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        lock = WriterLock(path)
        lock.acquire()
        try:
            manifest = read_manifest(path)
            if manifest is None and (path / META_FILE).exists():
                raise IndexFormatError(f"{path} has {META_FILE} but no manifest.json: not a complete mitsuke index")
            embed = embed or EmbedConfig()
            wanted = model if model is not None else (
                (manifest["model"]["name"] if manifest.get("model") else "none") if manifest else DEFAULT_MODEL)
            if embedder is not None:
                check_embedder(embedder)
            if embedder is not None and model is None:
                wanted = embedder.info.name  # a ready embedder names its own model
            lexical_only = str(wanted).lower() == "none"
            if manifest is not None:
                have = manifest["model"]["name"] if manifest.get("model") else "none"
                if str(have) != str(wanted) or (embedder is not None and manifest.get("model")
                                                and str(embedder.info.name) != str(have)):
                    raise ModelMismatchError(
                        f"index {path} was built with model {have!r}, not {wanted!r}; "
                        "use the same model, or build a new index in another directory"
                    )
                analysis = manifest.get("lexical_analysis", LEXICAL_ANALYSIS_VERSION)
                if analysis != LEXICAL_ANALYSIS_VERSION:
                    raise IndexFormatError(
                        f"index {path} holds lexical terms of analysis v{analysis}, this mitsuke writes "
                        f"v{LEXICAL_ANALYSIS_VERSION}; mixing them breaks BM25: rebuild the index in a new directory"
                    )
                if chunking is not None and ChunkConfig(**manifest["chunking"]) != chunking:
                    raise IndexFormatError(
                        f"index {path} was built with chunking {manifest['chunking']}; "
                        "changing it needs a new index"
                    )
            if embedder is None and not lexical_only:
                from mitsuke.indexer.embedding import Embedder, ModelInfo

                recorded = manifest.get("model") if manifest else None  # reopen: the recorded directory/revision
                embedder = Embedder.from_pretrained(
                    ModelInfo.source(recorded) if recorded else wanted, device=embed.device, dtype=embed.dtype,
                    max_length=embed.max_length, trust_remote_code=embed.trust_remote_code,
                    batch_tokens=embed.batch_tokens, revision=recorded.get("revision") if recorded else None)
            if manifest is None:
                try:  # a bad budget/overlap pair must fail before the manifest is written
                    Chunker(chunking or ChunkConfig(), embedder.count_tokens if embedder else None)
                except ValueError as exc:
                    raise MitsukeError(f"chunking settings: {exc}") from None
                manifest = {
                    "created_at": time.time(),
                    "model": model_record(embedder) if embedder else None,
                    "chunking": (chunking or ChunkConfig()).__dict__.copy(),
                    "ann_config": (ann or AnnConfig()).__dict__.copy(),
                    # FTS5 terms are only comparable with queries analysed the same way.
                    "lexical_analysis": LEXICAL_ANALYSIS_VERSION,
                    "ann": None,
                    "generation": 0,
                    "counts": {"documents": 0, "chunks": 0},
                }
                # Written before meta.sqlite exists: a kill during the first
                # run must leave an index that opens (invariant 6).
                write_manifest(path, manifest)
            elif ann is not None:
                manifest["ann_config"] = ann.__dict__.copy()
            return cls(path, manifest, embedder, lock, **kwargs)
        except BaseException:
            lock.release()
            raise

    def _open_ann(self) -> None:
        info = self.manifest.get("ann")
        if not info:
            return
        params = AnnParams.from_dict(info["params"])
        with self.store.engine.begin() as conn:
            self.ann, changed = load_ann(self.path / ANN_FILE, self.store, conn, self.vectors, params,
                                         int(info.get("generation", 0)), self.generation)
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
            self._write_manifest()
        finally:
            self._closed = True
            self.summary.seconds = time.monotonic() - self._started
            self.store.close()
            self._lock.release()

    # ------------------------------------------------------------------ adding
    def add_paths(self, paths: Iterable[str], *, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
                  encoding: str | None = None, stdin=None) -> IndexSummary:
        """Index files, directories (recursive) and ``-`` (JSONL on stdin)."""
        return self.add_documents(iter_documents(paths, include=include, exclude=exclude, encoding=encoding,
                                                 stdin=stdin))

    def add_documents(self, docs: Iterable[Document | LoadFailure | dict]) -> IndexSummary:
        """Add or update documents; unchanged ones (same key and content hash) are skipped."""
        for item in docs:
            if isinstance(item, dict):
                item = _document_from_dict(item)
            if isinstance(item, LoadFailure):
                self._fail(item.path, item.reason)
                continue
            self._add_one(item)
        self.flush()
        return self.summary

    def _fail(self, path: str, reason: str) -> None:
        log.warning("skipped %s: %s", path, reason)
        self.summary.failed.append({"path": path, "reason": reason})
        if self.on_progress:
            self.on_progress("failed", 1)

    def _add_one(self, doc: Document) -> None:
        if doc.key in self._seen:
            self._fail(doc.source or doc.key, f"duplicate document key {doc.key!r} in this run; kept the first")
            return
        self._seen.add(doc.key)
        known = self._known.get(doc.key)
        digest = doc.content_hash
        if known and known[1] == digest:
            self.summary.unchanged += 1
            if self.on_progress:
                self.on_progress("unchanged", 1)
            return
        try:
            chunks = self.chunker.chunk(doc.text, markdown=doc.source_type == "markdown")
        except Exception as exc:  # a chunker bug on one document must not end the run
            log.exception("chunking failed for %s", doc.key)
            self._fail(doc.source or doc.key, f"chunking failed: {type(exc).__name__}: {exc}")
            return
        self._pending.append(_Pending(doc, chunks, known[0] if known else None))
        self._pending_chunks += len(chunks)
        if len(self._pending) >= self.batch_docs or self._pending_chunks >= self.batch_chunks:
            self.flush()

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
        texts = [embedding_input(c.text, p.doc.title, c.headings, self.chunk_config.title_context)
                 for p in pending for c in p.chunks]
        vecs = None
        if self.embedder is not None and texts:
            _record_embedding(pending)
            vecs = self.embedder.encode_documents(texts, progress=self._token_progress)
        terms = [" ".join(passage_terms(c.text, p.doc.title, c.headings)) for p in pending for c in p.chunks]
        generation = self.generation + 1
        with self.store.engine.begin() as conn:
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
        with self.store.engine.begin() as conn:
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
        with self.store.engine.begin() as conn:
            live = self.store.live_vectors(conn, by_row=True)
            epoch = self.store.vectors_epoch(conn) + 1
            before = self.store.vector_rows(conn)
        ids = np.array([c for c, _ in live], dtype=np.int64)
        old_rows = np.array([r for _, r in live], dtype=np.int64)
        log.info("compacting %s: %d live of %d rows (epoch %d)", VECTORS_FILE, len(live), before, epoch)
        self.vectors.write_compacted(old_rows, epoch)
        fault_point("compact_written")
        self.vectors.retire(epoch - 1)
        with self.store.engine.begin() as conn:
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
            with self.store.engine.begin() as conn:
                self.ann = rebuild_ann(self.store, conn, self.vectors, self.ann.params, trained=self.ann)
            self._save_ann()

    # ------------------------------------------------------------------ ANN choice
    def _maybe_switch_ann(self) -> None:
        """Pick (or re-pick) the ANN kind now that the number of vectors is known."""
        with self.store.engine.begin() as conn:
            n = self.store.counts(conn)["chunks"]
            wanted = choose_params(n, self.dim, self.ann_config.kind, self.ann_config.flat_threshold,
                                   nlist=self.ann_config.nlist)
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
        self.ann.save(self.path / ANN_FILE)
        fault_point("ann_saved")  # ann.faiss is newer than the manifest says: caught up idempotently
        self.manifest["ann"] = {"params": self.ann.params.to_dict(), "generation": self.generation}
        self._write_manifest()
        self._ann_dirty = False
        self._last_ann_save = time.monotonic()

    def _write_manifest(self) -> None:
        with self.store.engine.begin() as conn:
            counts = self.store.counts(conn)
        self.manifest["generation"] = self.generation
        self.manifest["counts"] = counts
        write_manifest(self.path, self.manifest)


def _remove_temp_files(path: Path) -> None:
    """Temp files of an atomic replace that a killed writer never renamed."""
    for tmp in path.glob(".*.tmp"):
        log.info("removing %s left by an interrupted write", tmp.name)
        tmp.unlink(missing_ok=True)


def _record_embedding(pending: list[_Pending]) -> None:
    """Test hook: ``MITSUKE_TEST_EMBED_LOG=FILE`` appends ``key<TAB>hash`` per document about to be embedded.

    The crash tests use it to prove that no committed document is embedded again.
    """
    target = os.environ.get("MITSUKE_TEST_EMBED_LOG")
    if not target:
        return
    with open(target, "a", encoding="utf-8") as fh:
        fh.writelines(f"{p.doc.key}\t{p.doc.content_hash}\n" for p in pending)
        fh.flush()
        os.fsync(fh.fileno())


def _document_from_dict(obj: dict[str, Any]) -> Document | LoadFailure:
    obj = dict(obj)
    text = obj.pop("text", None)
    key = obj.pop("id", None)
    alt = obj.pop("doc_id", None)
    key = key if key is not None else alt
    if not isinstance(text, str) or not text.strip():
        return LoadFailure(str(key), "missing or empty 'text'")
    if key is None:
        return LoadFailure("<dict>", "a document needs an 'id' or 'doc_id'")
    title = str(obj.pop("title", "") or "")
    source_type = str(obj.pop("source_type", "jsonl"))
    return Document(key=str(key), text=text, title=title, source=str(obj.pop("source", "")),
                    source_type=source_type, metadata=obj)
