"""SQLite reads on every search's path, without SQLAlchemy's per-call cost.

Measured on one query (``bench/ann_overhead.py``, 100k × 1792): opening a
pooled SQLAlchemy connection, letting it autobegin and closing it cost
~0.2 ms per search, a SQLAlchemy ``begin()``/``rollback()`` on a kept
connection still ~0.17 ms, the same ``BEGIN`` / one ``SELECT`` / ``ROLLBACK``
on the DB-API connection ~0.015 ms; reading the k result passages through a
compiled SQLAlchemy statement ~0.3 ms, through the DB-API cursor a fraction.

So a reader ``SqliteStore``:

- keeps its SQLAlchemy connections between snapshots (:class:`ReaderConnections`,
  a stack of idle ones: one per concurrent snapshot, whichever thread), and
  starts each snapshot's read transaction with a plain ``BEGIN`` on the
  DB-API connection. Deferred, it pins the snapshot at its first ``SELECT``
  (the generation read), exactly as before: a snapshot sees whole commits
  only (WAL). The ``begin`` event of the store issues no second ``BEGIN``
  when SQLAlchemy autobegins inside one (``sqlite._on_begin``), and the
  snapshot's end rolls back whichever of the two began;
- answers the generation/epoch read and the rows of the result passages
  (:func:`chunk_rows`) by the DB-API cursor, page starts in the same
  statement; one SQL text per number of ids, so SQLite prepares it once per
  connection.

Errors of the DB-API come out as SQLAlchemy's (``StoreError``), as from any other read.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from mitsuke.indexer.pages import pages_of
from mitsuke.indexer.store.schema import ChunkRow, batches, frozen_row

__all__ = ["ReaderConnections", "raw_rows", "chunk_rows", "generation_and_epoch"]

log = logging.getLogger("mitsuke")

_GENERATION_EPOCH = "SELECT key, value FROM state WHERE key IN ('generation', 'vectors_epoch')"
_CHUNK_ROWS = ("SELECT c.id, c.doc_id, c.chunk_index, c.char_start, c.char_end, c.text, c.token_count, c.headings, "
               "c.vector_row, d.key, d.title, d.source, d.source_type, d.meta, {pages} "
               "FROM chunks AS c JOIN documents AS d ON d.id = c.doc_id WHERE c.id IN ({ids})")


def raw_rows(conn: Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    """Every row of ``sql`` on ``conn``'s DB-API connection, in its transaction.

    The same SQL text is prepared once per connection (the sqlite3 module's statement cache).
    """
    try:
        raw: Any = conn.connection.dbapi_connection
        return raw.execute(sql, params).fetchall()
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc


def generation_and_epoch(conn: Connection) -> tuple[int, int]:
    got = dict(raw_rows(conn, _GENERATION_EPOCH))
    return int(got.get("generation") or 0), int(got.get("vectors_epoch") or 0)


def _json(value: Any) -> Any:
    if value == "{}":  # most documents' metadata, most passages' headings: no parser needed
        return {}
    if value == "[]":
        return []
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def chunk_rows(conn: Connection, ids: Iterable[int], with_pages: bool) -> dict[int, ChunkRow]:
    """``chunk id -> ChunkRow`` of the given ids that exist (the fields of ``SqlStore.chunk_rows``).

    ``with_pages``: the ``documents.page_starts`` column exists (migration 2).
    """
    out: dict[int, ChunkRow] = {}
    pages = "d.page_starts" if with_pages else "NULL"
    for part in batches(sorted({int(i) for i in ids})):
        # One SQL text per number of ids (k): prepared once, then only bound.
        sql = _CHUNK_ROWS.format(pages=pages, ids=",".join("?" * len(part)))
        for r in raw_rows(conn, sql, part):
            meta = _json(r[13])
            starts = _json(r[14])
            out[int(r[0])] = frozen_row(ChunkRow, {
                "id": int(r[0]), "doc_id": int(r[1]), "chunk_index": r[2], "char_start": r[3], "char_end": r[4],
                "text": r[5], "token_count": r[6], "headings": tuple(_json(r[7]) or ()), "vector_row": r[8],
                "doc_key": r[9], "title": r[10], "source": r[11], "source_type": r[12],
                "metadata": meta if isinstance(meta, dict) else {},
                "pages": pages_of(tuple(int(s) for s in starts), r[3], r[4]) if starts else None,
            })
    return out


class ReaderConnections:
    """Idle SQLAlchemy connections of a reader store, reused snapshot after snapshot.

    One connection serves one snapshot at a time; concurrent (or nested)
    snapshots take another. ``list.pop``/``append`` are atomic, so no lock is
    taken per search. The DB-API connections are opened with
    ``check_same_thread`` off (SQLAlchemy's file-database pool does so), so a
    connection may serve a snapshot on any thread.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._idle: list[Connection] = []
        self._closed = False
        self._lock = threading.Lock()  # close() against a snapshot handing its connection back

    @contextmanager
    def snapshot_conn(self) -> Iterator[Connection]:
        """A connection inside a fresh deferred read transaction, rolled back at the end of the block."""
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self.engine.connect()
        raw: Any = conn.connection.dbapi_connection
        clean = False
        try:
            try:
                raw.execute("BEGIN")
            except sqlite3.Error as exc:
                raise DBAPIError.instance("BEGIN", None, exc, sqlite3.Error) from exc
            try:
                yield conn
            finally:
                try:
                    if conn.in_transaction():  # SQLAlchemy autobegan inside ours: its rollback ends both
                        conn.rollback()
                    elif raw.in_transaction:
                        raw.execute("ROLLBACK")
                    clean = not raw.in_transaction
                except (sqlite3.Error, DBAPIError):
                    log.debug("a reader connection failed to roll back: closed", exc_info=True)
        finally:
            with self._lock:
                keep = clean and not self._closed and not conn.invalidated
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    def close(self) -> None:
        """Close the idle connections; busy ones close when their snapshot ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
