"""What a document is, and the one rule that turns a mapping into one.

``Document`` and ``LoadFailure`` are what the loaders yield and the builder
consumes. ``document_from_mapping`` is the single place a mapping (a JSONL
line, or a dict given to ``IndexBuilder.add_documents``) becomes a
``Document``: both paths call it, so the same mapping always gives the same
document or the same failure.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mitsuke.indexer.errors import LoadError

__all__ = ["Document", "LoadFailure", "HEADED_TYPES", "RESERVED_KEYS", "check_text", "content_hash", "document_from_mapping"]

# Source types whose text carries ATX headings the chunker turns into heading paths.
HEADED_TYPES = frozenset({"markdown", "docx"})

# Keys of a mapping that become Document fields; every other key is metadata.
RESERVED_KEYS = ("text", "id", "doc_id", "title", "source", "source_type")


@dataclass(frozen=True)
class Document:
    """One document to index. ``key`` identifies it across runs (DESIGN.md invariant 7)."""

    key: str
    text: str
    title: str = ""
    source: str = ""  # file path, or "<stdin>"
    source_type: str = "text"  # text | markdown | html | jsonl | pdf | docx | csv (or a mapping's own label)
    encoding: str = "utf-8"
    metadata: dict[str, Any] = field(default_factory=dict)
    # Paged documents (PDF): offset where each page begins (see indexer.pages); () when unpaged.
    page_starts: tuple[int, ...] = ()

    @property
    def content_hash(self) -> str:
        return content_hash(self.text, self.title, self.metadata)

    @property
    def has_headings(self) -> bool:
        """Whether the text marks headings Markdown-style (Markdown, and Word files converted to it)."""
        return self.source_type in HEADED_TYPES


@dataclass(frozen=True)
class LoadFailure:
    """An input that could not become a document, and why."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


def content_hash(text: str, title: str = "", metadata: dict[str, Any] | None = None) -> str:
    """SHA-256 over text, title and metadata: equal hashes mean an unchanged document."""
    h = hashlib.sha256()
    h.update(text.encode("utf-8", "surrogatepass"))
    h.update(b"\0" + title.encode("utf-8", "surrogatepass"))
    h.update(b"\0" + json.dumps(metadata or {}, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def check_text(text: str, path: str) -> None:
    """Raise ``LoadError`` naming ``path`` if ``text`` is empty, holds NUL or looks binary."""
    if not text.strip():
        raise LoadError(path, "empty or whitespace-only document")
    if "\0" in text:
        raise LoadError(path, "contains NUL characters: a binary file, or the wrong encoding")
    sample = text[:4096]
    controls = sum(1 for c in sample if ord(c) < 32 and c not in "\t\n\r\f\v\x1b")
    if controls > max(8, len(sample) // 100):
        raise LoadError(path, "looks binary (many control characters)")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def document_from_mapping(
    obj: Mapping[str, Any],
    *,
    where: str,
    fallback_key: str | None = None,
    source: str = "",
    encoding: str = "utf-8",
) -> Document | LoadFailure:
    """The one rule from a mapping to a ``Document`` (JSONL lines and ``add_documents`` alike).

    - ``text``: required; a string that is not empty or whitespace-only, holds
      no NUL and does not look binary (``check_text``).
    - key: ``id``, else ``doc_id``. A value that is absent, null, empty or only
      whitespace counts as missing, so ``{"id": "", "doc_id": "x"}`` is keyed
      ``"x"``. A string is kept exactly (no stripping); a finite number becomes
      its text (``7`` → ``"7"``); anything else (object, array, boolean) is an
      error. With neither, the key is ``fallback_key`` (the JSONL loader passes
      ``<file key>#<line>``, ``add_documents`` ``<documents>#<position>``), or an
      error when the caller has none.
    - ``title``: absent or null → ``""``; a string as is; a number its text;
      anything else is an error.
    - ``source``: where the document came from (a string); default: ``source``
      (the JSONL file or ``<stdin>``; ``""`` for ``add_documents``).
    - ``source_type``: a non-empty string label, default ``"jsonl"``;
      ``"markdown"`` makes the chunker keep heading paths. Filter on it with
      ``--where source_type=...`` (a column, like ``source`` and ``title``).
    - every other key is metadata, kept as given (nested objects and arrays
      too); keys must be strings and values JSON.

    A bad mapping gives a ``LoadFailure`` at ``where`` (``file:line``, or
    ``<documents>#<position>``); nothing raises.

    >>> document_from_mapping({"id": "", "doc_id": "x", "text": "東京。", "lang": "ja"}, where="a.jsonl:1").key
    'x'
    >>> document_from_mapping({"id": {"a": 1}, "text": "東京。"}, where="a.jsonl:1").reason
    "'id' must be a string or a number, got dict"
    """
    if not isinstance(obj, Mapping):
        return LoadFailure(where, f"a document must be an object with a 'text' field, got {type(obj).__name__}")
    rest = dict(obj)
    text = rest.pop("text", None)
    if not isinstance(text, str):
        return LoadFailure(where, "missing or non-string 'text' field" if text is None
                           else f"'text' must be a string, got {type(text).__name__}")
    key: Any = None
    for name in ("id", "doc_id"):
        value = rest.pop(name, None)
        if key is not None or _missing(value):
            continue
        if not isinstance(value, str) and not _is_number(value):
            return LoadFailure(where, f"'{name}' must be a string or a number, got {type(value).__name__}")
        key = value
    if key is None:
        if fallback_key is None:
            return LoadFailure(where, "a document needs an 'id' or 'doc_id' (a string or a number)")
        key = fallback_key
    title = rest.pop("title", None)
    if title is not None and not isinstance(title, str) and not _is_number(title):
        return LoadFailure(where, f"'title' must be a string, got {type(title).__name__}")
    doc_source = rest.pop("source", None)
    if doc_source is not None and not isinstance(doc_source, str):
        return LoadFailure(where, f"'source' must be a string, got {type(doc_source).__name__}")
    source_type = rest.pop("source_type", None)
    if source_type is not None and (not isinstance(source_type, str) or not source_type.strip()):
        return LoadFailure(where, f"'source_type' must be a non-empty string such as 'markdown', got {source_type!r}")
    bad_keys = [k for k in rest if not isinstance(k, str)]
    if bad_keys:
        return LoadFailure(where, f"metadata keys must be strings, got {bad_keys[0]!r}")
    try:
        json.dumps(rest, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return LoadFailure(where, f"metadata must be JSON (strings, numbers, booleans, null, lists, objects): {exc}")
    try:
        check_text(text, where)
    except LoadError as exc:
        return LoadFailure(where, exc.reason)
    return Document(
        key=str(key),
        text=text,
        title="" if title is None else str(title),
        source=source if doc_source is None else doc_source,
        source_type=source_type or "jsonl",
        encoding=encoding,
        metadata=rest,
    )
