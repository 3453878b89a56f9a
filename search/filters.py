"""Metadata filters -> bound SQL.

``where={"key": value, ...}`` keeps passages whose document matches every
condition (AND). Keys are checked and values are always bound parameters, so
no user string ever becomes SQL.

- ``doc_key``: a glob (``news/*.txt``, ``*東京*``), SQLite ``GLOB`` (case-sensitive);
- ``title``, ``source_type``, ``source``: the documents table's own columns, exact;
- any other key: the document's metadata (the JSONL keys other than ``text``,
  ``id``, ``title``), exact. A metadata list matches when one element does
  (``{"tags": "旅行"}`` matches ``"tags": ["旅行", "食"]``). Values given as
  strings (as the CLI's ``--where KEY=VALUE`` does) also match numbers and
  booleans by their JSON text: ``"2020"`` matches ``2020``, ``"true"`` matches ``true``;
- a list/tuple/set value means any of its elements (``{"lang": ["ja", "en"]}``).

>>> flt = compile_where({"doc_key": "news/*", "lang": "ja"})
>>> flt.params["v0_0"], flt.params["k1"]
('news/*', '$."lang"')
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from mitsuke.indexer.errors import QueryError

__all__ = ["Filter", "compile_where", "parse_where", "filtered_vectors", "matching_chunk_ids", "BUILTIN_FIELDS"]

# Built-in fields of the documents table; other keys are looked up in the metadata JSON.
BUILTIN_FIELDS = {"doc_key": "d.key", "title": "d.title", "source_type": "d.source_type", "source": "d.source"}
# Chunk ids of the documents matching a clause: the one subquery every leg filters with.
_CHUNKS_SQL = "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE {clause}"


@dataclass(frozen=True)
class Filter:
    """A compiled ``where``: a boolean SQL expression over ``d`` (documents) and its bound parameters."""

    clause: str
    params: dict[str, Any]

    @property
    def chunk_ids_sql(self) -> str:
        """``SELECT c.id ...`` of the matching chunks, for ``rowid IN (...)``."""
        return _CHUNKS_SQL.format(clause=self.clause)


def parse_where(items: list[str]) -> dict[str, str]:
    """``["lang=ja", "title=東京"]`` -> dict; a missing ``=`` is an error naming the item.

    A key given twice keeps the last value (as the shell reader would expect).
    """
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise QueryError(f"--where {item!r}: expected KEY=VALUE, e.g. --where lang=ja or --where 'doc_key=news/*'")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise QueryError(f"--where {item!r}: the key before '=' is empty")
        out[key] = value
    return out


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise QueryError(f"filter key {key!r} must be a non-empty string")
    # The key goes inside a quoted JSON path ($."key"): a quote or backslash would end it early.
    if '"' in key or "\\" in key or any(ord(ch) < 0x20 for ch in key):
        raise QueryError(f"filter key {key!r} contains a quote, backslash or control character; "
                         "metadata keys used in filters must not")
    return key


def _scalar(value: Any, where_key: str) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise QueryError(f"filter value for {where_key!r} must be a string, number, boolean, None or a list of "
                     f"those, got {type(value).__name__}")


def _condition(key: str, value: Any, p: str, path_param: str, params: dict[str, Any]) -> str:
    """SQL for one (key, scalar value) pair; ``p`` names the value's parameter."""
    if key == "doc_key":
        params[p] = str(value)
        return f"d.key GLOB :{p}"
    if key in BUILTIN_FIELDS:
        params[p] = str(value)
        return f"{BUILTIN_FIELDS[key]} = :{p}"
    if value is None:
        return f"json_type(d.meta, :{path_param}) = 'null'"
    # One element of the value at the path: the value itself, or each element of a list.
    # (json_each also walks an object's members: those carry a text key and are left out.)
    elems = (f"SELECT 1 FROM (SELECT CASE json_each.type WHEN 'true' THEN 1 WHEN 'false' THEN 0 "
             f"ELSE json_each.value END AS v, json_each.type AS t FROM json_each(d.meta, :{path_param}) "
             f"WHERE typeof(json_each.key) != 'text')")
    if isinstance(value, bool):
        params[p] = 1 if value else 0
        return f"EXISTS ({elems} WHERE t IN ('true', 'false') AND v = :{p})"
    if isinstance(value, (int, float)):
        params[p] = value
        return f"EXISTS ({elems} WHERE t IN ('integer', 'real') AND v = :{p})"
    params[p] = value
    # Strings also match numbers and booleans by their JSON text (the CLI passes strings).
    return (f"EXISTS ({elems} WHERE (t = 'text' AND v = :{p}) OR (t IN ('integer', 'real') AND CAST(v AS TEXT) = :{p})"
            f" OR (t = 'true' AND :{p} = 'true') OR (t = 'false' AND :{p} = 'false'))")


def compile_where(where: Mapping[str, Any] | None) -> Filter | None:
    """Turn ``where`` into a :class:`Filter`; ``None`` or ``{}`` means no filter."""
    if where is None:
        return None
    if not isinstance(where, Mapping):
        raise QueryError(f"where must be a dict such as {{'lang': 'ja'}}, got {type(where).__name__}")
    if not where:
        return None
    clauses: list[str] = []
    params: dict[str, Any] = {}
    for i, (key, value) in enumerate(where.items()):
        key = _check_key(key)
        path_param = f"k{i}"
        if key not in BUILTIN_FIELDS:
            params[path_param] = f'$."{key}"'
        values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
        if not values:
            raise QueryError(f"filter value for {key!r} is an empty list: nothing could match")
        ors = [_condition(key, _scalar(v, key), f"v{i}_{j}", path_param, params) for j, v in enumerate(values)]
        clauses.append("(" + " OR ".join(ors) + ")")
    return Filter(" AND ".join(clauses), params)


def filtered_vectors(conn: Connection, flt: Filter) -> list[tuple[int, int | None]]:
    """(chunk id, vector row) of every chunk matching ``flt``, by chunk id."""
    sql = ("SELECT c.id, c.vector_row FROM chunks c JOIN documents d ON d.id = c.doc_id "
           f"WHERE {flt.clause} ORDER BY c.id")
    return [(int(a), None if b is None else int(b)) for a, b in conn.execute(text(sql), flt.params)]


def matching_chunk_ids(conn: Connection, where: Mapping[str, Any]) -> set[int]:
    """Ids of chunks whose document matches every condition of ``where``."""
    flt = compile_where(where)
    if flt is None:
        return {int(r[0]) for r in conn.execute(text("SELECT id FROM chunks"))}
    return {cid for cid, _ in filtered_vectors(conn, flt)}
