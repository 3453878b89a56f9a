"""PDF files: text page by page with pypdfium2 (PDFium), cleaned for Japanese.

Why PDFium: on Japanese PDFs written with CID fonts it matched the drawn text
exactly on one- and two-column pages (as pypdf did; pdfminer.six and
pdfplumber mixed the columns) and ran 2x faster than pypdf and 8-30x faster
than the others; it opens and counts a 10,000-page file at once, where pypdf
took seconds (bench/pdf_extract.py, bench/sections/formats.md). Its layout
order breaks vertical writing (縦書き): a page whose characters run top to
bottom is read instead in content-stream order, text object by text object,
which is how pypdf got vertical pages right. BSD/Apache licensed (PyMuPDF,
AGPL, is not used).

Cleaning, per document:

- running headers and footers are dropped: a line among the first or last
  ``_EDGE_LINES`` lines of a page whose shape (digits masked, so page numbers
  match) recurs at the edge of more than half the pages (at least 3);
- a line break between two Japanese characters (or a Japanese character and
  a letter or digit) is removed: typesetters break Japanese lines anywhere,
  even inside a word, and MeCab must see the word whole.

The document text is the cleaned pages joined with ``pages.PAGE_SEPARATOR``;
``Document.page_starts`` records where each page begins.

Refused, each as one ``LoadFailure`` naming the file: a file cut short (no
``%%EOF`` near its end), a damaged one, one that needs a password, one with
more than ``FormatOptions.pdf_max_pages`` pages, and one with no text layer at
all (a scan: mitsuke does no OCR). Pages are read and released one at a time.
"""
from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mitsuke.indexer.errors import LoadError
from mitsuke.indexer.formats import FormatOptions
from mitsuke.indexer.pages import join_pages

if TYPE_CHECKING:
    from mitsuke.indexer.documents import Document

__all__ = ["PdfText", "extract_pdf", "load_pdf", "drop_running_lines", "join_cjk_lines"]

log = logging.getLogger("mitsuke")

# PDFium is not thread-safe: one document at a time in this process.
_PDFIUM_LOCK = threading.Lock()
_EDGE_LINES = 3  # lines at the top and bottom of a page that may be a running header/footer
_EDGE_MAX_CHARS = 80  # longer lines are body text
_TAIL_BYTES = 1024  # readers accept %%EOF within the last 1 KiB (Acrobat's tolerance)
_DIGITS = re.compile(r"[0-9０-９]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffe\uffff]")
# Producers' placeholders, not titles.
_NO_TITLE = {"", "untitled", "unspecified", "microsoft word", "無題"}


@dataclass(frozen=True)
class PdfText:
    """Cleaned page texts (``pages[0]`` is page 1), the page count and the PDF's own title."""

    pages: list[str]
    title: str
    dropped_lines: int = 0


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return (0x3001 <= o <= 0x30FF or 0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF
            or 0xFF01 <= o <= 0xFFEF)


def join_cjk_lines(text: str) -> str:
    """Remove line breaks inside Japanese text; keep those after a sentence end or between Latin words.

    >>> join_cjk_lines("兵庫県の北部にあるイン\\nドの市。\\n次の段落。\\nAmartya\\nSen")
    '兵庫県の北部にあるインドの市。\\n次の段落。\\nAmartya\\nSen'
    """
    lines = text.split("\n")
    out = [lines[0]]
    for line in lines[1:]:
        prev = out[-1]
        if prev and line:
            a, b = prev[-1], line[0]
            if a not in "。．！？!?" and (_is_cjk(a) and (_is_cjk(b) or b.isalnum())
                                          or _is_cjk(b) and a.isalnum()):
                out[-1] = prev + line
                continue
        out.append(line)
    return "\n".join(out)


def _shape(line: str) -> str:
    return _DIGITS.sub("#", " ".join(line.split()))


def _edge_indices(lines: list[str]) -> list[int]:
    """Indices of the non-blank lines at the top and bottom of a page."""
    filled = [i for i, line in enumerate(lines) if line.strip()]
    return sorted(set(filled[:_EDGE_LINES] + filled[-_EDGE_LINES:]))


def drop_running_lines(pages: list[list[str]]) -> tuple[list[list[str]], int]:
    """Pages' lines without running headers/footers, and how many lines were dropped.

    A line counts when its shape (whitespace collapsed, digits masked) is at
    the edge of more than half of the pages that have text, and of at least 3.
    """
    with_text = [p for p in pages if any(line.strip() for line in p)]
    need = max(3, len(with_text) // 2 + 1)
    if len(with_text) < need:
        return pages, 0
    seen: Counter[str] = Counter()
    for lines in pages:
        seen.update({_shape(lines[i]) for i in _edge_indices(lines) if len(lines[i].strip()) <= _EDGE_MAX_CHARS})
    running = {s for s, n in seen.items() if n >= need}
    if not running:
        return pages, 0
    out = []
    dropped = 0
    for lines in pages:
        drop = {i for i in _edge_indices(lines) if _shape(lines[i]) in running}
        dropped += len(drop)
        out.append([line for i, line in enumerate(lines) if i not in drop])
    return out, dropped


def _check_bytes(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(1024)
        fh.seek(max(0, size - _TAIL_BYTES))
        tail = fh.read()
    if b"%PDF-" not in head:
        raise LoadError(str(path), "not a PDF: no %PDF- header in its first 1 KiB")
    if b"%%EOF" not in tail:
        raise LoadError(str(path), "truncated or damaged PDF: no %%EOF marker at its end "
                                   "(an interrupted download or copy? fetch the file again)")


def _is_vertical(textpage, sample: int = 64) -> bool:
    """Whether most of the page's characters follow each other downwards (縦書き) rather than rightwards."""
    down = right = 0
    prev = None
    for i in range(min(textpage.count_chars(), sample)):
        left, bottom, rgt, top = textpage.get_charbox(i)
        if rgt <= left:  # a generated space or line break
            continue
        if prev is not None:
            dx, dy = left - prev[0], top - prev[1]
            if abs(dx) < 1 and dy < 0:
                down += 1
            elif abs(dy) < 1 and dx > 0:
                right += 1
        prev = (left, top)
    return down > 2 * right and down >= 4


def _stream_text(page, textpage) -> str:
    """The page's text objects in content-stream order, one per line (for vertical writing)."""
    import pypdfium2.raw as pdfium_c

    parts = []
    for obj in page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_TEXT,)):
        obj.textpage = textpage
        try:
            parts.append(obj.extract())
        except Exception:  # an object with no text (e.g. only spaces) has nothing to give
            continue
    return "\n".join(parts)


def _page_texts(path: Path, max_pages: int) -> Iterator[str | tuple[int, str]]:
    """The PDF's title first (as ``(n_pages, title)``), then each page's raw text."""
    import pypdfium2 as pdfium

    spath = str(path)
    try:
        doc = pdfium.PdfDocument(spath)
    except pdfium.PdfiumError as exc:
        message = str(exc)
        if "password" in message.lower():
            raise LoadError(spath, "encrypted PDF: it needs a password (mitsuke does not decrypt; "
                                   "save an unprotected copy to index it)") from None
        raise LoadError(spath, f"damaged PDF, PDFium cannot open it: {message}") from None
    try:
        n = len(doc)
        if n > max_pages:
            raise LoadError(spath, f"{n:,} pages, more than the limit of {max_pages:,} "
                                   "(raise it with --pdf-max-pages, or split the file)")
        try:
            title = str(doc.get_metadata_dict().get("Title", "") or "").strip()
        except Exception:  # a damaged Info dictionary costs only the title
            title = ""
        yield n, title
        for i in range(n):
            page = doc[i]
            try:
                textpage = page.get_textpage()
                try:
                    yield _stream_text(page, textpage) if _is_vertical(textpage) else textpage.get_text_range()
                finally:
                    textpage.close()
            finally:
                page.close()
    except pdfium.PdfiumError as exc:
        raise LoadError(spath, f"damaged PDF: {exc}") from None
    finally:
        doc.close()


def extract_pdf(path: str | Path, max_pages: int = FormatOptions().pdf_max_pages) -> PdfText:
    """The cleaned text of each page of ``path``; raises ``LoadError`` naming the file."""
    path = Path(path)
    _check_bytes(path)
    raw: list[list[str]] = []
    title = ""
    with _PDFIUM_LOCK:
        for item in _page_texts(path, max_pages):
            if isinstance(item, tuple):
                title = item[1]
                continue
            text = _CONTROL.sub("", item.replace("\r\n", "\n").replace("\r", "\n"))
            raw.append([line.rstrip() for line in text.split("\n")])
    if not any(line.strip() for lines in raw for line in lines):
        raise LoadError(str(path), f"no text layer in its {len(raw)} page(s): a scanned or image-only PDF "
                                   "(mitsuke does no OCR; run OCR first, e.g. ocrmypdf --language jpn)")
    cleaned, dropped = drop_running_lines(raw)
    if not any(line.strip() for lines in cleaned for line in lines):
        cleaned, dropped = raw, 0  # nothing but one repeated line: that line is the content
    pages = [join_cjk_lines("\n".join(lines).strip("\n")) for lines in cleaned]
    return PdfText(pages=pages, title="" if title.lower() in _NO_TITLE else title, dropped_lines=dropped)


def load_pdf(path: Path, key: str, options: FormatOptions) -> Document:
    """The ``Document`` of the PDF at ``path`` (with ``page_starts``); ``LoadError``/``OSError`` when unreadable."""
    from mitsuke.indexer.documents import Document

    pdf = extract_pdf(path, options.pdf_max_pages)
    text, starts = join_pages(pdf.pages)
    if pdf.dropped_lines:
        log.info("%s: dropped %d running header/footer lines", path, pdf.dropped_lines)
    return Document(key=key, text=text, title=pdf.title or path.stem, source=str(path), source_type="pdf",
                   encoding="", metadata={"page_count": len(pdf.pages)}, page_starts=starts)
