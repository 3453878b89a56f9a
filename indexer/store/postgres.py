"""The PostgreSQL dialect of the store: one schema of a database per index, shared by many machines.

What is PostgreSQL's own here (beside the shared tables of ``schema``):

- ``chunk_payload``: per chunk its space-joined lexical terms and its float16
  vector (``bytea``, little-endian) - the primary copy of both; query nodes
  derive their FTS5 table, ``vectors.f16`` and FAISS index from it;
- ``commits``: the ordered commit log. Each writer's commit is one transaction
  that takes ``pg_advisory_xact_lock`` before it numbers itself, so
  generations are gap-free and in commit order: a reader catching up from
  generation g by ``generation > g`` never misses a commit that got a lower
  number but committed later;
- ``index_manifest``: the index's ``Manifest`` (model, chunking, ANN config)
  written once by the first writer; ``ann_training``: the trained, empty
  IVF-PQ index stored once (the first node that needs it trains it), so every
  query node answers alike.

Chunk and document ids come from sequences: concurrent writers never collide,
and ids are never reused (a rolled-back writer's ids are simply skipped).
Every value is a bound parameter; the schema name (checked by
``indexer.location``) is the only identifier spliced into SQL.

Searching happens on a query node's local cache (``indexer.pg_cache``), a
directory index caught up from ``commits``: BM25, filters and ANN there are
SQLite's and FAISS's, identical to a directory index's by construction. The
search hooks of ``DialectHooks`` (``bm25``, ``term_doc_freq``, ``substring_bm25``,
``_glob``, ``_metadata_match``) are therefore not implemented on the server, and
the substring (trigram) index exists only in the caches.
"""
from __future__ import annotations

import json
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import DBAPIError

from mitsuke.indexer.errors import IndexFormatError, MitsukeError
from mitsuke.indexer.store.base import Snapshot, SqlStore
from mitsuke.indexer.store.schema import Filter, batches

__all__ = ["PostgresStore", "PgCommit", "DatabaseError"]

_EXTRA_TABLES = [
    "CREATE TABLE IF NOT EXISTS chunk_payload (chunk_id BIGINT PRIMARY KEY REFERENCES chunks(id) "
    "ON DELETE CASCADE, terms TEXT NOT NULL, vector BYTEA)",
    "CREATE TABLE IF NOT EXISTS commits (generation BIGINT PRIMARY KEY, added_docs BIGINT[] NOT NULL, "
    "removed_docs BIGINT[] NOT NULL, added_chunks BIGINT[] NOT NULL, removed_chunks BIGINT[] NOT NULL, "
    "committed_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS index_manifest (id INTEGER PRIMARY KEY CHECK (id = 1), body TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ann_training (key TEXT PRIMARY KEY, params TEXT NOT NULL, blob BYTEA NOT NULL, "
    "trained_at TIMESTAMPTZ NOT NULL DEFAULT now())",
]

_DOC_COLS = ("id", "key", "content_hash", "title", "source", "source_type", "encoding", "meta", "n_chars",
             "generation", "page_starts")
_CHUNK_COLS = ("id", "doc_id", "chunk_index", "char_start", "char_end", "text", "token_count", "headings",
               "generation")


class DatabaseError(MitsukeError):
    """PostgreSQL refused or failed a request (unreachable, login, rights); the message hides the password."""


class PgCommit:
    """What one writer's commit did: its generation, the document and chunk ids it added and removed."""

    def __init__(self, generation: int, doc_ids: dict[str, int], added_chunks: list[int],
                 removed_chunks: list[int]) -> None:
        self.generation = generation
        self.doc_ids = doc_ids
        self.added_chunks = added_chunks
        self.removed_chunks = removed_chunks


class PostgresStore(SqlStore):
    """The schema of one index in a PostgreSQL database (``location``: an ``indexer.location.PgLocation``)."""

    dialect = "postgresql"

    def __init__(self, location: Any, *, readonly: bool = False) -> None:
        self.location = location
        self.schema = location.schema
        # One advisory lock per index (schema): numbering commits and migrating take it.
        self._lock_key = zlib.crc32(f"mitsuke:{self.schema}".encode()) - (1 << 31)
        engine = create_engine(location.url, future=True, pool_pre_ping=True, hide_parameters=True,
                               connect_args={"options": f"-c search_path={self.schema}",
                                             "connect_timeout": 15})
        try:
            super().__init__(engine, readonly=readonly)
            if readonly:
                with engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
        except DBAPIError as exc:
            engine.dispose()
            raise DatabaseError(self._explain(exc)) from None

    def _explain(self, exc: DBAPIError) -> str:
        """One line naming the index (password hidden) and the server's reason."""
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(getattr(exc, "orig", exc)) else ""
        pw = self.location.url.password
        if pw:
            reason = reason.replace(str(pw), "***")
        return f"PostgreSQL index {self.location.display}: {reason or type(exc).__name__}"

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except DBAPIError as exc:
            raise DatabaseError(self._explain(exc)) from None

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """REPEATABLE READ: every read of the block sees the same commits."""
        try:
            with self.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
                with conn.begin():
                    yield Snapshot(self, conn)
        except DBAPIError as exc:
            raise DatabaseError(self._explain(exc)) from None

    # ------------------------------------------------------------------ schema
    def _prepare(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": self._lock_key})
            exists = conn.execute(text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": self.schema}).scalar()
            if not exists:  # a least-privilege role uses a schema made for it and never gets here
                conn.exec_driver_sql(f'CREATE SCHEMA "{self.schema}"')
            elif not conn.execute(text("SELECT has_schema_privilege(:s, 'USAGE') AND "
                                       "has_schema_privilege(:s, 'CREATE')"), {"s": self.schema}).scalar():
                raise DatabaseError(f"PostgreSQL index {self.location.display}: permission denied for schema "
                                    f"{self.schema} (this role needs USAGE and CREATE on it; see README "
                                    "'Scaling out' for a role of its own)")

    def _migrate(self, conn: Connection) -> None:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": self._lock_key})
        super()._migrate(conn)

    def _create_lexical(self, conn: Connection) -> None:
        for sql in _EXTRA_TABLES:
            conn.exec_driver_sql(sql)

    # ------------------------------------------------------------------ hooks
    def next_chunk_id(self, conn: Connection) -> int:
        return int(conn.execute(text("SELECT nextval('chunks_id_seq')")).scalar_one())

    def reserve_chunk_ids(self, conn: Connection, n: int) -> list[int]:
        """``n`` fresh chunk ids from the sequence (never used by another writer, never reused)."""
        if n <= 0:
            return []
        rows = conn.execute(text("SELECT nextval('chunks_id_seq') FROM generate_series(1, :n)"), {"n": n})
        return sorted(int(r[0]) for r in rows)

    def _insert_terms(self, conn: Connection, ids: Sequence[int], terms: Sequence[str]) -> None:
        conn.execute(text("INSERT INTO chunk_payload (chunk_id, terms) VALUES (:i, :t)"),
                     [{"i": int(i), "t": t} for i, t in zip(ids, terms)])

    def _delete_terms(self, conn: Connection, ids: Sequence[int]) -> None:
        conn.execute(text("DELETE FROM chunk_payload WHERE chunk_id = ANY(:ids)"), {"ids": [int(i) for i in ids]})

    # The substring (trigram) index is derived on each query node's cache from the chunks' text.
    def _create_substrings(self, conn: Connection) -> None:
        pass

    def _insert_substrings(self, conn: Connection, rows: Sequence[tuple[int, str]]) -> None:
        pass

    def _delete_substrings(self, conn: Connection, ids: Sequence[int]) -> None:
        pass

    def has_substrings(self, conn: Connection) -> bool:
        return False

    def substring_bm25(self, conn: Connection, phrases: Sequence[str], k: int, flt: Filter | None = None
                       ) -> list[tuple[int, float]]:
        raise NotImplementedError("a PostgreSQL index is searched on a query node's cache (indexer.pg_cache)")

    def bm25(self, conn: Connection, terms: Sequence[str], k: int, flt: Filter | None = None
             ) -> list[tuple[int, float]]:
        raise NotImplementedError("a PostgreSQL index is searched on a query node's cache (indexer.pg_cache)")

    def term_doc_freq(self, conn: Connection, terms: Sequence[str]) -> dict[str, int]:
        raise NotImplementedError("a PostgreSQL index is searched on a query node's cache (indexer.pg_cache)")

    # ------------------------------------------------------------------ manifest and training
    def read_manifest(self, conn: Connection) -> dict[str, Any] | None:
        if conn.execute(text("SELECT to_regclass('index_manifest')")).scalar() is None:
            return None  # a schema without the tables (or one this role cannot see): no index here
        body = conn.execute(text("SELECT body FROM index_manifest WHERE id = 1")).scalar()
        return None if body is None else json.loads(body)

    def init_manifest(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        """Store ``data`` as the index's manifest unless one exists; return the stored one (first writer wins)."""
        conn.execute(text("INSERT INTO index_manifest (id, body) VALUES (1, :b) ON CONFLICT (id) DO NOTHING"),
                     {"b": json.dumps(data, ensure_ascii=False, sort_keys=True)})
        return self.read_manifest(conn) or data

    def update_manifest(self, conn: Connection, key: str, value: Any) -> None:
        """Set one top-level entry of the stored manifest (``search_defaults``), under the index's lock."""
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": self._lock_key})
        body = self.read_manifest(conn)
        if body is None:
            raise IndexFormatError(f"{self.location.display} holds no mitsuke index yet")
        body[key] = value
        conn.execute(text("UPDATE index_manifest SET body = :b WHERE id = 1"),
                     {"b": json.dumps(body, ensure_ascii=False, sort_keys=True)})

    def trained_ann(self, conn: Connection, key: str) -> tuple[dict[str, Any], bytes] | None:
        """(ANN parameters, serialised trained empty FAISS index) stored under ``key``, or None."""
        row = conn.execute(text("SELECT params, blob FROM ann_training WHERE key = :k"), {"k": key}).first()
        return None if row is None else (json.loads(row[0]), bytes(row[1]))

    def store_trained_ann(self, conn: Connection, key: str, params: dict[str, Any], blob: bytes
                          ) -> tuple[dict[str, Any], bytes]:
        """Keep this trained index under ``key`` unless another node stored one first; return the kept one."""
        conn.execute(text("INSERT INTO ann_training (key, params, blob) VALUES (:k, :p, :b) "
                          "ON CONFLICT (key) DO NOTHING"), {"k": key, "p": json.dumps(params), "b": blob})
        return self.trained_ann(conn, key) or (params, blob)

    # ------------------------------------------------------------------ the writers' commit
    def commit_documents(self, conn: Connection, docs: list[dict[str, Any]], chunk_rows: list[list[dict[str, Any]]],
                         terms: list[list[str]], vectors: list[list[bytes]] | None, delete_keys: Sequence[str] = ()
                         ) -> PgCommit:
        """One writer's commit, inside ``conn``'s transaction: replace/insert ``docs``, delete ``delete_keys``.

        ``chunk_rows[i]``/``terms[i]``/``vectors[i]`` belong to ``docs[i]``
        (chunk rows without ``id``, ``doc_id``, ``generation``). The advisory
        lock serialises the numbering: whichever commit locks later gets the
        next generation and replaces whatever version of a key is committed
        then (the later commit wins whole; one version per key).
        """
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": self._lock_key})
        generation = int(conn.execute(text("SELECT coalesce(max(generation), 0) + 1 FROM commits")).scalar_one())
        keys = [d["key"] for d in docs] + list(delete_keys)
        removed_docs: list[int] = []
        removed_chunks: list[int] = []
        for part in batches(keys):
            removed_docs += [int(r[0]) for r in conn.execute(
                text("SELECT id FROM documents WHERE key = ANY(:k)"), {"k": list(part)})]
        if removed_docs:
            removed_chunks = [int(r[0]) for r in conn.execute(
                text("SELECT id FROM chunks WHERE doc_id = ANY(:d)"), {"d": removed_docs})]
            conn.execute(text("DELETE FROM chunk_payload WHERE chunk_id = ANY(:c)"), {"c": removed_chunks})
            conn.execute(text("DELETE FROM chunks WHERE doc_id = ANY(:d)"), {"d": removed_docs})
            conn.execute(text("DELETE FROM documents WHERE id = ANY(:d)"), {"d": removed_docs})
        doc_ids: dict[str, int] = {}
        added_chunks: list[int] = []
        n_chunks = sum(len(rows) for rows in chunk_rows)
        ids = iter(self.reserve_chunk_ids(conn, n_chunks))
        crow: list[dict[str, Any]] = []
        prow: list[dict[str, Any]] = []
        for i, doc in enumerate(docs):
            pages = doc.get("page_starts")
            values = {**doc, "meta": json.dumps(doc.get("meta") or {}, ensure_ascii=False), "generation": generation,
                      "page_starts": None if not pages else json.dumps([int(p) for p in pages])}
            doc_id = int(conn.execute(text(
                "INSERT INTO documents (key, content_hash, title, source, source_type, encoding, meta, n_chars, "
                "generation, page_starts) VALUES (:key, :content_hash, :title, :source, :source_type, :encoding, "
                "CAST(:meta AS JSON), :n_chars, :generation, CAST(:page_starts AS JSON)) RETURNING id"),
                values).scalar_one())
            doc_ids[doc["key"]] = doc_id
            for j, row in enumerate(chunk_rows[i]):
                cid = next(ids)
                added_chunks.append(cid)
                crow.append({**row, "id": cid, "doc_id": doc_id, "generation": generation,
                             "headings": json.dumps(list(row.get("headings") or []), ensure_ascii=False)})
                prow.append({"c": cid, "t": terms[i][j], "v": vectors[i][j] if vectors is not None else None})
        if crow:
            conn.execute(text(
                "INSERT INTO chunks (id, doc_id, chunk_index, char_start, char_end, text, token_count, headings, "
                "vector_row, generation) VALUES (:id, :doc_id, :chunk_index, :char_start, :char_end, :text, "
                ":token_count, CAST(:headings AS JSON), NULL, :generation)"), crow)
            conn.execute(text("INSERT INTO chunk_payload (chunk_id, terms, vector) VALUES (:c, :t, :v)"), prow)
        conn.execute(text(
            "INSERT INTO commits (generation, added_docs, removed_docs, added_chunks, removed_chunks) "
            "VALUES (:g, :ad, :rd, :ac, :rc)"),
            {"g": generation, "ad": list(doc_ids.values()), "rd": removed_docs, "ac": added_chunks,
             "rc": removed_chunks})
        self.set_state(conn, "generation", generation)
        return PgCommit(generation, doc_ids, added_chunks, removed_chunks)

    # ------------------------------------------------------------------ catching up
    def head(self, conn: Connection) -> int:
        """The newest committed generation."""
        return int(conn.execute(text("SELECT coalesce(max(generation), 0) FROM commits")).scalar_one())

    def commits_since(self, conn: Connection, generation: int) -> tuple[set[int], set[int]]:
        """(documents added, documents removed) by the commits after ``generation`` (this snapshot's)."""
        added: set[int] = set()
        removed: set[int] = set()
        rows = conn.execute(text("SELECT added_docs, removed_docs FROM commits WHERE generation > :g "
                                 "ORDER BY generation"), {"g": int(generation)})
        for a, r in rows:
            added.update(int(x) for x in a)
            removed.update(int(x) for x in r)
        return added, removed

    def all_document_ids(self, conn: Connection) -> set[int]:
        return {int(r[0]) for r in conn.execute(text("SELECT id FROM documents"))}

    def documents_with_chunks(self, conn: Connection, doc_ids: Sequence[int]
                              ) -> list[tuple[dict[str, Any], list[dict[str, Any]], list[str], list[bytes | None]]]:
        """The documents ``doc_ids`` that exist, by id, each with its chunk rows, terms and vector bytes."""
        out = []
        for part in batches(sorted(int(i) for i in doc_ids)):
            docs = {int(r[0]): dict(zip(_DOC_COLS, r)) for r in conn.execute(text(
                f"SELECT {', '.join(_DOC_COLS)} FROM documents WHERE id = ANY(:d) ORDER BY id"), {"d": list(part)})}
            per_doc: dict[int, tuple[list, list, list]] = {d: ([], [], []) for d in docs}
            rows = conn.execute(text(
                f"SELECT {', '.join('c.' + c for c in _CHUNK_COLS)}, p.terms, p.vector FROM chunks c "
                "JOIN chunk_payload p ON p.chunk_id = c.id WHERE c.doc_id = ANY(:d) ORDER BY c.id"),
                {"d": list(docs)})
            for r in rows:
                row = dict(zip(_CHUNK_COLS, r[:len(_CHUNK_COLS)]))
                rows_, terms_, vecs_ = per_doc[int(row["doc_id"])]
                rows_.append(row)
                terms_.append(r[len(_CHUNK_COLS)])
                v = r[len(_CHUNK_COLS) + 1]
                vecs_.append(None if v is None else bytes(v))
            out += [(docs[d], *per_doc[d]) for d in docs]
        return out

    def chunks_since(self, conn: Connection, generation: int) -> int:
        return int(conn.execute(text("SELECT count(*) FROM chunks WHERE generation > :g"),
                                {"g": generation}).scalar_one())


