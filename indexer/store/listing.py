"""Documents one by one (``mitsuke docs list|show|delete|export``).

A mixin of ``SqlStore``: dialect-neutral SQLAlchemy Core over ``documents``
and ``chunks``; the key glob is the dialect's ``_glob``.
"""
from __future__ import annotations

import json

from sqlalchemy import Connection, func, select

from mitsuke.indexer.store.schema import DocumentRow, chunks, documents

__all__ = ["ListingMixin"]


class ListingMixin:
    """Document listing of a store (see ``SqlStore``)."""

    def documents(self, conn: Connection, key_glob: str | None = None) -> list[DocumentRow]:
        """Every document (or those whose key matches the glob ``key_glob``), by key, with its chunk count."""
        n = select(func.count()).select_from(chunks).where(chunks.c.doc_id == documents.c.id).scalar_subquery()
        q = select(documents.c.id, documents.c.key, documents.c.title, documents.c.source, documents.c.source_type,
                   documents.c.encoding, documents.c.meta, documents.c.n_chars, n).order_by(documents.c.key)
        if key_glob is not None:
            q = q.where(self._glob(documents.c.key, key_glob))  # type: ignore[attr-defined]
        return [DocumentRow(id=int(r[0]), key=r[1], title=r[2], source=r[3], source_type=r[4], encoding=r[5],
                            metadata=r[6] if isinstance(r[6], dict) else json.loads(r[6] or "{}"),
                            n_chars=int(r[7]), chunks=int(r[8])) for r in conn.execute(q)]

    def document_chunk_ids(self, conn: Connection, doc_id: int) -> list[int]:
        """Chunk ids of one document in chunk order (``chunk_rows`` gives their content)."""
        q = select(chunks.c.id).where(chunks.c.doc_id == doc_id).order_by(chunks.c.chunk_index)
        return [int(r[0]) for r in conn.execute(q)]
