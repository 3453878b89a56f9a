"""Read files and JSONL into ``Document``s, detecting Japanese encodings.

Every problem with one input becomes a ``LoadFailure`` (path + reason) in the
stream; the caller reports it and goes on. Nothing here aborts a run.
"""
from __future__ import annotations

import codecs
import errno
import fnmatch
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, BinaryIO

from mitsuke.indexer.errors import LoadError

__all__ = [
    "Document",
    "LoadFailure",
    "SUFFIXES",
    "content_hash",
    "decode_bytes",
    "html_to_text",
    "iter_documents",
    "documents_from_jsonl",
    "FileInput",
    "list_inputs",
    "load_input",
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
    """How much ``text`` looks like real Japanese (or ASCII), from 0 to 1.

    Telling CP932 from EUC-JP: EUC-JP read as CP932 turns every kana into
    pairs of half-width katakana (``の`` A4 CE → ``､ﾎ``); CP932 read as EUC-JP
    fails outright on its kana (lead byte 0x82) or turns into runs of kanji
    with no kana at all. Real text is rich in hiragana and punctuation, so
    kana count fully, kanji partly and half-width katakana little.
    """
    if not text:
        return 0.0
    sample = text[:20000]
    good = 0.0
    for ch in sample:
        o = ord(ch)
        if 0x20 <= o < 0x7F or ch in "\t\n\r" or 0x3000 <= o <= 0x30FF or 0xFF01 <= o <= 0xFF5E:
            good += 1
        elif 0x4E00 <= o <= 0x9FFF:
            good += 0.6
        elif 0xFF61 <= o <= 0xFF9F:  # half-width katakana: legal, but the mark of a mis-decode
            good += 0.25
    return good / len(sample)


def _normal_name(encoding: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise LoadError("--encoding", f"unknown encoding {encoding!r}: use a Python codec name such as "
                                      "utf-8, cp932, euc_jp or utf-16") from None


def decode_bytes(data: bytes, path: str, encoding: str | None = None) -> tuple[str, str]:
    """Decode ``data`` and return ``(text, encoding)``; raise ``LoadError`` naming ``path``.

    Order: forced encoding, byte-order mark, NUL bytes (binary, unless the
    whole thing is BOM-less UTF-16 Japanese), strict UTF-8, the more
    Japanese-looking of strict CP932 / EUC-JP, then charset-normalizer's guess.

    >>> decode_bytes("豊岡市の気候".encode("cp932"), "a.txt")
    ('豊岡市の気候', 'cp932')
    >>> decode_bytes("豊岡市の気候".encode("euc_jp"), "a.txt")
    ('豊岡市の気候', 'euc_jp')
    """
    if encoding:
        name = _normal_name(encoding)
        try:
            return data.decode(name), name
        except UnicodeDecodeError as exc:
            raise LoadError(path, f"cannot decode as {name}: {exc.reason} at byte {exc.start}") from None
    for bom, name in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(name), name
            except UnicodeDecodeError as exc:
                raise LoadError(path, f"has a {name} byte-order mark but does not decode: {exc.reason} "
                                      f"at byte {exc.start}") from None
    if b"\0" in data:
        utf16 = _bomless_utf16(data)
        if utf16 is not None:
            return utf16
        raise LoadError(path, "contains NUL bytes: a binary file (or UTF-16 without a byte-order mark: "
                              "force it with --encoding utf-16-le)")
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
        # A strict CP932/EUC-JP decode that reads like Japanese is trusted; a
        # poor one is only kept if charset-normalizer has nothing better.
        if score >= 0.3:
            return text, name
    from charset_normalizer import from_bytes

    utf16 = _bomless_utf16(data)
    if utf16 is not None:
        return utf16
    # Last resort for text in some other encoding; random high bytes also
    # "decode" in single-byte code pages, so demand a recognisable language.
    best = from_bytes(data).best()
    if best is not None and best.encoding and best.chaos < 0.2 and best.coherence >= 0.1:
        try:
            name = codecs.lookup(best.encoding).name
        except LookupError:
            name = best.encoding
        return str(best), name
    if candidates:
        score, name, text = max(candidates)
        return text, name
    raise LoadError(path, "undecodable bytes: not UTF-8, CP932 or EUC-JP (force an encoding with --encoding)")


def _bomless_utf16(data: bytes) -> tuple[str, str] | None:
    """UTF-16 text without a byte-order mark, recognised only when it reads as Japanese."""
    if len(data) % 2:
        return None
    for name in ("utf-16-le", "utf-16-be"):
        try:
            text = data.decode(name)
        except UnicodeDecodeError:
            continue
        # Random bytes read as UTF-16 land all over the code space (score ~0.2);
        # Japanese lands on kana and kanji.
        if "\0" not in text and _japanese_score(text) >= 0.7:
            return text, name
    return None


def _check_text(text: str, path: str) -> None:
    if not text.strip():
        raise LoadError(path, "empty or whitespace-only document")
    if "\0" in text:
        raise LoadError(path, "contains NUL characters: a binary file, or the wrong encoding")
    sample = text[:4096]
    controls = sum(1 for c in sample if ord(c) < 32 and c not in "\t\n\r\f\v\x1b")
    if controls > max(8, len(sample) // 100):
        raise LoadError(path, "looks binary (many control characters)")


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
    """Documents from JSON Lines: ``text`` required, ``id``/``doc_id``, ``title``, rest metadata.

    A line without ``id``/``doc_id`` is keyed ``<key_prefix>#<line number>``
    (``key_prefix`` defaults to ``source``). Each bad line is one
    ``LoadFailure`` naming ``source:line``; the others still load.
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
        text = obj.pop("text", None)
        if not isinstance(text, str):
            yield LoadFailure(where, "missing or non-string 'text' field" if text is None
                              else f"'text' must be a string, got {type(text).__name__}")
            continue
        key = obj.pop("id", None)
        alt = obj.pop("doc_id", None)
        key = key if key not in (None, "") else alt
        if key in (None, ""):
            key = f"{prefix}#{lineno}"
        elif isinstance(key, (dict, list)):
            yield LoadFailure(where, f"'id'/'doc_id' must be a string or a number, got {type(key).__name__}")
            continue
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
            encoding=used,
            metadata=obj,
        )


# --------------------------------------------------------------------------- files

def _load_file(path: Path, key: str, encoding: str | None) -> Iterator[Document | LoadFailure]:
    spath = str(path)
    suffix = path.suffix.lower()
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
        if forced is None and suffix in HTML_SUFFIXES and not data.startswith(tuple(b for b, _ in _BOMS)):
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
            _check_text(text, spath)  # binary masquerading as .html fails here, not as "empty"
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


@dataclass(frozen=True)
class FileInput:
    """A file to read, and the key its document(s) get: one unit of loading work."""

    path: str
    key: str


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
    Globs match the relative path or the file name (``*.md``, ``notes/*``).
    Nothing here raises for a bad input; an unknown ``encoding`` raises
    ``LoadError`` before anything is read.

    >>> [d.key for d in iter_documents(["data"], include=("豊岡*",))]
    ['豊岡市.md']
    """
    if encoding:
        encoding = _normal_name(encoding)
    for item in list_inputs(paths, include=include, exclude=exclude, encoding=encoding, stdin=stdin):
        if isinstance(item, FileInput):
            yield from load_input(item, encoding)
        else:
            yield item


def list_inputs(
    paths: Iterable[str | os.PathLike[str]],
    *,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    encoding: str | None = None,
    stdin: BinaryIO | None = None,
) -> Iterator[FileInput | Document | LoadFailure]:
    """The inputs under ``paths`` without reading files: what :func:`iter_documents` loads, in its order.

    Files come as :class:`FileInput` (read them with :func:`load_input`, in
    this process or on another machine); standard input is read here, since
    only this process can read it.

    >>> [i.key for i in list_inputs(["data"], include=("豊岡*",))]
    ['豊岡市.md']
    """
    if encoding:
        encoding = _normal_name(encoding)
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
            yield from _iter_directory(path, include, exclude)
        elif path.is_file():
            yield FileInput(str(path), path.name)
        else:
            yield LoadFailure(str(path), "not a regular file (broken symlink, symlink loop, FIFO or device)")


def load_input(item: FileInput, encoding: str | None = None) -> Iterator[Document | LoadFailure]:
    """The document(s) of one listed file (several for JSONL); problems become ``LoadFailure``."""
    return _load_file(Path(item.path), item.key, _normal_name(encoding) if encoding else None)


def _iter_directory(root: Path, include: tuple[str, ...], exclude: tuple[str, ...]
                    ) -> Iterator[FileInput | LoadFailure]:
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
            yield FileInput(str(file), rel)


def _parents(rel: str) -> Iterator[str]:
    parts = rel.split("/")[:-1]
    for k in range(1, len(parts) + 1):
        yield "/".join(parts[:k])
