"""Loaders for documents that are not plain text: PDF, Word (.docx), CSV/TSV.

``indexer.loaders`` handles text, Markdown, HTML and JSONL and hands a file
whose suffix is in ``FORMAT_SUFFIXES`` to ``load_format``; each format lives
in its own module and imports its library only when such a file is met.
Every problem is one ``LoadFailure`` naming the file (``file:line`` for a
CSV row); nothing here aborts a run.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mitsuke.indexer.errors import LoadError

if TYPE_CHECKING:
    from mitsuke.indexer.documents import Document, LoadFailure

__all__ = ["FormatOptions", "FORMAT_SUFFIXES", "PDF_SUFFIXES", "DOCX_SUFFIXES", "TABULAR_SUFFIXES",
           "load_format"]

PDF_SUFFIXES = {".pdf"}
DOCX_SUFFIXES = {".docx"}
TABULAR_SUFFIXES = {".csv", ".tsv"}
FORMAT_SUFFIXES = PDF_SUFFIXES | DOCX_SUFFIXES | TABULAR_SUFFIXES

# A PDF with more pages is refused (reported, not cut short): extraction time
# and the document's text grow with pages. Legal codes and white papers stay
# well under it; raise it with --pdf-max-pages for a bigger book.
DEFAULT_MAX_PAGES = 5000


@dataclass(frozen=True)
class FormatOptions:
    """How PDF and CSV/TSV files become documents.

    ``csv_mode``: ``row`` (each row a document, keyed ``file#line`` unless an
    id column is named) or ``file`` (the whole table one document, rows as
    text lines). ``csv_columns`` maps a role (``text``, ``id``, ``title``) to
    a column name; unnamed roles use JSONL's names (``text``; ``id`` or
    ``doc_id``; ``title``). ``pdf_max_pages``: larger PDFs are reported.
    """

    csv_mode: str = "row"
    csv_columns: dict[str, str] = field(default_factory=dict)
    pdf_max_pages: int = DEFAULT_MAX_PAGES

    def __post_init__(self) -> None:
        if self.csv_mode not in ("row", "file"):
            raise LoadError("--csv-mode", f"{self.csv_mode!r} is not a CSV mode: use row or file")
        unknown = set(self.csv_columns) - {"text", "id", "title"}
        if unknown:
            raise LoadError("--csv-column", f"unknown role(s) {', '.join(sorted(unknown))}: "
                                            "use text=NAME, id=NAME or title=NAME")
        if self.pdf_max_pages < 1:
            raise LoadError("--pdf-max-pages", f"must be at least 1, got {self.pdf_max_pages}")


def load_format(path: Path, key: str, encoding: str | None,
                options: FormatOptions | None = None) -> Iterator["Document | LoadFailure"]:
    """Documents (or failures) from one PDF, DOCX, CSV or TSV file."""
    options = options or FormatOptions()
    suffix = path.suffix.lower()
    missing = _missing_library(suffix)
    if missing:
        from mitsuke.indexer.documents import LoadFailure

        yield LoadFailure(str(path), missing)
        return
    if suffix in PDF_SUFFIXES or suffix in DOCX_SUFFIXES:
        # One document per file: a file that cannot be read is one failure naming it.
        from mitsuke.indexer.documents import LoadFailure
        from mitsuke.indexer.formats.docx import load_docx
        from mitsuke.indexer.formats.pdf import load_pdf

        try:
            yield load_pdf(path, key, options) if suffix in PDF_SUFFIXES else load_docx(path, key)
        except LoadError as exc:
            yield LoadFailure(str(path), exc.reason)
        except OSError as exc:
            yield LoadFailure(str(path), f"cannot read: {exc.strerror or exc}")
    else:
        from mitsuke.indexer.formats.tabular import load_table

        yield from load_table(path, key, encoding, options)


_LIBRARIES = {".pdf": ("pypdfium2", "pdf"), ".docx": ("docx", "docx")}


def _missing_library(suffix: str) -> str | None:
    """Why a format cannot be read here (its optional library is not installed), or ``None``."""
    import importlib.util

    module, extra = _LIBRARIES.get(suffix, (None, None))
    if module is None or importlib.util.find_spec(module) is not None:
        return None
    return f"reading {suffix} files needs the {module} package: pip install 'mitsuke[{extra}]'"
