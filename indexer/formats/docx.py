"""Word (.docx) files with python-docx: paragraphs, headings as Markdown headings, tables as rows.

A heading paragraph (style ``Heading 1`` … ``Heading 9``, which is also what
Japanese Word's 見出し 1 … is called in the file) becomes a Markdown ATX line
(``## 見出し``, levels over 6 kept at 6), so the chunker gives every passage
its heading path exactly as it does for Markdown (``Document.has_headings``).
A body paragraph that itself starts like a heading is escaped with ``\\``.
Each table row becomes one line, cells joined by `` | `` (a merged cell once).
The ``Title`` paragraph, if any, is also the document's title.

A .docx is a zip archive: before anything is parsed, the sizes its directory
declares are checked (``MAX_UNCOMPRESSED`` in all, ``MAX_RATIO`` per member),
so a zip bomb is refused without being inflated.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from mitsuke.indexer.errors import LoadError

if TYPE_CHECKING:
    from mitsuke.indexer.documents import Document

__all__ = ["docx_text", "load_docx", "check_zip", "MAX_UNCOMPRESSED", "MAX_RATIO", "MAX_MEMBERS"]

# Real documents: a 300-page report's document.xml is ~10 MB; images need not be
# inflated but are counted, so the bound is generous.
MAX_UNCOMPRESSED = 512 * 2**20
MAX_RATIO = 200  # XML compresses ~10-30x; hundreds-to-one is a bomb
MAX_MEMBERS = 10_000
_RATIO_FLOOR = 2**20  # small members may compress by any ratio
_HEADING_STYLE = re.compile(r"^heading\s*([1-9])$", re.IGNORECASE)
_LOOKS_LIKE_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}([ \t]|$)")


def check_zip(path: Path) -> None:
    """Refuse an archive whose declared sizes could exhaust memory; raise ``LoadError``."""
    spath = str(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile as exc:
        raise LoadError(spath, f"not a valid .docx (a .docx is a zip archive): {exc}") from None
    if len(infos) > MAX_MEMBERS:
        raise LoadError(spath, f"zip archive with {len(infos):,} members (limit {MAX_MEMBERS:,}): refused")
    total = 0
    for info in infos:
        total += info.file_size
        if info.file_size > _RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise LoadError(spath, f"zip bomb refused: member {info.filename} inflates {info.compress_size:,} "
                                   f"bytes to {info.file_size:,} (over {MAX_RATIO}:1)")
    if total > MAX_UNCOMPRESSED:
        raise LoadError(spath, f"zip bomb refused: {total:,} bytes uncompressed, over the limit of "
                               f"{MAX_UNCOMPRESSED:,}")
    if "word/document.xml" not in {i.filename for i in infos}:
        raise LoadError(spath, "not a Word document: the archive has no word/document.xml "
                               "(an old binary .doc renamed? save it as .docx)")


def _heading_level(paragraph) -> int:
    try:
        name = paragraph.style.name if paragraph.style is not None else ""
    except (KeyError, AttributeError):
        return 0
    m = _HEADING_STYLE.match(name or "")
    return int(m.group(1)) if m else 0


def _table_lines(table) -> list[str]:
    lines = []
    for row in table.rows:
        cells = []
        last = None
        for cell in row.cells:
            if cell._tc is last:  # a horizontally merged cell is listed once per grid column
                continue
            last = cell._tc
            cells.append(" ".join(cell.text.split()))
        if any(cells):
            lines.append(" | ".join(cells))
    return lines


def docx_text(path: str | Path) -> tuple[str, str]:
    """``(text, title)`` of a .docx: Markdown-style headings, paragraphs, table rows; raises ``LoadError``."""
    path = Path(path)
    check_zip(path)
    import docx
    from docx.table import Table

    try:
        document = docx.Document(str(path))
    except Exception as exc:  # python-docx raises many types for damaged parts
        raise LoadError(str(path), f"damaged Word document: {type(exc).__name__}: {exc}") from None
    lines: list[str] = []
    title = ""
    try:
        for block in document.iter_inner_content():
            if isinstance(block, Table):
                lines.extend(_table_lines(block))
                continue
            text = block.text.strip()
            if not text:
                continue
            level = _heading_level(block)
            style = (block.style.name if block.style is not None else "") or ""
            if level:
                lines.append("#" * min(level, 6) + " " + " ".join(text.split()))
            else:
                if style.lower() == "title" and not title:
                    title = " ".join(text.split())
                lines.append("\\" + text if _LOOKS_LIKE_HEADING.match(text) else text)
        core_title = (document.core_properties.title or "").strip()
    except Exception as exc:
        raise LoadError(str(path), f"damaged Word document: {type(exc).__name__}: {exc}") from None
    return "\n".join(lines), core_title or title


def load_docx(path: Path, key: str) -> Document:
    """The ``Document`` of the .docx at ``path``; ``LoadError``/``OSError`` when it cannot be read."""
    from mitsuke.indexer.documents import Document

    text, title = docx_text(path)
    if not text.strip():
        raise LoadError(str(path), "empty Word document: no paragraph or table text")
    return Document(key=key, text=text, title=title or path.stem, source=str(path), source_type="docx",
                   encoding="")
