"""The metadata store: the one place in mitsuke that writes SQL.

Documents, chunks, lexical terms and index state live in SQL behind
SQLAlchemy; the store is the source of truth (DESIGN.md invariant 1) and its
schema evolves by numbered migrations recorded in ``schema_version``. No
other module builds SQL text or SQLAlchemy expressions on these tables
(``tests/test_store_seam.py`` checks it).

Layout - the seam a second dialect plugs into:

- ``schema``: the tables, the rows handed out (``ChunkRow``, ``ChunkPiece``),
  the dialect-neutral ``Filter`` that ``search.filters`` builds from a
  ``where``, and ``MAX_BIND_PARAMS``, the one batch size for ``IN`` lists.
- ``base.SqlStore``: everything written in SQLAlchemy Core that any dialect
  runs unchanged - state, generation and epoch, document and chunk writes,
  rows by id, vector rows, neighbours for context, filtered ids and vectors,
  counts, evaluation spans - plus ``begin()`` (a write transaction) and
  ``snapshot()`` (a ``Snapshot``: one read transaction = one generation).
- ``listing.ListingMixin``: documents by key for a reader to browse (``mitsuke serve``).
- ``paging.PagingMixin``: page starts of paged documents (PDF), pages of a chunk.
- ``hooks.DialectHooks``: the list of what a dialect supplies.
- ``sqlite.SqliteStore``: SQLite's own parts - connection PRAGMAs, WAL, the
  BEGIN handling that makes a snapshot consistent, the FTS5 tables
  ``chunk_terms`` (bm25(), fts5vocab) and ``chunk_trigrams`` (substrings),
  ``sqlite_sequence``, GLOB and ``json_each`` filters.

A PostgreSQL store is a subclass of ``SqlStore`` that supplies an engine
(REPEATABLE READ for ``snapshot()``) and the hooks of ``hooks.DialectHooks``:
``_prepare``, ``_create_lexical``, ``_insert_terms``, ``_delete_terms``,
``_create_substrings``, ``_insert_substrings``, ``_delete_substrings``,
``has_substrings``, ``substring_bm25``, ``next_chunk_id``, ``bm25`` (the same
scores as FTS5's), ``term_doc_freq``, ``_glob`` and ``_metadata_match``.

>>> from mitsuke.indexer.store import MetadataStore
>>> store = MetadataStore("idx/meta.sqlite", readonly=True)   # doctest: +SKIP
>>> with store.snapshot() as snap:                           # doctest: +SKIP
...     print(snap.generation, snap.counts())
"""
from __future__ import annotations

from mitsuke.indexer.store.base import MIGRATIONS, SCHEMA_VERSION, Snapshot, SqlStore
from mitsuke.indexer.store.schema import BUILTIN_FIELDS, MAX_BIND_PARAMS, ChunkPiece, ChunkRow, Condition, Filter
from mitsuke.indexer.store.sqlite import SqliteStore

__all__ = [
    "SqlStore", "SqliteStore", "MetadataStore", "Snapshot", "ChunkRow", "ChunkPiece", "Filter", "Condition",
    "BUILTIN_FIELDS", "MAX_BIND_PARAMS", "MIGRATIONS", "SCHEMA_VERSION",
]

# The store of an index directory (the name the builder and the Searcher use).
MetadataStore = SqliteStore
