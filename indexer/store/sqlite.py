"""The SQLite dialect of the store: one ``meta.sqlite`` file per index directory.

What is SQLite's own here: the connection settings (PRAGMAs, WAL, who
issues BEGIN), the FTS5 table ``chunk_terms`` with its bm25() and fts5vocab
document frequencies, ``sqlite_sequence`` for chunk ids, ``GLOB`` and the
``json_each``/``json_type`` metadata filters.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Integer, create_engine, event, func, literal_column, select, text
from sqlalchemy.sql import column, table
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import Alias

from mitsuke.indexer.store.base import SqlStore
from mitsuke.indexer.store.schema import Filter, batches

__all__ = ["SqliteStore", "fts5_match"]

# The FTS5 table of space-joined MeCab terms (indexer.japanese.lexical_terms); rowid = chunk id.
_terms = table("chunk_terms", column("rowid", Integer))
_bm25 = func.bm25(literal_column("chunk_terms"))


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

    Readers (``readonly=True``) open read-write but never write: a WAL
    database needs its -shm file, which a mode=ro connection cannot create.
    """

    dialect = "sqlite"

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        engine = create_engine(f"sqlite:///{self.path}", future=True)
        event.listen(engine, "connect", _on_connect)
        # The writer takes the write lock up front (IMMEDIATE): a deferred
        # transaction that reads first and writes later could find its
        # snapshot outdated. Readers' deferred BEGIN pins a snapshot at the
        # first SELECT.
        begin_sql = "BEGIN" if readonly else "BEGIN IMMEDIATE"
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql(begin_sql))
        super().__init__(engine, readonly=readonly)

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
            conn.connection.dbapi_connection.execute("PRAGMA journal_mode=WAL")

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

    # ------------------------------------------------------------------ filters
    def _glob(self, column: ColumnElement[Any], pattern: str) -> ColumnElement[bool]:
        return column.op("GLOB")(pattern)

    def _metadata_match(self, d: Alias, key: str, value: Any, tag: str) -> ColumnElement[bool]:
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
