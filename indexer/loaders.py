"""Read files and JSONL into ``Document``s, detecting Japanese encodings.

PDF, Word (.docx) and CSV/TSV files are handed to ``indexer.formats``.

Every problem with one input becomes a ``LoadFailure`` (path + reason) in the
stream; the caller reports it and goes on. Nothing here aborts a run.
"""
from __future__ import annotations

import codecs
import errno
import fnmatch
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import BinaryIO

from mitsuke.indexer.documents import Document, LoadFailure, check_text, content_hash, document_from_mapping
from mitsuke.indexer.decoding import BOMS, decode_bytes, normal_encoding_name
from mitsuke.indexer.errors import LoadError
from mitsuke.indexer.formats import FORMAT_SUFFIXES, FormatOptions, load_format

__all__ = [
    "Document",
    "LoadFailure",
    "SUFFIXES",
    "content_hash",
    "decode_bytes",
    "html_to_text",
    "iter_documents",
    "documents_from_jsonl",
    "FormatOptions",
]

log = logging.getLogger("mitsuke")

TEXT_SUFFIXES = {".txt", ".text"}
MARKDOWN_SUFFIXES = {".md", ".markdown"}
HTML_SUFFIXES = {".html", ".htm"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
SUFFIXES = TEXT_SUFFIXES | MARKDOWN_SUFFIXES | HTML_SUFFIXES | JSONL_SUFFIXES | FORMAT_SUFFIXES

# --------------------------------------------------------------------------- HTML

_BLOCK_TAGS = {
    "p", "div", "br", "li", "ul", "ol", "tr", "td", "th", "table", "section", "article", "header", "footer",
    "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "dd", "dt", "dl", "hr", "main", "nav", "aside",
    "figure", "figcaption", "form", "fieldset", "address", "details", "summary", "caption",
}
_HIDDEN_TAGS = {"script", "style", "noscript", "template", "svg", "iframe", "object"}
_META_CHARSET_RE = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self._hidden: list[str] = []
        self._in_title = False
        self._in_head = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag == "head":
            self._in_head = True
        elif tag == "body":
            self._in_head = False  # a page that never closes <head> still shows its body
        elif tag in _HIDDEN_TAGS:
            self._hidden.append(tag)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_TAGS:  # <br/>, <hr/>; a self-closed <svg/> hides nothing
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag == "head":
            self._in_head = False
        elif tag in _HIDDEN_TAGS:
            if tag in self._hidden:  # close up to the matching open tag
                while self._hidden.pop() != tag:
                    pass
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title_parts.append(data)
        elif not self._hidden and not self._in_head:
            self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str]:
    """Visible text (block elements become line breaks) and the ``<title>``.

    >>> html_to_text("<title>豊岡市</title><script>x()</script><p>円山川が<b>流れる</b>。</p>")
    ('円山川が流れる。', '豊岡市')
    """
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    text = "\n".join(line for line in lines if line)
    return text, " ".join("".join(parser.title_parts).split())


def _declared_charset(data: bytes) -> str | None:
    """The ``<meta charset>`` of an HTML page, if it names a codec Python knows."""
    m = _META_CHARSET_RE.search(data[:4096])
    if not m:
        return None
    try:
        return codecs.lookup(m.group(1).decode("ascii")).name
    except (LookupError, UnicodeDecodeError):
        return None


# --------------------------------------------------------------------------- JSONL

def documents_from_jsonl(
    lines: Iterable[bytes | str], source: str, encoding: str | None = None, key_prefix: str | None = None
) -> Iterator[Document | LoadFailure]:
    """Documents from JSON Lines, one object per line, by ``document_from_mapping``'s rule.

    ``text`` required, ``id``/``doc_id`` the key, ``title``, ``source``,
    ``source_type``, every other key metadata. A line without a usable
    ``id``/``doc_id`` is keyed ``<key_prefix>#<line number>`` (``key_prefix``
    defaults to ``source``). Each bad line is one ``LoadFailure`` naming
    ``source:line``; the others still load.
    """
    prefix = source if key_prefix is None else key_prefix
    for lineno, raw in enumerate(lines, 1):
        where = f"{source}:{lineno}"
        used = encoding or "utf-8"
        try:
            if isinstance(raw, str):
                line = raw
            else:
                if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                line, used = decode_bytes(raw, where, encoding)
        except LoadError as exc:
            yield LoadFailure(where, exc.reason)
            continue
        if lineno == 1:
            line = line.lstrip("\ufeff")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield LoadFailure(where, f"invalid JSON: {exc.msg} at column {exc.colno}")
            continue
        except RecursionError:
            yield LoadFailure(where, "invalid JSON: nested too deeply")
            continue
        if not isinstance(obj, dict):
            yield LoadFailure(where, f"a JSONL document must be an object with a 'text' field, "
                                     f"got {type(obj).__name__}")
            continue
        yield document_from_mapping(obj, where=where, fallback_key=f"{prefix}#{lineno}", source=source,
                                    encoding=used)


# --------------------------------------------------------------------------- files

def _load_file(path: Path, key: str, encoding: str | None,
               formats: FormatOptions | None = None) -> Iterator[Document | LoadFailure]:
    spath = str(path)
    suffix = path.suffix.lower()
    if suffix in FORMAT_SUFFIXES:
        yield from load_format(path, key, encoding, formats)
        return
    try:
        if suffix in JSONL_SUFFIXES:
            with open(path, "rb") as fh:
                yield from documents_from_jsonl(fh, spath, encoding, key_prefix=key)
            return
        data = path.read_bytes()
    except OSError as exc:
        yield LoadFailure(spath, f"cannot read: {exc.strerror or exc}")
        return
    try:
        forced = encoding
        if forced is None and suffix in HTML_SUFFIXES and not data.startswith(tuple(b for b, _ in BOMS)):
            declared = _declared_charset(data)
            if declared:
                try:
                    data.decode(declared)
                    forced = declared
                except UnicodeDecodeError:
                    pass  # the page lies about its charset: detect it instead
        text, used = decode_bytes(data, spath, forced)
        title = path.stem
        source_type = "text"
        if suffix in HTML_SUFFIXES:
            check_text(text, spath)  # binary masquerading as .html fails here, not as "empty"
            text, html_title = html_to_text(text)
            title = html_title or title
            source_type = "html"
        elif suffix in MARKDOWN_SUFFIXES:
            source_type = "markdown"
        check_text(text, spath)
    except LoadError as exc:
        yield LoadFailure(spath, exc.reason)
        return
    yield Document(key=key, text=text, title=title, source=spath, source_type=source_type, encoding=used)


def _matches(rel: str, patterns: tuple[str, ...]) -> bool:
    """A glob matches the path relative to the root (``sub/*.md``) or the bare name (``*.md``)."""
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


# Version-control internals are never documents.
_SKIP_DIRS = {".git", ".hg", ".svn"}


def _walk(root: Path) -> Iterator[tuple[Path, str | None]]:
    """``(path, None)`` for each file under ``root`` in a stable order, or ``(path, reason)``
    for an entry that cannot be read. Directory symlinks are followed, each real
    directory once: a symlink back to an ancestor is reported as a loop."""
    stack: list[tuple[Path, frozenset[str]]] = [(root, frozenset())]
    seen: dict[str, Path] = {}
    while stack:
        directory, ancestors = stack.pop()
        real = os.path.realpath(directory)
        if real in ancestors:
            yield directory, "symlink loop: links back to a directory above it"
            continue
        if real in seen:  # two links to one directory: read it once (and never 2^n times)
            log.info("skipped %s: same directory as %s, already read", directory, seen[real])
            continue
        seen[real] = directory
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            yield directory, f"cannot list directory: {exc.strerror or exc}"
            continue
        subdirs = []
        for entry in entries:
            p = Path(entry.path)
            try:
                if entry.is_dir():
                    if entry.name not in _SKIP_DIRS:
                        subdirs.append((p, ancestors | {real}))
                elif entry.is_file():
                    yield p, None
                elif entry.is_symlink():
                    target = os.readlink(p)
                    try:
                        os.stat(p)
                        yield p, f"not a regular file (symlink to {target})"
                    except OSError as exc:
                        what = "symlink loop" if exc.errno == errno.ELOOP else "broken symlink"
                        yield p, f"{what} (points to {target})"
                else:
                    yield p, "not a regular file (a FIFO, socket or device)"
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    yield p, f"symlink loop (points to {os.readlink(p)})"
                else:
                    yield p, f"cannot stat: {exc.strerror or exc}"
        stack.extend(reversed(subdirs))


def _excluded_dir(rel: str, exclude: tuple[str, ...]) -> bool:
    return bool(exclude) and (_matches(rel, exclude) or _matches(rel + "/", exclude))


def iter_documents(
    paths: Iterable[str | os.PathLike[str]],
    *,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    encoding: str | None = None,
    stdin: BinaryIO | None = None,
    formats: FormatOptions | None = None,
) -> Iterator[Document | LoadFailure]:
    """Yield a ``Document`` or a ``LoadFailure`` for every input under ``paths``.

    A directory is walked recursively and its files keyed by their path relative
    to it (``sub/a.txt``); a file given directly is keyed by its name; ``-`` reads
    JSONL from standard input. Only known suffixes are read from directories
    (``SUFFIXES``) unless ``include`` globs say otherwise; ``exclude`` globs win.
    Globs match the relative path or the file name (``*.md``, ``notes/*``).
    ``formats`` says how PDF and CSV/TSV files are read (``FormatOptions``).
    Nothing here raises for a bad input; an unknown ``encoding`` raises
    ``LoadError`` before anything is read.

    >>> [d.key for d in iter_documents(["data"], include=("豊岡*",))]
    ['豊岡市.md']
    """
    if encoding:
        encoding = normal_encoding_name(encoding)
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
            yield from _iter_directory(path, include, exclude, encoding, formats)
        elif path.is_file():
            yield from _load_file(path, path.name, encoding, formats)
        else:
            yield LoadFailure(str(path), "not a regular file (broken symlink, symlink loop, FIFO or device)")


def _iter_directory(root: Path, include: tuple[str, ...], exclude: tuple[str, ...],
                    encoding: str | None, formats: FormatOptions | None = None) -> Iterator[Document | LoadFailure]:
    for file, problem in _walk(root):
        rel = file.relative_to(root).as_posix()
        if exclude and (_matches(rel, exclude) or any(_excluded_dir(d, exclude) for d in _parents(rel))):
            continue
        if problem is None or not problem.startswith(("cannot list", "symlink loop: links")):
            # A file-level entry only matters if it would have been read.
            if include:
                if not _matches(rel, include):
                    continue
            elif file.suffix.lower() not in SUFFIXES:
                continue
        if problem is not None:
            yield LoadFailure(str(file), problem)
        else:
            yield from _load_file(file, rel, encoding, formats)


def _parents(rel: str) -> Iterator[str]:
    parts = rel.split("/")[:-1]
    for k in range(1, len(parts) + 1):
        yield "/".join(parts[:k])
