"""What every index writer shares: loading, chunking, skipping unchanged documents, batching, embedding.

``IndexBuilder`` (an index directory, ``indexer.builder``) and
``PgIndexBuilder`` (a PostgreSQL index, ``indexer.pg_builder``) are the two
subclasses of :class:`IndexWriter`; each supplies ``_commit`` (how a batch
becomes durable), ``delete`` and ``close``. :func:`settle_open` is the part of
opening both share: which model, chunking and ANN settings the writer uses.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from mitsuke.indexer.chunking import Chunk, Chunker
from mitsuke.indexer.config import DEFAULT_MODEL, AnnConfig, ChunkConfig, EmbedConfig
from mitsuke.indexer.documents import Document, LoadFailure, document_from_mapping
from mitsuke.indexer.errors import IndexFormatError, MitsukeError
from mitsuke.indexer.japanese import LEXICAL_ANALYSIS_VERSION
from mitsuke.indexer.layout import MANIFEST_FILE, Manifest
from mitsuke.indexer.loaders import FormatOptions, iter_documents
from mitsuke.indexer.prepared import PreparedDocument, chunk_terms, embedding_input
from mitsuke.indexer.protocol import check_embedder, model_info

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from mitsuke.indexer.embedding import Embedder
    from mitsuke.indexer.location import PgLocation

__all__ = ["IndexWriter", "IndexSummary", "embedding_input", "settle_open", "record_embedding"]

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


class IndexWriter:
    """The shared half of a writer; subclasses set the attributes below and supply ``_commit``.

    Attributes: ``path`` (how messages name the index), ``embedder``, ``dim``,
    ``chunker``, ``chunk_config``, ``summary``, ``on_progress``,
    ``batch_docs``, ``batch_chunks`` and the run's ``_pending``/
    ``_pending_chunks``/``_seen``/``_known`` (key -> (doc id, hash)).
    """

    path: Path | PgLocation
    embedder: Embedder | None
    dim: int | None
    manifest: Manifest
    chunker: Chunker
    chunk_config: ChunkConfig
    summary: IndexSummary
    on_progress: Callable[[str, int], None] | None
    batch_docs: int
    batch_chunks: int
    _pending: list[_Pending]
    _pending_chunks: int
    _seen: set[str]
    _known: dict[str, tuple[int, str]]
    _started: float
    _closed: bool

    def _start_run(self, batch_docs: int, batch_chunks: int) -> None:
        """The run state every writer starts with: batch sizes, summary, pending batch, keys seen, clock."""
        self.batch_docs = batch_docs
        self.batch_chunks = batch_chunks
        self.summary = IndexSummary()
        self.on_progress = None
        self._pending = []
        self._pending_chunks = 0
        self._seen = set()
        self._started = time.monotonic()
        self._closed = False

    def _commit(self, pending: list[_Pending], delete_doc_ids: Sequence[int] = ()) -> None:
        raise NotImplementedError

    def delete(self, keys: Iterable[str]) -> int:
        raise NotImplementedError

    def close(self, commit: bool = True) -> None:
        raise NotImplementedError

    def __enter__(self) -> "IndexWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(commit=exc_type is None or issubclass(exc_type, KeyboardInterrupt))

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

    def _embed_batch(self, pending: list[_Pending]) -> tuple[np.ndarray | None, list[str]]:
        """The batch's vectors (None without a model) and space-joined lexical terms, chunk by chunk.

        Done before any transaction: the slow part holds no lock.
        """
        if pending and isinstance(pending[0].doc, PreparedDocument):
            return self._prepared_parts(pending)  # embedded elsewhere (mitsuke.indexer.distributed)
        if pending and self.embedder is None and self.dim:
            raise MitsukeError(f"index {self.path} was opened without its model (load_model=False): "
                               "it can delete and compact, not add documents")
        texts = [embedding_input(c.text, p.doc.title, c.headings, self.chunk_config.title_context)
                 for p in pending for c in p.chunks]
        vecs = None
        if self.embedder is not None and texts:
            record_embedding((p.doc.key, p.doc.content_hash) for p in pending)
            vecs = self.embedder.encode_documents(texts, progress=self._token_progress)
        terms = [t for p in pending for t in chunk_terms(p.chunks, p.doc.title)]
        return vecs, terms

    def _prepared_parts(self, pending: list[_Pending]) -> tuple[np.ndarray | None, list[str]]:
        """Vectors (float32 of the float16 that travelled) and term strings of prepared documents."""
        # A batch is of one kind: add_documents and add_prepared each flush before they return.
        docs = [p.doc for p in pending]
        assert all(isinstance(d, PreparedDocument) for d in docs)
        prepared = cast("list[PreparedDocument]", docs)
        terms = [t for d in prepared for t in d.terms]
        if not self.dim or not any(p.chunks for p in pending):
            return None, terms
        parts = []
        for p, doc in zip(pending, prepared):
            v = doc.vectors
            if v is None or v.shape != (len(p.chunks), self.dim):
                raise MitsukeError(f"document {doc.key!r} came back with vectors of shape "
                                   f"{None if v is None else v.shape}, expected ({len(p.chunks)}, {self.dim}): "
                                   "were the workers given this index's model?")
            parts.append(v)
        return np.concatenate(parts).astype(np.float32), terms

    def _token_progress(self, n_tokens: int) -> None:
        if self.on_progress:
            self.on_progress("tokens", n_tokens)


def document_row(doc: Document | PreparedDocument, generation: int | None = None) -> dict[str, Any]:
    """The ``documents`` row of ``doc`` (``generation`` added when given)."""
    row = {"key": doc.key, "content_hash": doc.content_hash, "title": doc.title, "source": doc.source,
           "source_type": doc.source_type, "encoding": doc.encoding, "meta": doc.metadata,
           "n_chars": doc.n_chars if isinstance(doc, PreparedDocument) else len(doc.text),
           "page_starts": list(doc.page_starts) or None}
    if generation is not None:
        row["generation"] = generation
    return row


def settle_open(where: Any, manifest: Manifest | None, model: str | None, *, chunking: ChunkConfig | None,
                ann: AnnConfig | None, embed: EmbedConfig | None, embedder: Embedder | None,
                load_model: bool = True, recall_target: float | None = None
                ) -> tuple[Manifest, Embedder | None, bool]:
    """The manifest and embedder a writer of the index ``where`` works with; the bool: a new index.

    Refuses another model, lexical analysis or chunking than an existing
    index's; loads the model unless lexical-only, ``embedder`` is given or
    ``load_model`` is False (an existing index only).
    """
    embed = embed or EmbedConfig()
    wanted = model if model is not None else (manifest.model_name if manifest else DEFAULT_MODEL)
    if embedder is not None:
        check_embedder(embedder)
    if embedder is not None and model is None:
        wanted = embedder.info.name  # a ready embedder names its own model
    lexical_only = str(wanted).lower() == "none"
    if manifest is not None:
        manifest.check_model(where, model=model, embedder=embedder, writing=True)
        if manifest.lexical_analysis_differs:
            raise IndexFormatError(
                f"index {where} holds lexical terms of analysis v{manifest.lexical_analysis}, this mitsuke "
                f"writes v{LEXICAL_ANALYSIS_VERSION}; mixing them breaks BM25: rebuild the index in a new "
                "directory"
            )
        if chunking is not None and manifest.chunking != chunking:
            raise IndexFormatError(
                f"index {where} was built with chunking {asdict(manifest.chunking)}; "
                "changing it needs a new index"
            )
    if not load_model and manifest is None:
        raise IndexFormatError(f"{where} is not a mitsuke index (no {MANIFEST_FILE}); nothing to change")
    if embedder is None and not lexical_only and load_model:
        from mitsuke.indexer.embedding import Embedder

        recorded = manifest.model if manifest else None  # reopen: the recorded directory/revision
        embedder = Embedder.from_pretrained(
            recorded.source() if recorded else wanted, device=embed.device, dtype=embed.dtype,
            max_length=embed.max_length, trust_remote_code=embed.trust_remote_code,
            batch_tokens=embed.batch_tokens, revision=recorded.revision if recorded else None)
        if manifest is not None:
            manifest.check_dim(embedder)
    new = manifest is None
    if manifest is None:
        try:  # a bad budget/overlap pair must fail before the manifest is written
            Chunker(chunking or ChunkConfig(), embedder.count_tokens if embedder else None)
        except ValueError as exc:
            raise MitsukeError(f"chunking settings: {exc}") from None
        manifest = Manifest.new(model_info(embedder) if embedder else None, chunking or ChunkConfig(),
                                ann or AnnConfig())
    elif ann is not None:
        manifest = replace(manifest, ann_config=ann)
    if recall_target is not None:
        try:
            cfg = replace(manifest.ann_config, recall_target=float(recall_target))
        except (TypeError, ValueError) as exc:
            raise MitsukeError(f"--recall-target {recall_target!r}: {exc}") from None
        manifest = replace(manifest, ann_config=cfg)
    return manifest, embedder, new


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
