"""Which PDF library extracts Japanese best? Quality and speed on PDFs we write ourselves.

Candidates (no AGPL: PyMuPDF is excluded): pypdf, pdfminer.six (default
layout analysis, and with ``detect_vertical``), pdfplumber, pypdfium2
(PDFium). The PDFs are written with reportlab's built-in Japanese CID fonts
from the demo corpus (data/*.txt, Wikipedia text: full-width punctuation,
brackets, Latin and digits), lines cut at a fixed width mid-word. Layouts:
one column (Mincho and Gothic), two columns written column by column, two
columns written row by row across the columns (the content stream
interleaves them), and vertical writing (縦書き, the -V CMap).

Quality: ``difflib.SequenceMatcher`` ratio between the text drawn on a page and
the text extracted from it, whitespace removed, per page, averaged per layout.
Speed: pages per second over a 100-page one-column PDF (median of 3 runs).
The last row is mitsuke's own loader (pypdfium2, vertical pages read in
content-stream order, CJK line breaks joined). A second table scores it on a
PDF with running headers and page-number footers, against the body text only.

    PYTHONPATH=$PWD python bench/pdf_extract.py            # ~1-2 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import difflib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import REPO, machine, table, write_results  # noqa: E402
from jadocs import jis_text, write_pdf  # noqa: E402

LAYOUTS = ("lines", "lines-gothic", "two-column", "two-column-interleaved", "vertical")


def _pypdf(path: Path) -> list[str]:
    import pypdf

    return [p.extract_text() or "" for p in pypdf.PdfReader(str(path)).pages]


def _pdfminer(path: Path, vertical: bool = False) -> list[str]:
    from pdfminer.high_level import extract_pages
    from pdfminer.layout import LAParams, LTTextContainer

    # One pass over the file; text per page as extract_text would join it.
    return ["".join(el.get_text() for el in page if isinstance(el, LTTextContainer))
            for page in extract_pages(str(path), laparams=LAParams(detect_vertical=vertical))]


def _pdfplumber(path: Path) -> list[str]:
    import pdfplumber

    with pdfplumber.open(str(path)) as pdf:
        return [p.extract_text() or "" for p in pdf.pages]


def _pdfium(path: Path) -> list[str]:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(str(path))
    out = []
    for i in range(len(doc)):
        page = doc[i]
        tp = page.get_textpage()
        out.append(tp.get_text_range())
        tp.close()
        page.close()
    doc.close()
    return out


EXTRACTORS: dict[str, Callable[[Path], list[str]]] = {
    "pypdf": _pypdf,
    "pdfminer.six": _pdfminer,
    "pdfminer.six detect_vertical": lambda p: _pdfminer(p, vertical=True),
    "pdfplumber": _pdfplumber,
    "pypdfium2": _pdfium,
    "mitsuke loader (pypdfium2, vertical pages in stream order)": lambda p: _mitsuke(p),
}


def _mitsuke(path: Path) -> list[str]:
    from mitsuke.indexer.formats.pdf import extract_pdf

    return extract_pdf(path).pages


def _squash(s: str) -> str:
    return "".join(s.split())


def similarity(written: str, extracted: str) -> float:
    a, b = _squash(written), _squash(extracted)
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def corpus() -> list[str]:
    texts = [jis_text(p.read_text(encoding="utf-8")) for p in sorted((REPO / "data").glob("*.txt"))]
    # Half-width katakana and full-width Latin are part of what real notices contain.
    texts[0] = "ﾊﾝｶｸｶﾀｶﾅの見出しとＡＢＣ１２３の全角英数字。" + texts[0]
    return texts


def pages_for(texts: list[str], n: int, chars: int) -> list[str]:
    flat = "\n".join(texts)
    return [flat[(i * chars) % (len(flat) - chars):][:chars] for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=6, help="pages per layout document")
    ap.add_argument("--speed-pages", type=int, default=100, help="pages of the speed document")
    ap.add_argument("--only", default="", help="comma-separated library names to run (default: all)")
    args = ap.parse_args()
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    texts = corpus()
    rows = []
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        docs: dict[str, tuple[Path, list[str]]] = {}
        for layout in LAYOUTS:
            path = Path(tmp) / f"{layout}.pdf"
            kind = "lines" if layout == "lines-gothic" else layout
            font = "HeiseiKakuGo-W5" if layout == "lines-gothic" else "HeiseiMin-W3"
            drawn = write_pdf(path, pages_for(texts, args.pages, 500 if kind == "vertical" else 700),
                              layouts=[kind] * args.pages, font=font)
            docs[layout] = (path, ["".join(lines) for lines in drawn])
        speed_path = Path(tmp) / "speed.pdf"
        write_pdf(speed_path, pages_for(texts, args.speed_pages, 700))
        for name, fn in EXTRACTORS.items():
            if only and not any(name.startswith(o) for o in only):
                continue
            row: dict = {"library": name}
            for layout, (path, truth) in docs.items():
                got = fn(path)
                row[layout] = statistics.mean(similarity(t, g) for t, g in zip(truth, got)) if len(got) == len(
                    truth) else 0.0
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                fn(speed_path)
                times.append(time.perf_counter() - t0)
            row["pages/s"] = args.speed_pages / statistics.median(times)
            rows.append(row)
            results[name] = row
            print(f"{name}: done", file=sys.stderr)
        # mitsuke's loader: headers/footers dropped, CJK line breaks joined.
        from mitsuke.indexer.formats.pdf import extract_pdf

        hf_path = Path(tmp) / "header-footer.pdf"
        drawn = write_pdf(hf_path, pages_for(texts, args.pages, 700), header="令和8年度 豊岡市広報 第12号",
                          footer="- {page} -")
        truth = ["".join(lines) for lines in drawn]
        raw = _pdfium(hf_path)
        pages = extract_pdf(hf_path).pages
        hf = {"raw pypdfium2": statistics.mean(similarity(t, g) for t, g in zip(truth, raw)),
              "mitsuke loader": statistics.mean(similarity(t, g) for t, g in zip(truth, pages))}
        t0 = time.perf_counter()
        extract_pdf(speed_path)
        hf["loader pages/s"] = args.speed_pages / (time.perf_counter() - t0)
        results["header_footer"] = hf
        # Opening a 10,000-page file and counting its pages (what the page limit needs).
        from jadocs import write_many_pages_pdf

        big = Path(tmp) / "10k.pdf"
        write_many_pages_pdf(big, 10_000)
        import pypdf
        import pypdfium2 as pdfium

        t0 = time.perf_counter()
        assert len(pypdf.PdfReader(str(big)).pages) == 10_000
        count = {"pypdf": time.perf_counter() - t0}
        t0 = time.perf_counter()
        doc = pdfium.PdfDocument(str(big))
        assert len(doc) == 10_000
        doc.close()
        count["pypdfium2"] = time.perf_counter() - t0
        results["count_10k_pages_s"] = count
    cols = ["library", *LAYOUTS, "pages/s"]
    print(table(rows, cols, title="Similarity to the drawn text (whitespace removed), and speed"))
    print()
    print(table([{"text": k, "value": v} for k, v in hf.items()], ["text", "value"],
                title="Header/footer PDF, body text only"))
    print()
    print(table([{"library": k, "seconds": v} for k, v in count.items()], ["library", "seconds"],
                title="Open a 10,000-page PDF and count its pages"))
    write_results("pdf_extract", {"rows": rows, "header_footer": hf, "count_10k_pages_s": count, "args": vars(args),
                                  "machine": machine()})


if __name__ == "__main__":
    main()
