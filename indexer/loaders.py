"""Read files and JSONL into ``Document``s, detecting Japanese encodings.

Every problem with one input becomes a ``LoadFailure`` (path + reason) in the
stream; the caller reports it and goes on. Nothing here aborts a run.
"""
from __future__ import annotations

import codecs
import fnmatch
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, BinaryIO

from indexer.errors import LoadError

__all__ = [
    "Document",
    "LoadFailure",
    "SUFFIXES",
    "content_hash",
    "decode_bytes",
    "html_to_text",
    "iter_documents",
    "documents_from_jsonl",
]

log = logging.getLogger("mitsuke")

TEXT_SUFFIXES = {".txt", ".text"}
MARKDOWN_SUFFIXES = {".md", ".markdown"}
HTML_SUFFIXES = {".html", ".htm"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
SUFFIXES = TEXT_SUFFIXES | MARKDOWN_SUFFIXES | HTML_SUFFIXES | JSONL_SUFFIXES

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


@dataclass(frozen=True)
class Document:
    """One document to index. ``key`` identifies it across runs (DESIGN.md invariant 7)."""

    key: str
    text: str
    title: str = ""
    source: str = ""  # file path, or "<stdin>"
    source_type: str = "text"  # text | markdown | html | jsonl
    encoding: str = "utf-8"
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        return content_hash(self.text, self.title, self.metadata)


@dataclass(frozen=True)
class LoadFailure:
    """An input that could not become a document, and why."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


def content_hash(text: str, title: str = "", metadata: dict[str, Any] | None = None) -> str:
    h = hashlib.sha256()
    h.update(text.encode("utf-8", "surrogatepass"))
    h.update(b"\0" + title.encode("utf-8", "surrogatepass"))
    h.update(b"\0" + json.dumps(metadata or {}, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


# --------------------------------------------------------------------------- decoding

def _japanese_score(text: str) -> float:
    """Share of characters that are typical of real Japanese text.

    A wrong guess between CP932 and EUC-JP decodes into runs of half-width
    katakana and rare kanji; correct text is rich in hiragana and punctuation.
    """
    if not text:
        return 0.0
    good = 0
    for ch in text:
        o = ord(ch)
        if 0x3040 <= o <= 0x30FF or 0x3000 <= o <= 0x303F or o < 0x80 or 0xFF01 <= o <= 0xFF5E:
            good += 1
        elif 0xFF61 <= o <= 0xFF9F:  # half-width katakana: legal, but a mis-decode sign
            good += 0.2
        elif 0x4E00 <= o <= 0x9FFF:
            good += 0.6
    return good / len(text)


def decode_bytes(data: bytes, path: str, encoding: str | None = None) -> tuple[str, str]:
    """Decode ``data`` and return ``(text, encoding)``; raise ``LoadError`` naming ``path``.

    Order: forced encoding, BOM, NUL check (binary), strict UTF-8, the better of
    strict CP932 / EUC-JP, then charset-normalizer's best guess.
    """
    if encoding:
        try:
            return data.decode(encoding), encoding
        except (UnicodeDecodeError, LookupError) as exc:
            raise LoadError(path, f"cannot decode as {encoding}: {exc}") from None
    for bom, name in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(name), name
            except UnicodeDecodeError as exc:
                raise LoadError(path, f"has a {name} byte-order mark but does not decode: {exc}") from None
    if b"\0" in data[:65536] or b"\0" in data[-65536:]:
        raise LoadError(path, "contains NUL bytes: binary file, or UTF-16 without a byte-order mark (use --encoding)")
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    candidates: list[tuple[float, str, str]] = []
    for name in ("cp932", "euc_jp"):
        try:
            text = data.decode(name)
        except UnicodeDecodeError:
            continue
        candidates.append((_japanese_score(text), name, text))
    if candidates:
        score, name, text = max(candidates)
        if score >= 0.5:
            return text, name
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is not None and best.encoding and best.chaos < 0.3:
        return str(best), best.encoding
    raise LoadError(path, "undecodable bytes: not UTF-8, CP932 or EUC-JP (force one with --encoding)")


def _check_text(text: str, path: str) -> None:
    if not text.strip():
        raise LoadError(path, "empty or whitespace-only document")
    if "\0" in text:
        raise LoadError(path, "contains NUL characters")
    sample = text[:4096]
    controls = sum(1 for c in sample if ord(c) < 32 and c not in "\t\n\r\f\v")
    if controls > max(8, len(sample) // 100):
        raise LoadError(path, "looks binary (many control characters)")


# --------------------------------------------------------------------------- HTML

_BLOCK_TAGS = {
    "p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header", "footer",
    "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "dd", "dt", "hr", "main", "nav",
}
_HIDDEN_TAGS = {"script", "style", "noscript", "template", "head", "svg"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self._hidden = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in _HIDDEN_TAGS:
            self._hidden += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _HIDDEN_TAGS:
            self._hidden = max(0, self._hidden - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title_parts.append(data)
        elif not self._hidden:
            self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str]:
    """Visible text (block elements become line breaks) and the ``<title>``."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    text = "\n".join(line for line in lines if line)
    return text, " ".join("".join(parser.title_parts).split())


# --------------------------------------------------------------------------- JSONL

def documents_from_jsonl(
    lines: Iterable[bytes | str], source: str, encoding: str | None = None
) -> Iterator[Document | LoadFailure]:
    """Documents from JSON Lines: ``text`` required, ``id``/``doc_id``, ``title``, rest metadata."""
    for lineno, raw in enumerate(lines, 1):
        where = f"{source}:{lineno}"
        try:
            line = raw if isinstance(raw, str) else decode_bytes(raw, where, encoding or "utf-8")[0]
        except LoadError as exc:
            yield LoadFailure(where, exc.reason)
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield LoadFailure(where, f"invalid JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(obj, dict):
            yield LoadFailure(where, "a JSONL document must be an object with a 'text' field")
            continue
        text = obj.pop("text", None)
        if not isinstance(text, str):
            yield LoadFailure(where, "missing or non-string 'text' field")
            continue
        key = obj.pop("id", None)
        alt = obj.pop("doc_id", None)
        key = key if key is not None else alt
        if key is None:
            key = f"{source}#{lineno}"
        title = obj.pop("title", "")
        try:
            _check_text(text, where)
        except LoadError as exc:
            yield LoadFailure(where, exc.reason)
            continue
        yield Document(
            key=str(key),
            text=text,
            title=str(title) if title is not None else "",
            source=source,
            source_type="jsonl",
            encoding=encoding or "utf-8",
            metadata=obj,
        )


# --------------------------------------------------------------------------- files

def _load_file(path: Path, key: str, encoding: str | None) -> Iterator[Document | LoadFailure]:
    spath = str(path)
    suffix = path.suffix.lower()
    try:
        if suffix in JSONL_SUFFIXES:
            with open(path, "rb") as fh:
                for item in documents_from_jsonl(fh, spath, encoding):
                    yield item
            return
        data = path.read_bytes()
    except OSError as exc:
        yield LoadFailure(spath, f"cannot read: {exc.strerror or exc}")
        return
    try:
        text, used = decode_bytes(data, spath, encoding)
        title = path.stem
        source_type = "text"
        if suffix in HTML_SUFFIXES:
            text, html_title = html_to_text(text)
            title = html_title or title
            source_type = "html"
        elif suffix in MARKDOWN_SUFFIXES:
            source_type = "markdown"
        _check_text(text, spath)
    except LoadError as exc:
        yield LoadFailure(spath, exc.reason)
        return
    yield Document(key=key, text=text, title=title, source=spath, source_type=source_type, encoding=used)


def _matches(rel: str, patterns: tuple[str, ...]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def _walk(root: Path, failures: list[LoadFailure]) -> Iterator[Path]:
    """Files under ``root`` in a stable order, following directory symlinks once."""
    seen: set[str] = set()
    stack = [root]
    while stack:
        directory = stack.pop()
        real = os.path.realpath(directory)
        if real in seen:
            failures.append(LoadFailure(str(directory), "symlink loop: directory already visited"))
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            failures.append(LoadFailure(str(directory), f"cannot list directory: {exc.strerror or exc}"))
            continue
        subdirs = []
        for entry in entries:
            p = Path(entry.path)
            try:
                if entry.is_dir():
                    subdirs.append(p)
                elif entry.is_file():
                    yield p
                elif entry.is_symlink():
                    failures.append(LoadFailure(str(p), "broken symlink or symlink loop"))
            except OSError as exc:
                failures.append(LoadFailure(str(p), f"cannot stat: {exc.strerror or exc}"))
        stack.extend(reversed(subdirs))


def iter_documents(
    paths: Iterable[str | os.PathLike[str]],
    *,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    encoding: str | None = None,
    stdin: BinaryIO | None = None,
) -> Iterator[Document | LoadFailure]:
    """Yield a ``Document`` or a ``LoadFailure`` for every input under ``paths``.

    A directory is walked recursively and its files keyed by their path relative
    to it (``sub/a.txt``); a file given directly is keyed by its name; ``-`` reads
    JSONL from standard input. Only known suffixes are read from directories
    (``SUFFIXES``) unless ``include`` globs say otherwise; ``exclude`` globs win.
    """
    for raw in paths:
        if str(raw) == "-":
            stream = stdin if stdin is not None else sys.stdin.buffer
            yield from documents_from_jsonl(stream, "<stdin>", encoding)
            continue
        path = Path(raw)
        if not path.exists() and not path.is_symlink():
            yield LoadFailure(str(path), "no such file or directory")
            continue
        if path.is_dir():
            failures: list[LoadFailure] = []
            for file in _walk(path, failures):
                rel = file.relative_to(path).as_posix()
                if exclude and _matches(rel, exclude):
                    continue
                if include:
                    if not _matches(rel, include):
                        continue
                elif file.suffix.lower() not in SUFFIXES:
                    continue
                yield from _load_file(file, rel, encoding)
                yield from failures
                failures.clear()
            yield from failures
        elif path.is_file():
            yield from _load_file(path, path.name, encoding)
        else:
            yield LoadFailure(str(path), "not a regular file (broken symlink, symlink loop, or device)")
