"""The dialect-neutral half of the store: SQLAlchemy Core over the tables of ``schema``.

``SqlStore`` holds every statement that any SQL dialect runs the same way;
a dialect subclass supplies the engine and the hooks marked "dialect" below
(see the package docstring for the list and for what a second dialect adds).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

from sqlalchemy import Connection, Engine, and_, bindparam, func, or_, select, text
from sqlalchemy.sql.elements import ColumnElement, TextClause
from sqlalchemy.sql.selectable import NamedFromClause, Select

from mitsuke.indexer.checksums import Block
from mitsuke.indexer.store.hooks import DialectHooks
from mitsuke.indexer.store.integrity import LOST_PREFIX, IntegrityMixin
from mitsuke.indexer.store.listing import ListingMixin
from mitsuke.indexer.store.paging import PagingMixin
from mitsuke.indexer.store.schema import (
    BUILTIN_FIELDS,
    ChunkPiece,
    ChunkRow,
    DocumentRow,
    Filter,
    batches,
    chunks,
    deleted_chunks,
    documents,
    metadata,
    state,
    vector_blocks,
)

__all__ = ["SqlStore", "Snapshot", "MIGRATIONS", "SCHEMA_VERSION", "LOST_PREFIX"]

# The aliases every filtered statement uses: c = chunks, d = documents.
_c = chunks.alias("c")
_d = documents.alias("d")


def _m001_create_tables(store: "SqlStore", conn: Connection) -> None:
    metadata.create_all(conn)
    store._create_lexical(conn)


def _m002_page_starts(store: "SqlStore", conn: Connection) -> None:
    # m001 creates the tables from today's definitions, page_starts included:
    # add the column only to a database made by an older m001.
    if not store._has_column(conn, "documents", "page_starts"):
        conn.execute(text("ALTER TABLE documents ADD COLUMN page_starts JSON"))


def _m003_substrings(store: "SqlStore", conn: Connection) -> None:
    # Substring matching (search.trigram); an index written before it has its passages indexed now.
    store._create_substrings(conn)


def _m004_vector_blocks(store: "SqlStore", conn: Connection) -> None:
    # CRC32s of vectors.f16's blocks (indexer.checksums); an older index gets them from its first writer.
    vector_blocks.create(conn, checkfirst=True)


MIGRATIONS = [_m001_create_tables, _m002_page_starts, _m003_substrings, _m004_vector_blocks]
SCHEMA_VERSION = len(MIGRATIONS)


# Statements on every search's path, built once: SQLAlchemy then skips constructing
# and coercing them per call (its compiled cache does the rest); expanding IN lists.
_STATE_VALUE = select(state.c.value).where(state.c.key == bindparam("k"))
_GENERATION_EPOCH = text("SELECT key, value FROM state WHERE key IN ('generation', 'vectors_epoch')")
_CHUNK_ROWS = (select(chunks.c.id, chunks.c.doc_id, chunks.c.chunk_index, chunks.c.char_start, chunks.c.char_end,
                      chunks.c.text, chunks.c.token_count, chunks.c.headings, chunks.c.vector_row,
                      documents.c.key, documents.c.title, documents.c.source, documents.c.source_type, documents.c.meta)
               .join(documents, documents.c.id == chunks.c.doc_id)
               .where(chunks.c.id.in_(bindparam("ids", expanding=True))))


class SqlStore(DialectHooks, ListingMixin, PagingMixin, IntegrityMixin):
    """The metadata of one index behind SQLAlchemy; subclassed once per dialect.

    Write methods take the ``Connection`` of a ``begin()`` block; read methods
    take any connection, and ``snapshot()`` gives them one consistent commit.
    """

    dialect: ClassVar[str] = ""

    def __init__(self, engine: Engine, *, readonly: bool = False) -> None:
        self.engine = engine
        self.readonly = readonly
        if not readonly:
            self._prepare()
            with self.begin() as conn:
                self._migrate(conn)

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction: committed when the block ends, rolled back on an exception."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def snapshot(self) -> Iterator["Snapshot"]:
        """One read transaction: every read in the block sees the same commit (one generation).

        >>> with store.snapshot() as snap:          # doctest: +SKIP
        ...     rows = snap.chunk_rows([1, 2, 3])
        """
        with self.engine.connect() as conn:
            yield Snapshot(self, conn)

    # ------------------------------------------------------------------ schema
    def _migrate(self, conn: Connection) -> None:
        conn.execute(text("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"))
        current = conn.execute(text("SELECT max(version) FROM schema_version")).scalar() or 0
        for number, migration in enumerate(MIGRATIONS, 1):
            if number > current:
                migration(self, conn)
                conn.execute(text("INSERT INTO schema_version (version) VALUES (:v)"), {"v": number})
        self._after_migrate(conn)

    # ------------------------------------------------------------------ state
    def get_state(self, conn: Connection, key: str, default: str | None = None) -> str | None:
        value = conn.execute(_STATE_VALUE, {"k": key}).scalar()
        return default if value is None else value

    def set_state(self, conn: Connection, key: str, value: Any) -> None:
        # Upsert syntax shared by SQLite (3.24+) and PostgreSQL.
        conn.execute(text("INSERT INTO state (key, value) VALUES (:k, :v) "
                          "ON CONFLICT(key) DO UPDATE SET value = excluded.value"), {"k": key, "v": str(value)})

    def _int_state(self, conn: Connection, key: str) -> int:
        value = self.get_state(conn, key)
        return 0 if value is None else int(value)

    def generation(self, conn: Connection) -> int:
        return self._int_state(conn, "generation")

    def generation_and_epoch(self, conn: Connection) -> tuple[int, int]:
        """(generation, vectors epoch) in one read: what every search's snapshot needs first."""
        got: dict[str, Any] = {str(k): v for k, v in conn.execute(_GENERATION_EPOCH).all()}
        return int(got.get("generation") or 0), int(got.get("vectors_epoch") or 0)

    def vector_rows(self, conn: Connection) -> int:
        """Committed rows of ``vectors.f16`` (live or dead)."""
        return self._int_state(conn, "vector_rows")

    def vectors_epoch(self, conn: Connection) -> int:
        """How many compactions renumbered ``vectors.f16`` (see indexer.vectors)."""
        return self._int_state(conn, "vectors_epoch")

    def deleted_floor(self, conn: Connection) -> int:
        """Generation up to which ``deleted_chunks`` was pruned: older ANN indexes cannot be caught up."""
        return self._int_state(conn, "deleted_floor")

    def dead_vector_rows(self, conn: Connection) -> int:
        """Committed rows of ``vectors.f16`` that no chunk refers to any more."""
        live = conn.execute(select(func.count()).select_from(chunks).where(chunks.c.vector_row.is_not(None)))
        return self.vector_rows(conn) - int(live.scalar() or 0)

    # ------------------------------------------------------------------ writes
    def document_hashes(self, conn: Connection) -> dict[str, tuple[int, str]]:
        """``doc key -> (document id, content hash)`` of every document."""
        rows = conn.execute(select(documents.c.key, documents.c.id, documents.c.content_hash))
        return {key: (doc_id, h) for key, doc_id, h in rows}

    def delete_documents(self, conn: Connection, doc_ids: Sequence[int], generation: int) -> list[int]:
        """Delete documents with their chunks and terms; return the deleted chunk ids."""
        if not doc_ids:
            return []
        chunk_ids: list[int] = []
        for part in batches(list(doc_ids)):
            chunk_ids += [r[0] for r in conn.execute(select(chunks.c.id).where(chunks.c.doc_id.in_(part)))]
        for part in batches(chunk_ids):
            self._delete_terms(conn, part)
            self._delete_substrings(conn, part)
            conn.execute(chunks.delete().where(chunks.c.id.in_(part)))
        if chunk_ids:
            conn.execute(deleted_chunks.insert(), [{"chunk_id": i, "generation": generation} for i in chunk_ids])
        for part in batches(list(doc_ids)):
            conn.execute(documents.delete().where(documents.c.id.in_(part)))
        return chunk_ids

    def insert_document(self, conn: Connection, row: dict[str, Any]) -> int:
        key = conn.execute(documents.insert().values(**row)).inserted_primary_key
        assert key is not None  # an INSERT of one row always has it
        return int(key[0])

    def insert_chunks(self, conn: Connection, rows: list[dict[str, Any]], terms: list[str]) -> None:
        """Insert chunk rows (ids from ``next_chunk_id``) with their space-joined lexical terms."""
        if not rows:
            return
        conn.execute(chunks.insert(), rows)
        self._insert_terms(conn, [r["id"] for r in rows], terms)
        self._insert_substrings(conn, [(r["id"], r["text"]) for r in rows])

    def renumber_vectors(self, conn: Connection, ids: Sequence[int], new_rows: Sequence[int]) -> None:
        """Point chunk ``ids[i]`` at row ``new_rows[i]`` (compaction; one transaction with the epoch change)."""
        if len(ids) == 0:
            return
        stmt = chunks.update().where(chunks.c.id == bindparam("b_id")).values(vector_row=bindparam("b_row"))
        conn.execute(stmt, [{"b_id": int(i), "b_row": int(r)} for i, r in zip(ids, new_rows)])

    def prune_deleted(self, conn: Connection, upto_generation: int) -> None:
        """Forget deletions up to ``upto_generation`` once every ANN index is rebuilt past it."""
        conn.execute(deleted_chunks.delete().where(deleted_chunks.c.generation <= upto_generation))
        self.set_state(conn, "deleted_floor", upto_generation)

    # ------------------------------------------------------------------ reads
    def counts(self, conn: Connection) -> dict[str, int]:
        return {
            "documents": conn.execute(select(func.count()).select_from(documents)).scalar() or 0,
            "chunks": conn.execute(select(func.count()).select_from(chunks)).scalar() or 0,
        }

    def integrity(self, conn: Connection) -> dict[str, int]:
        """Rows that break referential sanity; both are 0 in a healthy index.

        ``orphan_chunks``: chunks whose document is gone; ``empty_documents``:
        documents without a chunk (a commit writes a document with its chunks).
        """
        orphans = select(func.count()).select_from(chunks).where(chunks.c.doc_id.not_in(select(documents.c.id)))
        empty = select(func.count()).select_from(documents).where(documents.c.id.not_in(select(chunks.c.doc_id)))
        return {"orphan_chunks": int(conn.execute(orphans).scalar() or 0),
                "empty_documents": int(conn.execute(empty).scalar() or 0)}

    def live_vectors(self, conn: Connection, min_generation: int = 0, *, by_row: bool = False
                     ) -> list[tuple[int, int]]:
        """(chunk id, vector row) of live chunks added after ``min_generation``, by id (or by row)."""
        q = select(chunks.c.id, chunks.c.vector_row).where(chunks.c.vector_row.is_not(None))
        if min_generation:
            q = q.where(chunks.c.generation > min_generation)
        q = q.order_by(chunks.c.vector_row if by_row else chunks.c.id)
        return [(int(a), int(b)) for a, b in conn.execute(q)]

    def deleted_since(self, conn: Connection, generation: int) -> list[int]:
        """Chunk ids deleted after ``generation`` (and not yet pruned)."""
        q = select(deleted_chunks.c.chunk_id).where(deleted_chunks.c.generation > generation)
        return [int(r[0]) for r in conn.execute(q)]

    def chunk_rows(self, conn: Connection, ids: Iterable[int]) -> dict[int, ChunkRow]:
        """``chunk id -> ChunkRow`` of the given ids that exist."""
        wanted = [int(i) for i in ids]
        out: dict[int, ChunkRow] = {}
        for part in batches(wanted):
            for r in conn.execute(_CHUNK_ROWS, {"ids": list(part)}):
                out[int(r[0])] = ChunkRow(
                    id=int(r[0]), doc_id=int(r[1]), chunk_index=r[2], char_start=r[3], char_end=r[4],
                    text=r[5], token_count=r[6], headings=tuple(r[7] or ()), vector_row=r[8],
                    doc_key=r[9], title=r[10], source=r[11], source_type=r[12],
                    metadata=r[13] if isinstance(r[13], dict) else json.loads(r[13] or "{}"),
                )
        return self.with_pages(conn, out)

    def chunk_vector_rows(self, conn: Connection, ids: Iterable[int]) -> dict[int, int | None]:
        """``chunk id -> row of vectors.f16`` (None: no vector) of the given ids that exist."""
        out: dict[int, int | None] = {}
        for part in batches(sorted({int(i) for i in ids})):
            # On every search's path: plain SQL with the ints inlined (safe: int() above) runs
            # in a third of the time of a compiled IN (...) of bound parameters.
            sql = f"SELECT id, vector_row FROM chunks WHERE id IN ({','.join(str(i) for i in part)})"
            for cid, row in conn.exec_driver_sql(sql):
                out[int(cid)] = None if row is None else int(row)
        return out

    def chunk_ids(self, conn: Connection, flt: Filter | None = None) -> set[int]:
        """Ids of every chunk, or of the chunks whose document matches ``flt``."""
        if flt is None:
            return {int(r[0]) for r in conn.execute(select(chunks.c.id))}
        return {cid for cid, _ in self.filtered_vectors(conn, flt)}

    def filtered_vectors(self, conn: Connection, flt: Filter) -> list[tuple[int, int | None]]:
        """(chunk id, vector row) of every chunk whose document matches ``flt``, by chunk id."""
        q = (select(_c.c.id, _c.c.vector_row).select_from(_c.join(_d, _d.c.id == _c.c.doc_id))
             .where(self._filter_clause(flt, _d)).order_by(_c.c.id))
        return [(int(a), None if b is None else int(b)) for a, b in conn.execute(q)]

    def filter_sql(self, flt: Filter) -> tuple[str, dict[str, Any]]:
        """The SQL text and bound parameters ``flt`` compiles to (for tests and debugging)."""
        compiled = self._filtered_ids(flt).compile(dialect=self.engine.dialect)
        return str(compiled), dict(compiled.params)

    def neighbours(self, conn: Connection, chunk_ids: Sequence[int], neighbors: int) -> dict[int, list[ChunkPiece]]:
        """For each chunk id: the chunks of its document within ``neighbors`` positions of it, in order.

        Anchored on the chunk id (never reused), so a document replaced since
        the search gives no neighbours rather than text of another version.
        """
        ids = sorted({int(i) for i in chunk_ids})
        out: dict[int, list[ChunkPiece]] = {i: [] for i in ids}
        hit = chunks.alias("hit")
        near = chunks.alias("near")
        cols = [hit.c.id, near.c.id, near.c.chunk_index, near.c.char_start, near.c.char_end, near.c.text]
        for part in batches(ids):
            q = (select(*cols)
                 .join(near, and_(near.c.doc_id == hit.c.doc_id,
                                  near.c.chunk_index.between(hit.c.chunk_index - neighbors,
                                                             hit.c.chunk_index + neighbors)))
                 .where(hit.c.id.in_(part))
                 .order_by(hit.c.id, near.c.chunk_index))
            for hid, cid, idx, start, end, body in conn.execute(q):
                out[int(hid)].append(ChunkPiece(int(cid), int(idx), int(start), int(end), body))
        return out

    def document_spans(self, conn: Connection, keys: Iterable[str]) -> dict[str, list[tuple[int, int]]]:
        """``doc_key -> [(char_start, char_end), ...]`` of the live chunks of those ``keys`` that exist."""
        wanted = sorted(set(keys))
        out: dict[str, list[tuple[int, int]]] = {k: [] for k in wanted}
        present: set[str] = set()
        for part in batches(wanted):
            present.update(key for (key,) in conn.execute(select(documents.c.key).where(documents.c.key.in_(part))))
            rows = conn.execute(select(documents.c.key, chunks.c.char_start, chunks.c.char_end)
                                .join(chunks, chunks.c.doc_id == documents.c.id)
                                .where(documents.c.key.in_(part)))
            for key, start, end in rows:
                out[key].append((int(start), int(end)))
        return {k: v for k, v in out.items() if k in present}

    # ------------------------------------------------------------------ filters
    def _filter_clause(self, flt: Filter, d: NamedFromClause) -> ColumnElement[bool]:
        """``flt`` as a boolean over the documents alias ``d``: AND of conditions, OR of each one's values."""
        groups = []
        for i, cond in enumerate(flt.conditions):
            groups.append(or_(*(self._condition(d, cond.key, v, f"{i}_{j}") for j, v in enumerate(cond.values))))
        return and_(*groups)

    def _condition(self, d: NamedFromClause, key: str, value: Any, tag: str) -> ColumnElement[bool] | TextClause:
        if key == "doc_key":
            return self._glob(d.c.key, str(value))
        if key in BUILTIN_FIELDS:
            return d.c[BUILTIN_FIELDS[key]] == str(value)
        return self._metadata_match(d, key, value, tag)

    def _filtered_ids(self, flt: Filter) -> Select[Any]:
        """``SELECT c.id`` of the chunks whose document matches ``flt``."""
        return select(_c.c.id).select_from(_c.join(_d, _d.c.id == _c.c.doc_id)).where(self._filter_clause(flt, _d))


class Snapshot:
    """The reads of one transaction of ``store``: all see the commit of ``generation``.

    Made by ``SqlStore.snapshot()``; the methods are the store's read methods
    on this snapshot's connection.
    """

    def __init__(self, store: SqlStore, conn: Connection) -> None:
        self.store = store
        self.conn = conn
        # The first SELECT pins the snapshot: the generation is the one every later read sees.
        # One transaction sees one commit, so one epoch: read with it (a search asks up to three times).
        self.generation, self._vectors_epoch = store.generation_and_epoch(conn)

    def vectors_epoch(self) -> int:
        return self._vectors_epoch

    def vector_rows(self) -> int:
        return self.store.vector_rows(self.conn)

    def dead_vector_rows(self) -> int:
        return self.store.dead_vector_rows(self.conn)

    def counts(self) -> dict[str, int]:
        return self.store.counts(self.conn)

    def integrity(self) -> dict[str, int]:
        return self.store.integrity(self.conn)

    def document_hashes(self) -> dict[str, tuple[int, str]]:
        return self.store.document_hashes(self.conn)

    def block_checksums(self) -> dict[int, Block]:
        return self.store.block_checksums(self.conn)

    def state(self, key: str) -> str | None:
        return self.store.get_state(self.conn, key)

    def live_vectors(self, min_generation: int = 0, *, by_row: bool = False) -> list[tuple[int, int]]:
        return self.store.live_vectors(self.conn, min_generation, by_row=by_row)

    def deleted_since(self, generation: int) -> list[int]:
        return self.store.deleted_since(self.conn, generation)

    def chunk_rows(self, ids: Iterable[int]) -> dict[int, ChunkRow]:
        return self.store.chunk_rows(self.conn, ids)

    def chunk_vector_rows(self, ids: Iterable[int]) -> dict[int, int | None]:
        return self.store.chunk_vector_rows(self.conn, ids)

    def chunk_ids(self, flt: Filter | None = None) -> set[int]:
        return self.store.chunk_ids(self.conn, flt)

    def filtered_vectors(self, flt: Filter) -> list[tuple[int, int | None]]:
        return self.store.filtered_vectors(self.conn, flt)

    def neighbours(self, chunk_ids: Sequence[int], neighbors: int) -> dict[int, list[ChunkPiece]]:
        return self.store.neighbours(self.conn, chunk_ids, neighbors)

    def document_spans(self, keys: Iterable[str]) -> dict[str, list[tuple[int, int]]]:
        return self.store.document_spans(self.conn, keys)

    def bm25(self, terms: Sequence[str], k: int, flt: Filter | None = None) -> list[tuple[int, float]]:
        return self.store.bm25(self.conn, terms, k, flt)

    def term_doc_freq(self, terms: Sequence[str]) -> dict[str, int]:
        return self.store.term_doc_freq(self.conn, terms)

    def documents(self, key_glob: str | None = None) -> list[DocumentRow]:
        return self.store.documents(self.conn, key_glob)

    def document_chunk_ids(self, doc_id: int) -> list[int]:
        return self.store.document_chunk_ids(self.conn, doc_id)

    def metadata_keys(self) -> set[str]:
        return self.store.metadata_keys(self.conn)

    def has_substrings(self) -> bool:
        return self.store.has_substrings(self.conn)

    def substring_bm25(self, phrases: Sequence[str], k: int, flt: Filter | None = None) -> list[tuple[int, float]]:
        return self.store.substring_bm25(self.conn, phrases, k, flt)

    def page_starts_of_chunks(self, chunk_ids: Iterable[int]) -> dict[str, tuple[int, ...]]:
        return self.store.page_starts_of_chunks(self.conn, chunk_ids)

    def list_documents(self, *, offset: int = 0, limit: int = 100, prefix: str | None = None
                       ) -> list[dict[str, Any]]:
        return self.store.list_documents(self.conn, offset=offset, limit=limit, prefix=prefix)

    def count_documents(self, prefix: str | None = None) -> int:
        return self.store.count_documents(self.conn, prefix)

    def document_chunks(self, key: str) -> tuple[dict[str, Any], list[ChunkRow]] | None:
        return self.store.document_chunks(self.conn, key)
