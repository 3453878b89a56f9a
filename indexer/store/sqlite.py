"""The SQLite dialect of the store: one ``meta.sqlite`` file per index directory.

What is SQLite's own here: the connection settings (PRAGMAs, WAL, who
issues BEGIN), the FTS5 table ``chunk_terms`` with its bm25() and fts5vocab
document frequencies, the FTS5 trigram table ``chunk_trigrams`` for substrings,
``sqlite_sequence`` for chunk ids, ``GLOB`` and the
``json_each``/``json_type`` metadata filters.
"""
from __future__ import annotations

import logging
import os
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Integer, create_engine, event, func, literal_column, select, text
from sqlalchemy.sql import column, table
from sqlalchemy.sql.elements import ColumnElement, TextClause
from sqlalchemy.sql.selectable import NamedFromClause

from mitsuke.indexer.japanese import match_text
from mitsuke.indexer.store import sqlite_read
from mitsuke.indexer.store.base import Snapshot, SqlStore
from mitsuke.indexer.store.schema import ChunkRow, Filter, batches

__all__ = ["SqliteStore", "fts5_match", "TRIGRAM_TABLE", "TRIGRAM_FORM"]

log = logging.getLogger("mitsuke")

# The FTS5 table of space-joined MeCab terms (indexer.japanese.lexical_terms); rowid = chunk id.
_terms = table("chunk_terms", column("rowid", Integer))
_bm25 = func.bm25(literal_column("chunk_terms"))
# Substrings: passage text as ``japanese.match_text`` gives it, in an FTS5 trigram index.
TRIGRAM_TABLE = "chunk_trigrams"
TRIGRAM_FORM = f"nfkc-lower-v1:unicode-{unicodedata.unidata_version}"
_trigrams = table(TRIGRAM_TABLE, column("rowid", Integer))
_tri_bm25 = func.bm25(literal_column(TRIGRAM_TABLE))


def _trigram_rows(rows: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
    return [(int(i), match_text(t)) for i, t in rows]


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


def _reader_connect(dbapi_conn, _record) -> None:
    # A reader's connection lives as long as the store (sqlite_read.ReaderConnections): a
    # larger page cache than SQLite's 2 MB default keeps the chunk and document pages of
    # recent results. Measured: 10 random passages read in 75 µs instead of 130 µs
    # (100k passages, 30 MB file, bench/ann_overhead.py). Allocated only as pages are read.
    dbapi_conn.execute("PRAGMA cache_size=-32768")


def _reader_begin(conn: Connection) -> None:
    # Inside a snapshot the DB-API connection is in its read transaction already.
    raw: Any = conn.connection.dbapi_connection
    if not raw.in_transaction:
        conn.exec_driver_sql("BEGIN")


def _url(path: Path, readonly: bool) -> str:
    """The SQLAlchemy URL of ``path``: a ``mode=ro`` URI for readers (``immutable=1`` on read-only media)."""
    if not readonly:
        return f"sqlite:///{path}"
    uri = "file:" + quote(str(path.absolute()), safe="/") + "?mode=ro"
    wal = path.with_name(path.name + "-wal")
    # An empty -wal holds no commits: read-only readers leave one behind (they cannot delete it).
    if not os.access(path.parent, os.W_OK) and (not wal.exists() or wal.stat().st_size == 0):
        uri += "&immutable=1"
    return f"sqlite:///{uri}&uri=true"


def _quote(term: str) -> str:
    # An FTS5 string: "..." with inner quotes doubled; everything inside is plain text.
    return '"' + term.replace('"', '""') + '"'


def fts5_match(terms: Sequence[str]) -> str | None:
    """The FTS5 MATCH expression for ``terms``: each one quoted, joined by OR; None for no terms.

    Quoted, no term is FTS5 syntax (``NEAR``, ``*``, ``^``, ``-``, column filters).

    >>> fts5_match(["東京", 'タ"ワー'])
    '"東京" OR "タ""ワー"'
    """
    if not terms:
        return None
    return " OR ".join(_quote(t) for t in terms)


class SqliteStore(SqlStore):
    """The SQLite file of one index.

    Readers (``readonly=True``) open it ``mode=ro``: they never write, and
    an index on a read-only directory or medium answers searches. A mode=ro
    connection still shares the WAL index (-shm) with a running writer when
    the directory is writable; when it is not and no ``-wal`` file holds
    commits (the last writer closed cleanly: SQLite checkpointed and removed
    it; a read-only reader may leave an empty one), the file is opened
    ``immutable=1`` and no -shm is needed at all.
    """

    dialect = "sqlite"

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        engine = create_engine(_url(self.path, readonly), future=True)
        event.listen(engine, "connect", _on_connect)
        # The writer takes the write lock up front (IMMEDIATE): a deferred
        # transaction that reads first and writes later could find its
        # snapshot outdated. Readers' deferred BEGIN pins a snapshot at the
        # first SELECT.
        # A reader's snapshot begins on the DB-API connection (``sqlite_read``): SQLAlchemy
        # autobeginning inside it must not issue a second BEGIN.
        if readonly:
            event.listen(engine, "connect", _reader_connect)
            event.listen(engine, "begin", _reader_begin)
        else:
            event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        # Readers keep their connections between snapshots (no pool checkout and reset per search).
        self._readers = sqlite_read.ReaderConnections(engine) if readonly else None
        super().__init__(engine, readonly=readonly)

    def close(self) -> None:
        if self._readers is not None:
            self._readers.close()
        super().close()

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """One read transaction (see ``SqlStore.snapshot``); a reader's reuses a kept connection."""
        if self._readers is None:
            with super().snapshot() as snap:
                yield snap
            return
        with self._readers.snapshot_conn() as conn:
            yield Snapshot(self, conn)

    # ------------------------------------------------------------------ reads on every search's path
    def generation_and_epoch(self, conn: Connection) -> tuple[int, int]:
        return sqlite_read.generation_and_epoch(conn)

    def chunk_rows(self, conn: Connection, ids: Iterable[int]) -> dict[int, ChunkRow]:
        return sqlite_read.chunk_rows(conn, ids, self._has_page_starts(conn))

    @staticmethod
    def file_is_sound(path: str | Path) -> bool:
        """Whether the SQLite file at ``path`` opens and passes ``PRAGMA quick_check`` (a full read)."""
        import sqlite3

        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                return con.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            finally:
                con.close()
        except sqlite3.DatabaseError:
            return False

    def _prepare(self) -> None:
        with self.engine.connect() as conn:
            # journal_mode cannot change inside a transaction: run it on the raw connection.
            raw: Any = conn.connection.dbapi_connection
            raw.execute("PRAGMA journal_mode=WAL")

    # ------------------------------------------------------------------ integrity
    def quick_check(self, conn: Connection) -> list[str]:
        rows = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA quick_check")]
        return [] if rows == ["ok"] else rows

    # ------------------------------------------------------------------ chunk ids
    def next_chunk_id(self, conn: Connection) -> int:
        seq = conn.execute(text("SELECT seq FROM sqlite_sequence WHERE name = 'chunks'")).scalar()
        return int(seq or 0) + 1

    # ------------------------------------------------------------------ lexical (FTS5)
    def _create_lexical(self, conn: Connection) -> None:
        conn.execute(text("CREATE VIRTUAL TABLE IF NOT EXISTS chunk_terms USING fts5("
                          "terms, tokenize='unicode61 remove_diacritics 0')"))

    def _insert_terms(self, conn: Connection, ids: Sequence[int], terms: Sequence[str]) -> None:
        conn.exec_driver_sql("INSERT INTO chunk_terms (rowid, terms) VALUES (?, ?)", list(zip(ids, terms)))

    def _delete_terms(self, conn: Connection, ids: Sequence[int]) -> None:
        conn.execute(text(f"DELETE FROM chunk_terms WHERE rowid IN ({','.join(str(int(i)) for i in ids)})"))

    def bm25(self, conn: Connection, terms: Sequence[str], k: int, flt: Filter | None = None
             ) -> list[tuple[int, float]]:
        match = fts5_match(terms)
        if match is None or k <= 0:
            return []
        q = select(_terms.c.rowid, _bm25).where(literal_column("chunk_terms").op("MATCH")(match))
        if flt is not None:
            # The MATCH joined with the matching chunk ids in SQL: the k best *matching*
            # passages come back, however rare they are.
            q = q.where(_terms.c.rowid.in_(self._filtered_ids(flt)))
        # bm25() is lower-is-better (negative); ties broken by chunk id for a stable order.
        q = q.order_by(_bm25, _terms.c.rowid).limit(int(k))
        return [(int(r[0]), -float(r[1])) for r in conn.execute(q)]

    def term_doc_freq(self, conn: Connection, terms: Sequence[str]) -> dict[str, int]:
        # A per-connection temp table: readers never write to the index file.
        conn.exec_driver_sql("CREATE VIRTUAL TABLE IF NOT EXISTS temp.mitsuke_vocab "
                             "USING fts5vocab(main, 'chunk_terms', 'row')")
        df: dict[str, int] = {}
        for part in batches(list(terms)):
            rows = conn.exec_driver_sql(
                f"SELECT term, doc FROM temp.mitsuke_vocab WHERE term IN ({','.join('?' * len(part))})", tuple(part))
            df.update((str(t), int(d)) for t, d in rows)
        return df

    def metadata_keys(self, conn: Connection) -> set[str]:
        rows = conn.execute(text("SELECT DISTINCT j.key FROM documents d, json_each(d.meta) j "
                                 "WHERE json_type(d.meta) = 'object'"))
        return {r[0] for r in rows}

    # ------------------------------------------------------------------ substrings (FTS5 trigram)
    # The passages' text, NFKC + lower case (japanese.match_text), in an FTS5 trigram index;
    # rowid = chunk id. Contentless (the text is in ``chunks`` already): a row is removed
    # with FTS5's 'delete' command and the text it was indexed with, which ``_trigram_rows``
    # recomputes; TRIGRAM_FORM records how, and a writer that would compute it differently
    # rebuilds the table (``_after_migrate``). detail=full: a substring query is an FTS5
    # phrase of trigrams, which needs positions.
    def _create_substrings(self, conn: Connection) -> None:
        conn.exec_driver_sql(f"CREATE VIRTUAL TABLE IF NOT EXISTS {TRIGRAM_TABLE} USING fts5("
                             "text, tokenize='trigram', detail=full, content='')")
        self._fill_trigrams(conn)
        self.set_state(conn, "trigram_form", TRIGRAM_FORM)

    def _fill_trigrams(self, conn: Connection) -> None:
        """Index every chunk's text in the (empty) trigram table."""
        last = 0
        while True:
            rows = conn.exec_driver_sql("SELECT id, text FROM chunks WHERE id > ? ORDER BY id LIMIT 2000",
                                        (last,)).fetchall()
            if not rows:
                break
            self._insert_substrings(conn, rows)
            last = int(rows[-1][0])

    def _after_migrate(self, conn: Connection) -> None:
        # A contentless FTS5 row can only be deleted with the exact text it was indexed with;
        # another Unicode version of NFKC (a Python upgrade) could compute another one.
        have = self.get_state(conn, "trigram_form")
        if have == TRIGRAM_FORM:
            return
        log.info("%s: passages were normalised as %s, this Python gives %s: re-indexing the trigram table",
                 self.path, have, TRIGRAM_FORM)
        self.rebuild_substrings(conn)

    def rebuild_substrings(self, conn: Connection) -> None:
        """Re-index every passage's text in the trigram table (it is derived from ``chunks``)."""
        conn.exec_driver_sql(f"INSERT INTO {TRIGRAM_TABLE} ({TRIGRAM_TABLE}) VALUES ('delete-all')")
        self._fill_trigrams(conn)
        self.set_state(conn, "trigram_form", TRIGRAM_FORM)

    def _insert_substrings(self, conn: Connection, rows: Sequence[tuple[int, str]]) -> None:
        if rows:
            conn.exec_driver_sql(f"INSERT INTO {TRIGRAM_TABLE} (rowid, text) VALUES (?, ?)", _trigram_rows(rows))

    def _delete_substrings(self, conn: Connection, ids: Sequence[int]) -> None:
        rows = conn.exec_driver_sql(
            f"SELECT id, text FROM chunks WHERE id IN ({','.join(str(int(i)) for i in ids)})").fetchall()
        if rows:
            conn.exec_driver_sql(f"INSERT INTO {TRIGRAM_TABLE} ({TRIGRAM_TABLE}, rowid, text) VALUES ('delete', ?, ?)",
                                 _trigram_rows(rows))

    def has_substrings(self, conn: Connection) -> bool:
        return conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                    (TRIGRAM_TABLE,)).first() is not None

    def substring_bm25(self, conn: Connection, phrases: Sequence[str], k: int, flt: Filter | None = None
                       ) -> list[tuple[int, float]]:
        if not phrases or k <= 0:
            return []
        # Each phrase quoted (a substring: an FTS5 phrase of its trigrams), ORed.
        match = fts5_match(phrases)
        q = select(_trigrams.c.rowid, _tri_bm25).where(literal_column(TRIGRAM_TABLE).op("MATCH")(match))
        if flt is not None:
            q = q.where(_trigrams.c.rowid.in_(self._filtered_ids(flt)))
        q = q.order_by(_tri_bm25, _trigrams.c.rowid).limit(int(k))
        return [(int(r[0]), -float(r[1])) for r in conn.execute(q)]

    # ------------------------------------------------------------------ filters
    def _glob(self, column: ColumnElement[Any], pattern: str) -> ColumnElement[bool]:
        return column.op("GLOB")(pattern)

    def _metadata_match(self, d: NamedFromClause, key: str, value: Any, tag: str
                        ) -> ColumnElement[bool] | TextClause:
        path_p, value_p = f"mk{tag}", f"mv{tag}"
        params: dict[str, Any] = {path_p: f'$."{key}"'}
        meta = f"{d.name}.meta"
        if value is None:
            return text(f"(json_type({meta}, :{path_p}) = 'null')").bindparams(**params)
        # One element of the value at the path: the value itself, or each element of a list.
        # (json_each also walks an object's members: those carry a text key and are left out.)
        elems = (f"SELECT 1 FROM (SELECT CASE json_each.type WHEN 'true' THEN 1 WHEN 'false' THEN 0 "
                 f"ELSE json_each.value END AS v, json_each.type AS t FROM json_each({meta}, :{path_p}) "
                 f"WHERE typeof(json_each.key) != 'text')")
        v = f":{value_p}"
        if isinstance(value, bool):
            params[value_p] = 1 if value else 0
            sql = f"EXISTS ({elems} WHERE t IN ('true', 'false') AND v = {v})"
        elif isinstance(value, (int, float)):
            params[value_p] = value
            sql = f"EXISTS ({elems} WHERE t IN ('integer', 'real') AND v = {v})"
        else:
            params[value_p] = value
            # Strings also match numbers and booleans by their JSON text (the CLI passes strings).
            sql = (f"EXISTS ({elems} WHERE (t = 'text' AND v = {v}) OR (t IN ('integer', 'real') "
                   f"AND CAST(v AS TEXT) = {v}) OR (t = 'true' AND {v} = 'true') OR (t = 'false' AND {v} = 'false'))")
        return text(f"({sql})").bindparams(**params)
