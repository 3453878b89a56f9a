"""The store's part of index integrity: block checksums of ``vectors.f16`` and vectors that were lost.

Mixed into ``SqlStore``; dialect-neutral SQLAlchemy Core (the engine's own
consistency check, ``quick_check``, is a dialect hook in ``hooks``).
"""
from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, func, inspect, select

from mitsuke.indexer.checksums import Block
from mitsuke.indexer.store.schema import batches, chunks, documents, vector_blocks

__all__ = ["IntegrityMixin", "LOST_PREFIX"]

# Marks a document whose vectors were lost: its content hash no longer matches
# any input, so the next ``mitsuke index`` of it embeds it again.
LOST_PREFIX = "lost:"


class IntegrityMixin:
    """Checksums and lost-vector bookkeeping, mixed into ``SqlStore``."""

    def block_checksums(self, conn: Connection) -> dict[int, Block]:
        """``block -> Block(rows, crc)`` of ``vectors.f16`` (empty for an index written before checksums)."""
        if not self._has_table(conn, "vector_blocks"):
            return {}
        return {int(b): Block(int(n), int(c)) for b, n, c in conn.execute(select(
            vector_blocks.c.block, vector_blocks.c.rows, vector_blocks.c.crc))}

    def set_block_checksums(self, conn: Connection, blocks: dict[int, Block], *, replace_all: bool = False) -> None:
        """Store the checksums of changed blocks (``replace_all``: of a renumbered file, the old ones go)."""
        if replace_all:
            conn.execute(vector_blocks.delete())
        elif blocks:
            for part in batches(sorted(blocks)):
                conn.execute(vector_blocks.delete().where(vector_blocks.c.block.in_(part)))
        if blocks:
            conn.execute(vector_blocks.insert(), [{"block": b, "rows": v.rows, "crc": v.crc}
                                                  for b, v in sorted(blocks.items())])

    @staticmethod
    def _has_table(conn: Connection, name: str) -> bool:
        """Whether table ``name`` exists (a reader may open an index its writer never migrated)."""
        return bool(inspect(conn).has_table(name))

    def chunks_without_vectors(self, conn: Connection) -> list[tuple[int, str, str, tuple[str, ...]]]:
        """(chunk id, text, document title, headings) of the chunks that have no vector row."""
        q = (select(chunks.c.id, chunks.c.text, documents.c.title, chunks.c.headings)
             .join(documents, documents.c.id == chunks.c.doc_id)
             .where(chunks.c.vector_row.is_(None)).order_by(chunks.c.id))
        return [(int(i), t, title, tuple(h or ())) for i, t, title, h in conn.execute(q)]

    def mark_vectors_lost(self, conn: Connection, chunk_ids: Sequence[int]) -> int:
        """Chunks whose vectors were lost: no vector row, and their documents no longer "unchanged".

        Returns the number of documents marked.
        """
        doc_ids: set[int] = set()
        for part in batches(sorted({int(i) for i in chunk_ids})):
            doc_ids.update(int(r[0]) for r in conn.execute(select(chunks.c.doc_id).where(chunks.c.id.in_(part))))
            conn.execute(chunks.update().where(chunks.c.id.in_(part)).values(vector_row=None))
        for part in batches(sorted(doc_ids)):
            conn.execute(documents.update().where(documents.c.id.in_(part))
                         .where(documents.c.content_hash.not_like(LOST_PREFIX + "%"))
                         .values(content_hash=LOST_PREFIX + documents.c.content_hash))
        return len(doc_ids)

    def unmark_documents(self, conn: Connection) -> int:
        """Documents marked lost whose every chunk has a vector again get their content hash back."""
        lost = conn.execute(select(documents.c.id, documents.c.content_hash)
                            .where(documents.c.content_hash.like(LOST_PREFIX + "%"))).all()
        fixed = 0
        for doc_id, h in lost:
            missing = conn.execute(select(func.count()).select_from(chunks).where(
                chunks.c.doc_id == doc_id, chunks.c.vector_row.is_(None))).scalar()
            if not missing:
                conn.execute(documents.update().where(documents.c.id == doc_id)
                             .values(content_hash=h[len(LOST_PREFIX):]))
                fixed += 1
        return fixed
