"""Metadata filters: ``where`` checked and turned into a dialect-neutral ``Filter``.

``where={"key": value, ...}`` keeps passages whose document matches every
condition (AND). Keys and values are checked here; the store compiles the
``Filter`` to its own SQL with every value a bound parameter, so no user
string ever becomes SQL.

- ``doc_key``: a glob (``news/*.txt``, ``*東京*``), SQLite ``GLOB`` (case-sensitive);
- ``title``, ``source_type``, ``source``: the documents table's own columns, exact;
- any other key: the document's metadata (the JSONL keys other than ``text``,
  ``id``, ``title``), exact. A metadata list matches when one element does
  (``{"tags": "旅行"}`` matches ``"tags": ["旅行", "食"]``). Values given as
  strings (as the CLI's ``--where KEY=VALUE`` does) also match numbers and
  booleans by their JSON text: ``"2020"`` matches ``2020``, ``"true"`` matches ``true``;
- a list/tuple/set value means any of its elements (``{"lang": ["ja", "en"]}``).

>>> compile_where({"doc_key": "news/*", "lang": ["ja", "en"]}).conditions
(Condition(key='doc_key', values=('news/*',)), Condition(key='lang', values=('ja', 'en')))
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mitsuke.indexer.errors import QueryError
from mitsuke.indexer.store import BUILTIN_FIELDS, Condition, Filter

__all__ = ["Filter", "Condition", "compile_where", "parse_where", "BUILTIN_FIELDS"]


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


def compile_where(where: Mapping[str, Any] | None) -> Filter | None:
    """Check ``where`` and turn it into a :class:`Filter`; ``None`` or ``{}`` means no filter."""
    if where is None:
        return None
    if not isinstance(where, Mapping):
        raise QueryError(f"where must be a dict such as {{'lang': 'ja'}}, got {type(where).__name__}")
    if not where:
        return None
    conditions: list[Condition] = []
    for key, value in where.items():
        key = _check_key(key)
        values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
        if not values:
            raise QueryError(f"filter value for {key!r} is an empty list: nothing could match")
        conditions.append(Condition(key, tuple(_scalar(v, key) for v in values)))
    return Filter(tuple(conditions))
