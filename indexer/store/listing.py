"""Documents as a reader browses them: a page of documents by key, their count, one document's chunks.

A mixin of ``SqlStore`` (dialect-neutral SQLAlchemy Core on ``documents`` and
``chunks``); ``mitsuke serve`` lists and shows documents through it.
"""
from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.sql.elements import ColumnElement

from mitsuke.indexer.store.schema import ChunkRow, chunks, documents

__all__ = ["ListingMixin"]

# The fields of a document summary, in the order ``_document_info`` reads them.
_DOC_COLUMNS = (documents.c.key, documents.c.title, documents.c.source, documents.c.source_type,
                documents.c.n_chars, documents.c.meta, documents.c.generation)


def _prefix(key: ColumnElement[Any], prefix: str) -> ColumnElement[bool]:
    # substr() rather than LIKE: no wildcard in a user's prefix can widen the match.
    return func.substr(key, 1, len(prefix)) == prefix


def _document_info(r: Any, n_chunks: int) -> dict[str, Any]:
    return {"doc_key": r[0], "title": r[1], "source": r[2], "source_type": r[3], "n_chars": int(r[4]),
            "metadata": r[5] if isinstance(r[5], dict) else json.loads(r[5] or "{}"),
            "generation": int(r[6]), "chunks": int(n_chunks)}


class ListingMixin:
    """Document listing of a store (see ``SqlStore``; ``chunk_rows`` and ``page_starts`` come from it)."""

    def list_documents(self, conn: Connection, *, offset: int = 0, limit: int = 100,
                       prefix: str | None = None) -> list[dict[str, Any]]:
        """A page of documents by key: doc_key, title, source, source_type, n_chars, metadata, generation, chunks."""
        n_chunks = (select(func.count()).select_from(chunks).where(chunks.c.doc_id == documents.c.id)
                    .scalar_subquery())
        q = select(*_DOC_COLUMNS, n_chunks)
        if prefix:
            q = q.where(_prefix(documents.c.key, prefix))
        q = q.order_by(documents.c.key).offset(int(offset)).limit(int(limit))
        return [_document_info(r, r[7]) for r in conn.execute(q)]

    def count_documents(self, conn: Connection, prefix: str | None = None) -> int:
        """Documents whose key starts with ``prefix`` (all without one)."""
        q = select(func.count()).select_from(documents)
        if prefix:
            q = q.where(_prefix(documents.c.key, prefix))
        return int(conn.execute(q).scalar() or 0)

    def document_chunks(self, conn: Connection, key: str) -> tuple[dict[str, Any], list[ChunkRow]] | None:
        """One document (as ``list_documents`` describes it, plus ``page_starts``) and its chunks in order.

        ``None`` if there is no document ``key``; ``page_starts`` is None for an unpaged document.
        """
        r = conn.execute(select(documents.c.id, *_DOC_COLUMNS).where(documents.c.key == key)).one_or_none()
        if r is None:
            return None
        doc_id = int(r[0])
        ids = [int(i) for (i,) in conn.execute(
            select(chunks.c.id).where(chunks.c.doc_id == doc_id).order_by(chunks.c.chunk_index))]
        rows = self.chunk_rows(conn, ids)  # type: ignore[attr-defined]
        starts = self.page_starts(conn, [doc_id]).get(doc_id)  # type: ignore[attr-defined]
        info = {**_document_info(r[1:], len(ids)), "page_starts": list(starts) if starts else None}
        return info, [rows[i] for i in ids if i in rows]
