"""Where an index lives: a directory (SQLite, the embedded default) or a PostgreSQL URL.

The one function that decides is :func:`parse_location`. A PostgreSQL index is
named by a SQLAlchemy URL; each named index is one schema of the database
(``?schema=NAME``, default ``mitsuke``), so one database holds many indexes::

    postgresql+psycopg://USER:PASSWORD@HOST:5432/DB?schema=manuals

Passwords are never shown: :attr:`PgLocation.display` renders the URL with
``***`` in place of the password, and every message uses it. The other query
parameters of the URL (``sslmode=require``...) go to the driver unchanged.

>>> parse_location("idx")
PosixPath('idx')
>>> parse_location("postgresql+psycopg://u:secret@db:5432/search?schema=news").display
'postgresql+psycopg://u:***@db:5432/search?schema=news'
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from mitsuke.indexer.errors import MitsukeError

__all__ = ["PgLocation", "parse_location", "is_url", "display", "default_cache_dir", "DEFAULT_SCHEMA", "CACHE_ENV"]

DEFAULT_SCHEMA = "mitsuke"
CACHE_ENV = "MITSUKE_CACHE"
_SCHEMES = ("postgresql", "postgres")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def is_url(value: str | os.PathLike[str] | PgLocation) -> TypeGuard[str | PgLocation]:
    """Whether ``value`` names a database (``scheme://...``) rather than a directory."""
    if isinstance(value, PgLocation):
        return True
    return isinstance(value, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value) is not None


@dataclass(frozen=True)
class PgLocation:
    """A PostgreSQL index: the server URL (without ``schema``), the schema, and a printable form."""

    url: Any  # a sqlalchemy.engine.URL (made by indexer.store.url: SQLAlchemy stays in the store)
    schema: str

    @property
    def display(self) -> str:
        """The URL with the password replaced by ``***``: the only form that is printed or logged."""
        from mitsuke.indexer.store.url import render_url

        return render_url(self.url, schema=self.schema)

    def __str__(self) -> str:
        return self.display

    def __repr__(self) -> str:
        return f"PgLocation({self.display!r})"

    @property
    def cache_name(self) -> str:
        """A directory name for this index's local cache: host-port-database-schema."""
        raw = f"{self.url.host or 'local'}-{self.url.port or 5432}-{self.url.database or ''}-{self.schema}"
        return re.sub(r"[^A-Za-z0-9_.-]", "_", raw)


def parse_location(value: str | os.PathLike[str] | PgLocation) -> Path | PgLocation:
    """A directory ``Path``, or a ``PgLocation`` for a ``postgresql[+driver]://`` URL.

    Any other ``scheme://`` is refused (a directory path never looks like a URL).
    """
    if isinstance(value, PgLocation):
        return value
    if not is_url(value):
        return Path(value)
    scheme = str(value).split("://", 1)[0].lower()
    if scheme.split("+", 1)[0] not in _SCHEMES:
        raise MitsukeError(f"unsupported index URL scheme {scheme!r}: use a directory or "
                           "postgresql+psycopg://USER@HOST:PORT/DB?schema=NAME")
    from mitsuke.indexer.store.url import parse_url, render_url

    url = parse_url(str(value))
    if url is None:
        raise MitsukeError("the index URL cannot be parsed; expected "
                           "postgresql+psycopg://USER@HOST:PORT/DB?schema=NAME")
    schema = url.query.get("schema", DEFAULT_SCHEMA)
    if isinstance(schema, tuple):
        schema = schema[-1]
    if not _SCHEMA_NAME.match(schema):
        raise MitsukeError(f"index schema {schema!r} is not a plain lower-case SQL name "
                           "(letters, digits, underscore; up to 63): choose ?schema=another_name")
    if not url.database:
        raise MitsukeError(f"index URL {render_url(url)} names no database: "
                           "add /DBNAME after the host")
    return PgLocation(url.difference_update_query(["schema"]), schema)


def display(value: str | os.PathLike[str] | PgLocation) -> str:
    """How to print an index location: a directory as given, a URL without its password.

    >>> display("postgresql://u:pw@h/db")
    'postgresql+psycopg://u:***@h/db?schema=mitsuke'
    """
    if not is_url(value):
        return str(value)
    try:
        location = parse_location(value)
    except MitsukeError:
        return str(value).split("://", 1)[0] + "://***"
    return location.display if isinstance(location, PgLocation) else str(location)


def default_cache_dir(location: PgLocation) -> Path:
    """Where a query node keeps its local copy: ``$MITSUKE_CACHE``, else the user's cache dir.

    ``$MITSUKE_CACHE/<host>-<port>-<db>-<schema>``; without the variable
    ``$XDG_CACHE_HOME/mitsuke/...`` (``~/.cache/mitsuke/...``).
    """
    base = os.environ.get(CACHE_ENV)
    if base:
        root = Path(base)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mitsuke"
    return root / location.cache_name
