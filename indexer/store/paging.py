"""Pages of paged documents (PDF): page start offsets stored with a document, pages of a chunk.

A mixin of ``SqlStore``: dialect-neutral SQLAlchemy Core on the ``documents``
column ``page_starts`` (migration 2; ``indexer.pages`` turns offsets into pages).
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace

from sqlalchemy import Connection, bindparam, inspect, select

from mitsuke.indexer.pages import pages_of
from mitsuke.indexer.store.schema import ChunkRow, batches, chunks, documents

__all__ = ["PagingMixin"]

# Built once (on every search's path): an expanding IN list of document ids.
_PAGE_STARTS = select(documents.c.id, documents.c.page_starts).where(
    documents.c.id.in_(bindparam("ids", expanding=True)), documents.c.page_starts.is_not(None))


class PagingMixin:
    """Page lookups of a store (see ``SqlStore``)."""

    _page_column = False

    def with_pages(self, conn: Connection, rows: dict[int, ChunkRow]) -> dict[int, ChunkRow]:
        """``rows`` with ``pages`` set on the chunks of paged documents."""
        paged = self.page_starts(conn, {r.doc_id for r in rows.values()})
        return {cid: replace(r, pages=pages_of(paged[r.doc_id], r.char_start, r.char_end)) if r.doc_id in paged else r
                for cid, r in rows.items()}

    def page_starts(self, conn: Connection, doc_ids: Iterable[int]) -> dict[int, tuple[int, ...]]:
        """Page start offsets of the paged documents among ``doc_ids`` (see ``indexer.pages``)."""
        if not self._has_page_starts(conn):
            return {}  # an index made before migration 2, opened read-only
        out: dict[int, tuple[int, ...]] = {}
        for part in batches(sorted({int(i) for i in doc_ids})):
            for doc_id, starts in conn.execute(_PAGE_STARTS, {"ids": list(part)}):
                starts = json.loads(starts) if isinstance(starts, str) else starts
                if starts:
                    out[int(doc_id)] = tuple(int(s) for s in starts)
        return out

    def page_starts_of_chunks(self, conn: Connection, chunk_ids: Iterable[int]) -> dict[str, tuple[int, ...]]:
        """Page start offsets by document key, for the paged documents the given chunks belong to."""
        doc_ids: dict[int, str] = {}
        for part in batches(sorted({int(i) for i in chunk_ids})):
            q = (select(documents.c.id, documents.c.key).join(chunks, chunks.c.doc_id == documents.c.id)
                 .where(chunks.c.id.in_(part)))
            doc_ids.update({int(d): k for d, k in conn.execute(q)})
        return {doc_ids[d]: starts for d, starts in self.page_starts(conn, doc_ids).items()}

    def _has_page_starts(self, conn: Connection) -> bool:
        # Only a positive answer is kept: a writer may migrate the file while a reader has it open.
        if not getattr(self, "_page_column", False):
            self._page_column = self._has_column(conn, "documents", "page_starts")
        return self._page_column

    @staticmethod
    def _has_column(conn: Connection, table: str, column: str) -> bool:
        return any(c["name"] == column for c in inspect(conn).get_columns(table))
