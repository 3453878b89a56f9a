"""SQLite metadata through SQLAlchemy: documents, chunks, FTS5 terms, state.

SQLite is the source of truth (DESIGN.md invariant 1). The schema evolves by
numbered migrations recorded in ``schema_version``.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON, Column, Connection, Engine, ForeignKey, Index, Integer, MetaData, String, Table, Text,
    create_engine, event, func, select, text,
)

__all__ = ["MetadataStore", "ChunkRow", "metadata", "documents", "chunks", "state", "deleted_chunks"]

metadata = MetaData()

documents = Table(
    "documents", metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String, nullable=False, unique=True),
    Column("content_hash", String, nullable=False),
    Column("title", String, nullable=False, default=""),
    Column("source", String, nullable=False, default=""),
    Column("source_type", String, nullable=False, default="text"),
    Column("encoding", String, nullable=False, default="utf-8"),
    Column("meta", JSON, nullable=False, default=dict),
    Column("n_chars", Integer, nullable=False),
    Column("generation", Integer, nullable=False),
)

# AUTOINCREMENT: ids are never reused, even after the newest rows are deleted
# (invariant 3: chunk ids are the FAISS ids).
chunks = Table(
    "chunks", metadata,
    Column("id", Integer, primary_key=True),
    Column("doc_id", Integer, ForeignKey("documents.id", ondelete="CASCADE"), nullable=False),
    Column("chunk_index", Integer, nullable=False),
    Column("char_start", Integer, nullable=False),
    Column("char_end", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("token_count", Integer, nullable=False),
    Column("headings", JSON, nullable=False, default=list),
    Column("vector_row", Integer, nullable=True),
    Column("generation", Integer, nullable=False),
    Index("ix_chunks_doc", "doc_id", "chunk_index"),
    Index("ix_chunks_generation", "generation"),
    sqlite_autoincrement=True,
)

# Chunk ids deleted at each generation, so a stale ANN index can be caught up.
deleted_chunks = Table(
    "deleted_chunks", metadata,
    Column("chunk_id", Integer, primary_key=True),
    Column("generation", Integer, nullable=False),
    Index("ix_deleted_generation", "generation"),
)

state = Table(
    "state", metadata,
    Column("key", String, primary_key=True),
    Column("value", String, nullable=False),
)


def _m001_create_tables(conn: Connection) -> None:
    metadata.create_all(conn)
    # Space-joined MeCab terms (see indexer.japanese.lexical_terms); rowid = chunk id.
    conn.execute(text("CREATE VIRTUAL TABLE IF NOT EXISTS chunk_terms USING fts5(terms, tokenize='unicode61 remove_diacritics 0')"))


MIGRATIONS = [_m001_create_tables]
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class ChunkRow:
    id: int
    doc_id: int
    chunk_index: int
    char_start: int
    char_end: int
    text: str
    token_count: int
    headings: tuple[str, ...]
    vector_row: int | None
    doc_key: str
    title: str
    source: str
    source_type: str
    metadata: dict[str, Any]


def _on_connect(dbapi_conn, _record) -> None:
    # pysqlite issues BEGIN only before DML, so the SELECTs of one search
    # would each see a different commit. Take transaction control away from
    # it; SQLAlchemy's "begin" event (below) opens a real transaction, and
    # in WAL mode that is one consistent snapshot for the whole block.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


class MetadataStore:
    """The SQLite file of one index."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        # Readers open read-write but never write: a WAL database needs its -shm
        # file, which a mode=ro connection cannot create.
        url = f"sqlite:///{self.path}"
        self.engine: Engine = create_engine(url, future=True)
        event.listen(self.engine, "connect", _on_connect)
        # The writer takes the write lock up front (IMMEDIATE): a deferred
        # transaction that reads first and writes later could find its
        # snapshot outdated. Readers' deferred BEGIN pins a snapshot at the
        # first SELECT.
        begin_sql = "BEGIN" if readonly else "BEGIN IMMEDIATE"
        event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql(begin_sql))
        if not readonly:
            with self.engine.connect() as conn:
                # journal_mode cannot change inside a transaction: run it on the raw connection.
                conn.connection.dbapi_connection.execute("PRAGMA journal_mode=WAL")
            with self.engine.begin() as conn:
                self._migrate(conn)

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ schema
    def _migrate(self, conn: Connection) -> None:
        conn.execute(text("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"))
        current = conn.execute(text("SELECT max(version) FROM schema_version")).scalar() or 0
        for number, migration in enumerate(MIGRATIONS, 1):
            if number > current:
                migration(conn)
                conn.execute(text("INSERT INTO schema_version (version) VALUES (:v)"), {"v": number})

    # ------------------------------------------------------------------ state
    def get_state(self, conn: Connection, key: str, default: str | None = None) -> str | None:
        value = conn.execute(select(state.c.value).where(state.c.key == key)).scalar()
        return default if value is None else value

    def set_state(self, conn: Connection, key: str, value: Any) -> None:
        conn.execute(text("INSERT INTO state (key, value) VALUES (:k, :v) "
                          "ON CONFLICT(key) DO UPDATE SET value = excluded.value"), {"k": key, "v": str(value)})

    def generation(self, conn: Connection) -> int:
        return int(self.get_state(conn, "generation", "0"))

    def vector_rows(self, conn: Connection) -> int:
        return int(self.get_state(conn, "vector_rows", "0"))

    def vectors_epoch(self, conn: Connection) -> int:
        """How many compactions renumbered ``vectors.f16`` (see indexer.vectors)."""
        return int(self.get_state(conn, "vectors_epoch", "0"))

    def deleted_floor(self, conn: Connection) -> int:
        """Generation up to which ``deleted_chunks`` was pruned: older ANN indexes cannot be caught up."""
        return int(self.get_state(conn, "deleted_floor", "0"))

    def dead_vector_rows(self, conn: Connection) -> int:
        """Committed rows of ``vectors.f16`` that no chunk refers to any more."""
        live = conn.execute(select(func.count()).select_from(chunks).where(chunks.c.vector_row.is_not(None)))
        return self.vector_rows(conn) - int(live.scalar() or 0)

    def next_chunk_id(self, conn: Connection) -> int:
        seq = conn.execute(text("SELECT seq FROM sqlite_sequence WHERE name = 'chunks'")).scalar()
        return int(seq or 0) + 1

    # ------------------------------------------------------------------ documents
    def document_hashes(self, conn: Connection) -> dict[str, tuple[int, str]]:
        rows = conn.execute(select(documents.c.key, documents.c.id, documents.c.content_hash))
        return {key: (doc_id, h) for key, doc_id, h in rows}

    def delete_documents(self, conn: Connection, doc_ids: Sequence[int], generation: int) -> list[int]:
        """Delete documents with their chunks and terms; return the deleted chunk ids."""
        if not doc_ids:
            return []
        chunk_ids: list[int] = []
        for part in _batches(list(doc_ids), 500):
            chunk_ids += [r[0] for r in conn.execute(select(chunks.c.id).where(chunks.c.doc_id.in_(part)))]
        for part in _batches(chunk_ids, 500):
            conn.execute(text(f"DELETE FROM chunk_terms WHERE rowid IN ({','.join(str(int(i)) for i in part)})"))
            conn.execute(chunks.delete().where(chunks.c.id.in_(part)))
        if chunk_ids:
            conn.execute(deleted_chunks.insert(), [{"chunk_id": i, "generation": generation} for i in chunk_ids])
        for part in _batches(list(doc_ids), 500):
            conn.execute(documents.delete().where(documents.c.id.in_(part)))
        return chunk_ids

    def insert_document(self, conn: Connection, row: dict[str, Any]) -> int:
        return int(conn.execute(documents.insert().values(**row)).inserted_primary_key[0])

    def insert_chunks(self, conn: Connection, rows: list[dict[str, Any]], terms: list[str]) -> None:
        if not rows:
            return
        conn.execute(chunks.insert(), rows)
        conn.exec_driver_sql(
            "INSERT INTO chunk_terms (rowid, terms) VALUES (?, ?)",
            [(r["id"], t) for r, t in zip(rows, terms)],
        )

    # ------------------------------------------------------------------ reads
    def counts(self, conn: Connection) -> dict[str, int]:
        return {
            "documents": conn.execute(select(func.count()).select_from(documents)).scalar() or 0,
            "chunks": conn.execute(select(func.count()).select_from(chunks)).scalar() or 0,
        }

    def live_vectors(self, conn: Connection, min_generation: int = 0, *, by_row: bool = False
                     ) -> list[tuple[int, int]]:
        """(chunk id, vector row) of live chunks added after ``min_generation``, by id (or by row)."""
        q = select(chunks.c.id, chunks.c.vector_row).where(chunks.c.vector_row.is_not(None))
        if min_generation:
            q = q.where(chunks.c.generation > min_generation)
        q = q.order_by(chunks.c.vector_row if by_row else chunks.c.id)
        return [(int(a), int(b)) for a, b in conn.execute(q)]

    def renumber_vectors(self, conn: Connection, ids: Sequence[int], new_rows: Sequence[int]) -> None:
        """Point chunk ``ids[i]`` at row ``new_rows[i]`` (compaction; one transaction with the epoch change)."""
        if len(ids) == 0:
            return
        conn.exec_driver_sql("UPDATE chunks SET vector_row = ? WHERE id = ?",
                             [(int(r), int(i)) for i, r in zip(ids, new_rows)])

    def prune_deleted(self, conn: Connection, upto_generation: int) -> None:
        """Forget deletions up to ``upto_generation`` once every ANN index is rebuilt past it."""
        conn.execute(deleted_chunks.delete().where(deleted_chunks.c.generation <= upto_generation))
        self.set_state(conn, "deleted_floor", upto_generation)

    def deleted_since(self, conn: Connection, generation: int) -> list[int]:
        q = select(deleted_chunks.c.chunk_id).where(deleted_chunks.c.generation > generation)
        return [int(r[0]) for r in conn.execute(q)]

    def chunk_rows(self, conn: Connection, ids: Iterable[int]) -> dict[int, ChunkRow]:
        ids = [int(i) for i in ids]
        out: dict[int, ChunkRow] = {}
        cols = [chunks.c.id, chunks.c.doc_id, chunks.c.chunk_index, chunks.c.char_start, chunks.c.char_end,
                chunks.c.text, chunks.c.token_count, chunks.c.headings, chunks.c.vector_row,
                documents.c.key, documents.c.title, documents.c.source, documents.c.source_type, documents.c.meta]
        for part in _batches(ids, 500):
            q = select(*cols).join(documents, documents.c.id == chunks.c.doc_id).where(chunks.c.id.in_(part))
            for r in conn.execute(q):
                out[int(r[0])] = ChunkRow(
                    id=int(r[0]), doc_id=int(r[1]), chunk_index=r[2], char_start=r[3], char_end=r[4],
                    text=r[5], token_count=r[6], headings=tuple(r[7] or ()), vector_row=r[8],
                    doc_key=r[9], title=r[10], source=r[11], source_type=r[12],
                    metadata=r[13] if isinstance(r[13], dict) else json.loads(r[13] or "{}"),
                )
        return out

    # ------------------------------------------------------------------ documents (read side)
    def list_documents(self, conn: Connection, *, offset: int = 0, limit: int = 100,
                       prefix: str | None = None) -> list[dict[str, Any]]:
        """A page of documents by key: key, title, source, source_type, n_chars, chunks, metadata, generation."""
        n_chunks = (select(func.count()).select_from(chunks).where(chunks.c.doc_id == documents.c.id)
                    .scalar_subquery())
        q = select(documents.c.key, documents.c.title, documents.c.source, documents.c.source_type,
                   documents.c.n_chars, documents.c.meta, documents.c.generation, n_chunks)
        if prefix:
            # substr() rather than LIKE: no wildcard in a user's prefix can widen the match.
            q = q.where(func.substr(documents.c.key, 1, len(prefix)) == prefix)
        q = q.order_by(documents.c.key).offset(int(offset)).limit(int(limit))
        return [{"doc_key": r[0], "title": r[1], "source": r[2], "source_type": r[3], "n_chars": r[4],
                 "metadata": r[5] if isinstance(r[5], dict) else json.loads(r[5] or "{}"),
                 "generation": r[6], "chunks": int(r[7])} for r in conn.execute(q)]

    def count_documents(self, conn: Connection, prefix: str | None = None) -> int:
        """Documents whose key starts with ``prefix`` (all without one)."""
        q = select(func.count()).select_from(documents)
        if prefix:
            q = q.where(func.substr(documents.c.key, 1, len(prefix)) == prefix)
        return int(conn.execute(q).scalar() or 0)

    def document_chunks(self, conn: Connection, key: str) -> tuple[dict[str, Any], list[ChunkRow]] | None:
        """One document (as ``list_documents`` describes it) and its chunks in order; None if absent."""
        doc = conn.execute(select(documents.c.id).where(documents.c.key == key)).scalar()
        if doc is None:
            return None
        ids = [int(r[0]) for r in conn.execute(
            select(chunks.c.id).where(chunks.c.doc_id == doc).order_by(chunks.c.chunk_index))]
        rows = self.chunk_rows(conn, ids)
        q = select(documents.c.key, documents.c.title, documents.c.source, documents.c.source_type,
                   documents.c.n_chars, documents.c.meta, documents.c.generation).where(documents.c.id == doc)
        r = conn.execute(q).one()
        info = {"doc_key": r[0], "title": r[1], "source": r[2], "source_type": r[3], "n_chars": r[4],
                "metadata": r[5] if isinstance(r[5], dict) else json.loads(r[5] or "{}"),
                "generation": r[6], "chunks": len(ids)}
        return info, [rows[i] for i in ids if i in rows]


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]
