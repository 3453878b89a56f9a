"""What every index writer shares: loading, chunking, skipping unchanged documents, batching, embedding.

``IndexBuilder`` (an index directory, ``indexer.builder``) and
``PgIndexBuilder`` (a PostgreSQL index, ``indexer.pg_builder``) are the two
subclasses of :class:`IndexWriter`; each supplies ``_commit`` (how a batch
becomes durable), ``delete`` and ``close``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from mitsuke.indexer.chunking import Chunk, Chunker
from mitsuke.indexer.config import DEFAULT_MODEL, AnnConfig, ChunkConfig, EmbedConfig
from mitsuke.indexer.documents import Document, LoadFailure, document_from_mapping
from mitsuke.indexer.errors import IndexFormatError, MitsukeError
from mitsuke.indexer.japanese import LEXICAL_ANALYSIS_VERSION, passage_terms
from mitsuke.indexer.layout import Manifest
from mitsuke.indexer.loaders import FormatOptions, iter_documents

if TYPE_CHECKING:
    from mitsuke.indexer.embedding import Embedder

__all__ = ["IndexWriter", "IndexSummary", "embedding_input", "settle_open"]

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



class IndexWriter:
    """The shared half of a writer; subclasses set the attributes below and supply ``_commit``.

    Attributes: ``embedder``, ``chunker``, ``chunk_config``, ``summary``,
    ``on_progress``, ``batch_docs``, ``batch_chunks`` and the run's
    ``_pending``/``_pending_chunks``/``_seen``/``_known`` (key -> (doc id, hash)).
    """

    def _commit(self, pending: list[_Pending], delete_doc_ids: Any = ()) -> None:
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
            chunks = self.chunker.chunk(doc.text, markdown=doc.has_headings, breaks=doc.page_starts)
        except Exception as exc:  # a chunker bug on one document must not end the run
            log.exception("chunking failed for %s", doc.key)
            self._fail(doc.source or doc.key, f"chunking failed: {type(exc).__name__}: {exc}")
            return
        self._pending.append(_Pending(doc, chunks, known[0] if known else None))
        self._pending_chunks += len(chunks)
        if len(self._pending) >= self.batch_docs or self._pending_chunks >= self.batch_chunks:
            self.flush()

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
        """The vectors (None without a model) and space-joined lexical terms of the batch's chunks, in order."""
        texts = [embedding_input(c.text, p.doc.title, c.headings, self.chunk_config.title_context)
                 for p in pending for c in p.chunks]
        vecs = None
        if self.embedder is not None and texts:
            _record_embedding(pending)
            vecs = self.embedder.encode_documents(texts, progress=self._token_progress)
        terms = [" ".join(passage_terms(c.text, p.doc.title, c.headings)) for p in pending for c in p.chunks]
        return vecs, terms

    def _token_progress(self, n_tokens: int) -> None:
        if self.on_progress:
            self.on_progress("tokens", n_tokens)

def settle_open(where: Any, manifest: Manifest | None, model: str | None, *, chunking: ChunkConfig | None,
                ann: AnnConfig | None, embed: EmbedConfig | None, embedder: Embedder | None
                ) -> tuple[Manifest, Embedder | None, bool]:
    """The manifest and embedder a writer of the index ``where`` works with; the bool: a new index.

    Refuses another model, lexical analysis or chunking than an existing
    index's; loads the model unless lexical-only or ``embedder`` is given.
    """
    embed = embed or EmbedConfig()
    wanted = model if model is not None else (manifest.model_name if manifest else DEFAULT_MODEL)
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
    if embedder is None and not lexical_only:
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
        return Manifest.new(embedder.info if embedder else None, chunking or ChunkConfig(), ann or AnnConfig()), \
            embedder, True
    if ann is not None:
        manifest = replace(manifest, ann_config=ann)
    return manifest, embedder, False

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
