"""The tables of an index and the rows the store hands out; no dialect here.

Every dialect creates these tables (``metadata.create_all``); what a dialect
adds beside them (SQLite: the FTS5 table ``chunk_terms``) lives in its store.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import JSON, Column, ForeignKey, Index, Integer, MetaData, String, Table, Text

__all__ = [
    "metadata", "documents", "chunks", "deleted_chunks", "state", "vector_blocks", "ChunkRow", "ChunkPiece",
    "DocumentRow", "MAX_BIND_PARAMS",
    "batches", "frozen_row", "Filter", "Condition", "BUILTIN_FIELDS",
]

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
    # Paged documents (PDF): JSON list of page start offsets (indexer.pages); NULL when unpaged.
    # Added by migration 2.
    Column("page_starts", JSON(none_as_null=True), nullable=True),
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

# CRC32 of each block of ``vectors.f16`` (indexer.checksums): ``rows`` committed rows of block ``block``.
# Written in the transaction that makes the rows live; replaced whole when the file is renumbered.
vector_blocks = Table(
    "vector_blocks", metadata,
    Column("block", Integer, primary_key=True),
    Column("rows", Integer, nullable=False),
    Column("crc", Integer, nullable=False),
)

# Values bound in one statement (``IN (...)`` lists, executemany rows are not
# counted): SQLite before 3.32 refuses more than 999; 500 leaves room for the
# other parameters of the statement. The one place this number is decided.
MAX_BIND_PARAMS = 500


@dataclass(frozen=True)
class DocumentRow:
    """One document as the index holds it (its text lives in its chunks): ``mitsuke docs``."""

    id: int
    key: str
    title: str
    source: str
    source_type: str
    encoding: str
    metadata: dict[str, Any]
    n_chars: int
    chunks: int


@dataclass(frozen=True)
class ChunkRow:
    """A chunk with its document's fields, as the read side shows it."""

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
    pages: tuple[int, int] | None = None  # 1-based first and last page (paged documents only)


class ChunkPiece(NamedTuple):
    """A stored chunk of a document, as read for neighbour expansion (``search.context``)."""

    chunk_id: int
    chunk_index: int
    char_start: int
    char_end: int
    text: str


# Filterable fields of the documents table (name in ``where`` -> column); other
# ``where`` keys are looked up in the document's metadata JSON.
BUILTIN_FIELDS = {"doc_key": "key", "title": "title", "source_type": "source_type", "source": "source"}


@dataclass(frozen=True)
class Condition:
    """Documents whose ``key`` equals any of ``values`` (``doc_key``: matches any glob).

    ``key`` is ``doc_key``, another of ``BUILTIN_FIELDS`` or a metadata key; the
    values are str, int, float, bool or None, already checked by
    ``search.filters.compile_where``.
    """

    key: str
    values: tuple[Any, ...]

    @property
    def builtin(self) -> bool:
        return self.key in BUILTIN_FIELDS


@dataclass(frozen=True)
class Filter:
    """A dialect-neutral ``where``: every condition must hold (AND); each store compiles it to its SQL."""

    conditions: tuple[Condition, ...]


T = TypeVar("T")
R = TypeVar("R")


def frozen_row(cls: type[R], values: dict[str, Any]) -> R:
    """An instance of the frozen dataclass ``cls`` with every field given in ``values``, built without its ``__init__``.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``:
    ~3-10 µs for ChunkRow's or Passage's 15-17 fields, per row of every search.
    This fills ``__dict__`` directly (~0.5 µs); ``values`` must name every field
    (tests/test_reader_snapshots.py compares both ways of building).
    """
    row = object.__new__(cls)
    row.__dict__.update(values)
    return row


def batches(items: Sequence[T], size: int = MAX_BIND_PARAMS) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i:i + size]
