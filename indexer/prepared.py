"""Documents prepared away from the builder: chunked, analysed and (later) embedded elsewhere.

The distributed indexer (:mod:`mitsuke.indexer.distributed`) loads, chunks and
analyses documents on a cluster's CPUs and embeds them on its GPUs; what comes
back to the driver is a :class:`PreparedDocument` per document -- offsets,
headings, chunk texts, lexical terms and float16 vectors, not the document's
own text -- which :meth:`IndexBuilder.add_prepared` commits through the same
write path as a local run. :func:`prepare_document` is the one place that turns
a ``Document`` into one, using the very functions the builder uses, so both
paths build the same index.

>>> from mitsuke.indexer.chunking import Chunker
>>> p, texts = prepare_document(Document("a", "東京は日本の首都である。"), Chunker(), title_context=True)
>>> [c.text for c in p.chunks] == texts
True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mitsuke.indexer.chunking import Chunk, Chunker
from mitsuke.indexer.documents import Document
from mitsuke.indexer.japanese import passage_terms

__all__ = ["PreparedDocument", "prepare_document", "embedding_input", "chunk_terms"]


@dataclass
class PreparedDocument:
    """A document ready to commit: its row, its chunks, their lexical terms and (optionally) vectors.

    ``chunks is None`` means "not prepared": the document was found unchanged
    against the index where it was loaded, and only its key and hash travel.
    """

    key: str
    content_hash: str
    title: str = ""
    source: str = ""
    source_type: str = "text"
    encoding: str = "utf-8"
    metadata: dict[str, Any] = field(default_factory=dict)
    n_chars: int = 0
    chunks: list[Chunk] | None = None
    terms: list[str] = field(default_factory=list)  # one space-joined term string per chunk
    vectors: np.ndarray | None = None  # float16 (len(chunks), dim), unit length
    page_starts: tuple[int, ...] = ()  # paged documents (PDF): offset where each page begins


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


def chunk_terms(chunks: list[Chunk], title: str) -> list[str]:
    """The FTS5 term string of each chunk (what the builder stores for BM25)."""
    return [" ".join(passage_terms(c.text, title, c.headings)) for c in chunks]


def prepare_document(doc: Document, chunker: Chunker, *, title_context: bool) -> tuple[PreparedDocument, list[str]]:
    """Chunk and analyse ``doc``; returns the prepared document and the embedding input of each chunk.

    A chunker error propagates: the caller turns it into a ``LoadFailure`` as the builder does.
    """
    chunks = chunker.chunk(doc.text, markdown=doc.has_headings, breaks=doc.page_starts)
    prepared = PreparedDocument(
        key=doc.key, content_hash=doc.content_hash, title=doc.title, source=doc.source,
        source_type=doc.source_type, encoding=doc.encoding, metadata=doc.metadata, n_chars=len(doc.text),
        chunks=chunks, terms=chunk_terms(chunks, doc.title), page_starts=tuple(doc.page_starts))
    texts = [embedding_input(c.text, doc.title, c.headings, title_context) for c in chunks]
    return prepared, texts
