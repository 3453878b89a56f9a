"""Database URLs as SQLAlchemy parses and renders them (the store's side of ``indexer.location``)."""
from __future__ import annotations

from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["parse_url", "render_url"]


def parse_url(value: str) -> URL | None:
    """``value`` as a SQLAlchemy URL with the psycopg driver for plain ``postgresql://``; None if unparsable."""
    try:
        url = make_url(value)
    except ArgumentError:
        return None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def render_url(url: Any, **query: str) -> str:
    """``url`` (plus ``query`` parameters) as text with the password replaced by ``***``."""
    if query:
        url = url.update_query_dict(query)
    return url.render_as_string(hide_password=True)
