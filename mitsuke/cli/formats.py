"""Options of ``mitsuke index`` / ``mitsuke chunk`` for PDF and CSV/TSV inputs (``indexer.formats``)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

__all__ = ["format_options", "format_config"]


def format_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--csv-mode``, ``--csv-column`` and ``--pdf-max-pages`` to a command."""
    fn = click.option("--pdf-max-pages", type=click.IntRange(min=1), default=None,
                      help="Refuse (report) PDFs with more pages than this (default 5000).")(fn)
    fn = click.option("--csv-column", "csv_column", multiple=True, metavar="ROLE=NAME",
                      help="CSV/TSV column for a role: text=本文, id=番号, title=件名 (repeatable; "
                           "default columns text, id or doc_id, title; the others become metadata).")(fn)
    fn = click.option("--csv-mode", type=click.Choice(["row", "file"]), default="row", show_default=True,
                      help="CSV/TSV: each row a document, or each file one document.")(fn)
    return fn


def format_config(csv_mode: str, csv_column: tuple[str, ...], pdf_max_pages: int | None):
    """The ``FormatOptions`` the flags ask for; ``UsageError`` for a malformed ``--csv-column``."""
    from mitsuke.indexer.errors import LoadError
    from mitsuke.indexer.formats import DEFAULT_MAX_PAGES, FormatOptions

    columns: dict[str, str] = {}
    for item in csv_column:
        role, sep, name = item.partition("=")
        if not sep or not name.strip():
            raise click.UsageError(f"--csv-column {item!r}: expected ROLE=NAME such as text=本文")
        columns[role.strip()] = name.strip()
    try:
        return FormatOptions(csv_mode=csv_mode, csv_columns=columns, pdf_max_pages=pdf_max_pages or DEFAULT_MAX_PAGES)
    except LoadError as exc:
        raise click.UsageError(f"{exc.path}: {exc.reason}") from None
