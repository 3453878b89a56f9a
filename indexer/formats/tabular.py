"""CSV and TSV files: a document per row (default) or per file.

The first row names the columns. Row mode, as JSONL: the ``text`` column is
the document (required), ``id`` (or ``doc_id``) keys it (``file#line``
otherwise), ``title`` titles it, and every other column is metadata (string
values, empty cells left out); ``FormatOptions.csv_columns`` renames those
roles (``--csv-column text=本文``). A bad row is one ``LoadFailure`` naming
``file:line``; the other rows still load. File mode: the whole table is one
document, the header and each row one line, cells joined by `` | ``.

Bytes are decoded as text files are (UTF-8, CP932, EUC-JP, UTF-16 detected;
``--encoding`` forces one), so Excel's Shift_JIS exports load as they are.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

from mitsuke.indexer.errors import LoadError
from mitsuke.indexer.formats import FormatOptions

__all__ = ["load_table"]

_ROLE_DEFAULTS = {"text": ("text",), "id": ("id", "doc_id"), "title": ("title",)}


def _rows(text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """``(first line number, cells)`` per record; a quoted cell may span lines.

    A record the reader cannot parse raises ``csv.Error`` with its line number in the message.
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise csv.Error(f"line {start}: {exc}") from None
        yield start, row
        start = reader.line_num + 1


def _column(header: list[str], role: str, options: FormatOptions, spath: str) -> int | None:
    named = options.csv_columns.get(role)
    if named is not None:
        if named not in header:
            raise LoadError(spath, f"no column {named!r} for {role} (columns: {', '.join(header)})")
        return header.index(named)
    for name in _ROLE_DEFAULTS[role]:
        if name in header:
            return header.index(name)
    return None


def load_table(path: Path, key: str, encoding: str | None, options: FormatOptions) -> Iterator:
    """Documents from the CSV/TSV file at ``path``, or ``LoadFailure``s (the file's, or ``file:line``)."""
    from mitsuke.indexer.decoding import decode_bytes
    from mitsuke.indexer.documents import Document, LoadFailure

    spath = str(path)
    kind = path.suffix.lower().lstrip(".")
    delimiter = "\t" if kind == "tsv" else ","
    try:
        text, used = decode_bytes(path.read_bytes(), spath, encoding)
        rows = _rows(text.lstrip("\ufeff"), delimiter)
        first = next(rows, None)
        if first is None or not any(c.strip() for c in first[1]):
            raise LoadError(spath, "empty table: the first row must name the columns")
        header = [c.strip() for c in first[1]]
        dupes = sorted({c for c in header if c and header.count(c) > 1})
        if dupes:
            raise LoadError(spath, f"duplicate column name(s) {', '.join(dupes)} in the header row")
        if options.csv_mode == "row":
            text_col = _column(header, "text", options, spath)
            if text_col is None:
                raise LoadError(spath, f"no 'text' column (columns: {', '.join(header)}); name the text "
                                       "column with --csv-column text=NAME, or use --csv-mode file")
            id_col = _column(header, "id", options, spath)
            title_col = _column(header, "title", options, spath)
    except LoadError as exc:
        yield LoadFailure(spath, exc.reason)
        return
    except OSError as exc:
        yield LoadFailure(spath, f"cannot read: {exc.strerror or exc}")
        return
    except csv.Error as exc:
        yield LoadFailure(spath, f"malformed {kind.upper()}: {exc}")
        return
    if options.csv_mode == "file":
        yield from _whole_file(path, key, kind, used, header, rows)
        return
    assert text_col is not None  # "row" mode raised above without one
    roles = {text_col, id_col, title_col}
    while True:
        try:
            item = next(rows, None)
        except csv.Error as exc:  # the reader cannot go on past a broken record
            yield LoadFailure(spath, f"malformed {kind.upper()}, rows from here on not read: {exc}")
            return
        if item is None:
            return
        line, cells = item
        where = f"{spath}:{line}"
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            yield LoadFailure(where, f"{len(cells)} fields, the header has {len(header)} "
                                     "(an unquoted delimiter or line break in a cell?)")
            continue
        body = cells[text_col]
        if not body.strip():
            yield LoadFailure(where, f"empty {header[text_col]!r} cell")
            continue
        doc_key = cells[id_col].strip() if id_col is not None else ""
        meta = {name: value for i, (name, value) in enumerate(zip(header, cells))
                if i not in roles and name and value != ""}
        yield Document(key=doc_key or f"{key}#{line}", text=body,
                       title=cells[title_col].strip() if title_col is not None else "",
                       source=spath, source_type=kind, encoding=used, metadata=meta)


def _whole_file(path: Path, key: str, kind: str, used: str, header: list[str], rows) -> Iterator:
    from mitsuke.indexer.documents import Document, LoadFailure

    lines = [" | ".join(header)]
    try:
        for _line, cells in rows:
            if any(c.strip() for c in cells):
                lines.append(" | ".join(" ".join(c.split()) for c in cells))
    except csv.Error as exc:
        yield LoadFailure(str(path), f"malformed {kind.upper()}: {exc}")
        return
    if len(lines) == 1:
        yield LoadFailure(str(path), "no rows under the header")
        return
    yield Document(key=key, text="\n".join(lines), title=path.stem, source=str(path), source_type=kind,
                   encoding=used, metadata={"rows": len(lines) - 1})
