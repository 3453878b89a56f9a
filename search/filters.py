"""Metadata filters -> bound SQL. Keys are checked; values are always parameters."""
from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Connection, text

from indexer.errors import QueryError

__all__ = ["matching_chunk_ids", "parse_where"]

_KEY_RE = re.compile(r"^[A-Za-z0-9_\-.\u3040-\u30ff\u4e00-\u9fff]+$")
# Built-in fields of the documents table; other keys are looked up in the metadata JSON.
_BUILTIN = {"doc_key": "d.key", "title": "d.title", "source_type": "d.source_type", "source": "d.source"}


def parse_where(items: list[str]) -> dict[str, str]:
    """``["lang=ja", "title=東京"]`` -> dict; a missing ``=`` is an error naming the item."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise QueryError(f"--where {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def matching_chunk_ids(conn: Connection, where: dict[str, Any]) -> set[int]:
    """Ids of chunks whose document matches every condition of ``where``.

    ``doc_key`` takes a glob (``news/*.txt``); other values match exactly
    (JSON numbers and booleans compare by their text form).
    """
    clauses: list[str] = []
    params: dict[str, Any] = {}
    for i, (key, value) in enumerate(where.items()):
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise QueryError(f"filter key {key!r} is not a valid metadata key")
        p = f"v{i}"
        if key == "doc_key":
            clauses.append(f"d.key GLOB :{p}")
            params[p] = str(value)
        elif key in _BUILTIN:
            clauses.append(f"{_BUILTIN[key]} = :{p}")
            params[p] = str(value)
        else:
            k = f"k{i}"
            params[k] = f'$."{key}"'
            if isinstance(value, bool):
                clauses.append(f"json_extract(d.meta, :{k}) = :{p}")
                params[p] = 1 if value else 0
            elif isinstance(value, (int, float)):
                clauses.append(f"json_extract(d.meta, :{k}) = :{p}")
                params[p] = value
            else:
                clauses.append(f"CAST(json_extract(d.meta, :{k}) AS TEXT) = :{p}")
                params[p] = str(value)
    sql = "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    return {int(r[0]) for r in conn.execute(text(sql), params)}
