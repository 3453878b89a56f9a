"""What a dialect of the store supplies: the hooks ``SqlStore`` calls and a subclass implements.

``SqliteStore`` (``sqlite.py``) implements them for an index directory; a
second dialect (PostgreSQL) implements the same list and inherits every
other statement from ``SqlStore`` unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.sql.elements import ColumnElement, TextClause
from sqlalchemy.sql.selectable import NamedFromClause

from mitsuke.indexer.store.schema import Filter

__all__ = ["DialectHooks"]


class DialectHooks:
    """The dialect-specific part of a store (see the package docstring)."""

    def _prepare(self) -> None:
        """Dialect: set up the database before the first write transaction (SQLite: WAL)."""

    def _create_lexical(self, conn: Connection) -> None:
        """Dialect: create the lexical index of chunk terms (migration 1)."""
        raise NotImplementedError

    def _insert_terms(self, conn: Connection, ids: Sequence[int], terms: Sequence[str]) -> None:
        """Dialect: index the space-joined lexical ``terms`` of the chunks ``ids``."""
        raise NotImplementedError

    def _delete_terms(self, conn: Connection, ids: Sequence[int]) -> None:
        """Dialect: drop the lexical terms of the chunks ``ids``."""
        raise NotImplementedError

    def _create_substrings(self, conn: Connection) -> None:
        """Dialect: create (and fill from ``chunks``) the substring index of passage texts (migration 3)."""
        raise NotImplementedError

    def _insert_substrings(self, conn: Connection, rows: Sequence[tuple[int, str]]) -> None:
        """Dialect: index the (chunk id, text) ``rows`` for substring matching."""
        raise NotImplementedError

    def _delete_substrings(self, conn: Connection, ids: Sequence[int]) -> None:
        """Dialect: drop the chunks ``ids`` from the substring index (their rows still exist)."""
        raise NotImplementedError

    def _after_migrate(self, conn: Connection) -> None:
        """Dialect: checks a writer makes once the schema is current (SQLite: the substring form)."""

    def has_substrings(self, conn: Connection) -> bool:
        """Dialect: whether this index has the substring index (indexes older than migration 3 have not)."""
        raise NotImplementedError

    def substring_bm25(self, conn: Connection, phrases: Sequence[str], k: int, flt: Filter | None = None
                       ) -> list[tuple[int, float]]:
        """Dialect: the ``k`` passages whose normalised text holds any of ``phrases``, by BM25 (higher better)."""
        raise NotImplementedError

    def next_chunk_id(self, conn: Connection) -> int:
        """Dialect: the id the next chunk gets; ids are never reused (invariant 3)."""
        raise NotImplementedError

    def bm25(self, conn: Connection, terms: Sequence[str], k: int, flt: Filter | None = None
             ) -> list[tuple[int, float]]:
        """Dialect: the ``k`` passages holding any of ``terms`` with the best Okapi BM25 score.

        (chunk id, score; higher is better), ties broken by chunk id; with
        ``flt`` only the matching passages. Scores are FTS5's bm25() with
        k1 = 1.2, b = 0.75, negated; another dialect must give the same numbers.
        """
        raise NotImplementedError

    def term_doc_freq(self, conn: Connection, terms: Sequence[str]) -> dict[str, int]:
        """Dialect: how many passages hold each of ``terms`` (absent terms are left out)."""
        raise NotImplementedError

    def _glob(self, column: ColumnElement[Any], pattern: str) -> ColumnElement[bool]:
        """Dialect: ``column`` matches the case-sensitive glob ``pattern`` (``*``, ``?``, ``[...]``)."""
        raise NotImplementedError

    def _metadata_match(self, d: NamedFromClause, key: str, value: Any, tag: str
                        ) -> ColumnElement[bool] | TextClause:
        """Dialect: the metadata JSON of ``d`` holds ``value`` at ``key`` (see ``search.filters``).

        ``tag`` makes the statement's bound parameter names unique.
        """
        raise NotImplementedError

    def metadata_keys(self, conn: Connection) -> set[str]:
        """Dialect: the top-level metadata keys at least one document has (``mitsuke search --where`` warns)."""
        raise NotImplementedError

    def quick_check(self, conn: Connection) -> list[str]:
        """Dialect: the database engine's own consistency check (SQLite: quick_check); problems found, [] if none."""
        return []
