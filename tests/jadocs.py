"""Japanese PDFs, DOCX and CSV files written with public libraries, for tests and bench/pdf_extract.py.

PDFs use reportlab's built-in Japanese CID fonts (HeiseiMin-W3, HeiseiKakuGo-W5;
not embedded, mapped through the UniJIS-UCS2-H/V CMaps), so what a reader
extracts can be compared with what was written. Body lines are cut at a fixed
width regardless of words, the way a typesetter breaks Japanese.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["PAGE_W", "PAGE_H", "jis_text", "wrap", "write_pdf", "write_image_pdf", "write_many_pages_pdf"]

PAGE_W, PAGE_H = 595.0, 842.0  # A4 in points
_FONTS_DONE = False


def _fonts() -> None:
    global _FONTS_DONE
    if _FONTS_DONE:
        return
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont

    pdfmetrics.registerFont(UnicodeCIDFont("HeiseiMin-W3"))
    pdfmetrics.registerFont(UnicodeCIDFont("HeiseiKakuGo-W5"))
    vertical = UnicodeCIDFont("HeiseiMin-W3", isVertical=True)
    vertical.name = vertical.fontName = "HeiseiMin-W3-V"  # else it replaces the horizontal face
    pdfmetrics.registerFont(vertical)
    _FONTS_DONE = True


def jis_text(text: str) -> str:
    """``text`` with characters the JIS CID fonts cannot show replaced by 〓 (as a typesetter would)."""
    out = []
    for ch in text:
        try:
            ch.encode("cp932")
            out.append(ch)
        except UnicodeEncodeError:
            out.append("〓")
    return "".join(out)


def wrap(text: str, width: int) -> list[str]:
    """Lines of at most ``width`` characters; paragraphs start a new line; words are cut anywhere."""
    lines: list[str] = []
    for para in text.split("\n"):
        para = para.strip()
        while para:
            lines.append(para[:width])
            para = para[width:]
    return lines


def write_pdf(path: Path, pages: Sequence[str], *, layouts: Sequence[str] | None = None,
              header: str | None = None, footer: str | None = None, font: str = "HeiseiMin-W3",
              size: float = 10.5, width: int = 40, encrypt: object = None) -> list[list[str]]:
    """Write one page per body text; return each page's body lines as drawn.

    ``layouts[i]``: ``lines`` (one column), ``two-column`` (left column then
    right in the content stream), ``two-column-interleaved`` (the stream goes
    left line, right line, … as some producers write it) or ``vertical``
    (縦書き: columns top to bottom, right to left, with the -V CMap).
    ``header``/``footer`` may hold ``{page}``. ``encrypt``: passed to reportlab
    (a user password string, or a ``StandardEncryption``).
    """
    _fonts()
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=(PAGE_W, PAGE_H), encrypt=encrypt, invariant=1)
    drawn: list[list[str]] = []
    for n, body in enumerate(pages, 1):
        layout = layouts[n - 1] if layouts else "lines"
        if header:
            c.setFont("HeiseiKakuGo-W5", 9)
            c.drawString(72, PAGE_H - 40, header.format(page=n))
        if footer:
            c.setFont("HeiseiKakuGo-W5", 9)
            c.drawCentredString(PAGE_W / 2, 30, footer.format(page=n))
        lead = size * 1.6
        if layout == "lines":
            lines = wrap(body, width)
            c.setFont(font, size)
            for i, line in enumerate(lines):
                c.drawString(72, PAGE_H - 80 - i * lead, line)
        elif layout.startswith("two-column"):
            half = width // 2 - 1
            lines = wrap(body, half)
            mid = (len(lines) + 1) // 2
            left, right = lines[:mid], lines[mid:]
            c.setFont(font, size)
            x2 = 72 + (half + 2) * size
            if layout == "two-column":
                order = [(0, i) for i in range(len(left))] + [(1, i) for i in range(len(right))]
            else:
                order = [(col, i) for i in range(mid) for col in (0, 1) if i < len((left, right)[col])]
            for col, i in order:
                c.drawString(72 if col == 0 else x2, PAGE_H - 80 - i * lead, (left, right)[col][i])
        elif layout == "vertical":
            lines = wrap(body, 60)
            c.setFont("HeiseiMin-W3-V", size)
            for i, line in enumerate(lines):
                c.drawString(PAGE_W - 72 - i * lead, PAGE_H - 72, line)
        else:
            raise ValueError(f"unknown layout {layout!r}")
        drawn.append(lines)
        c.showPage()
    c.save()
    return drawn


def write_image_pdf(path: Path, pages: int = 2) -> None:
    """A "scanned" PDF: each page is one grey image, no text layer."""
    from PIL import Image
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    img = ImageReader(Image.new("L", (200, 280), 200))
    c = canvas.Canvas(str(path), pagesize=(PAGE_W, PAGE_H), invariant=1)
    for _ in range(pages):
        c.drawImage(img, 36, 36, PAGE_W - 72, PAGE_H - 72)
        c.showPage()
    c.save()


def write_many_pages_pdf(path: Path, pages: int) -> None:
    """A large PDF written in well under a second: every page shares one font and one content stream.

    Written by hand (reportlab takes ~1 ms a page): one line of Japanese per page
    in HeiseiMin-W3 through the UniJIS-UCS2-H CMap, as reportlab writes it.
    """
    text = "第一頁から最終頁まで同じ本文です。"
    hexed = text.encode("utf-16-be").hex().upper()
    stream = f"BT /F1 10 Tf 72 700 Td <{hexed}> Tj ET".encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        None,  # the page tree, filled in below
        b"<< /Type /Font /Subtype /Type0 /BaseFont /HeiseiMin-W3 /Encoding /UniJIS-UCS2-H "
        b"/DescendantFonts [4 0 R] >>",
        b"<< /Type /Font /Subtype /CIDFontType0 /BaseFont /HeiseiMin-W3 /FontDescriptor 5 0 R "
        b"/CIDSystemInfo << /Registry (Adobe) /Ordering (Japan1) /Supplement 2 >> /DW 1000 >>",
        b"<< /Type /FontDescriptor /FontName /HeiseiMin-W3 /Flags 6 /FontBBox [-123 -257 1001 910] "
        b"/ItalicAngle 0 /Ascent 723 /Descent -241 /CapHeight 709 /StemV 69 >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    first_page = len(objects) + 1
    kids = " ".join(f"{first_page + i} 0 R" for i in range(pages))
    objects[1] = f"<< /Type /Pages /Count {pages} /Kids [{kids}] >>".encode("ascii")
    page = (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 6 0 R "
            b"/Resources << /Font << /F1 3 0 R >> >> >>")
    objects.extend([page] * pages)
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    Path(path).write_bytes(bytes(out))
