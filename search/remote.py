"""Searching a PostgreSQL index: the query node's local cache, caught up before searches.

``Searcher.open(url)`` opens a ``Searcher`` on the cache directory (``cache=``,
default ``indexer.location.default_cache_dir``) with a :class:`CacheFeed`: the
cache is caught up from PostgreSQL's commit log at open and, at most every
``refresh_seconds``, before a search (``indexer.pg_cache.sync_cache``).
Searching itself is the directory index's code on the cache, so the answers
equal a directory index's.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from mitsuke.indexer.errors import IndexFormatError
from mitsuke.indexer.layout import Manifest
from mitsuke.indexer.location import PgLocation, default_cache_dir, parse_location
from mitsuke.indexer.pg_cache import sync_cache
from mitsuke.indexer.store.postgres import PostgresStore

__all__ = ["CacheFeed", "REFRESH_SECONDS", "open_remote"]

# How stale a query node may answer: at most this long after a commit, searches see it.
REFRESH_SECONDS = 1.0


class CacheFeed:
    """Keeps one local cache directory caught up with one PostgreSQL index."""

    def __init__(self, url: str | PgLocation, cache: str | Path | None = None,
                 refresh_seconds: float = REFRESH_SECONDS) -> None:
        location = parse_location(url)
        assert isinstance(location, PgLocation)
        self.location = location
        self.cache_dir = Path(cache) if cache is not None else default_cache_dir(location)
        self.refresh_seconds = refresh_seconds
        self.remote = PostgresStore(location, readonly=True)
        self._lock = threading.Lock()
        try:
            self.generation = sync_cache(self.remote, self.cache_dir)  # checks the cache file once
        except BaseException:
            self.remote.close()
            raise
        self._last = time.monotonic()

    def manifest(self) -> Manifest:
        manifest = Manifest.read(self.cache_dir)
        if manifest is None:
            raise IndexFormatError(f"cache {self.cache_dir} of {self.location.display} has no manifest")
        return manifest

    def refresh(self, force: bool = True) -> int:
        """Catch up now (``force``) or if ``refresh_seconds`` passed since the last time; the generation."""
        with self._lock:
            if force or time.monotonic() - self._last >= self.refresh_seconds:
                with self.remote.begin() as conn:  # one round trip when nothing was committed since
                    head = self.remote.head(conn)
                if head != self.generation:
                    self.generation = sync_cache(self.remote, self.cache_dir, check=False)
                self._last = time.monotonic()
            return self.generation

    def describe(self) -> dict[str, Any]:
        return {"path": self.location.display, "cache": str(self.cache_dir)}

    def close(self) -> None:
        self.remote.close()


def open_remote(cls: Any, url: str | PgLocation, cache: str | Path | None, refresh_seconds: float | None,
                *, model: str | None = None, embedder: Any = None, **options: Any) -> Any:
    """``Searcher.open(url)``: a ``cls`` (the ``Searcher`` class) on the caught-up cache directory, kept caught up."""
    feed = CacheFeed(url, cache, REFRESH_SECONDS if refresh_seconds is None else refresh_seconds)
    try:
        manifest = feed.manifest()
        manifest.check_model(feed.location.display, model=model, embedder=embedder, writing=False)
        searcher = cls(feed.cache_dir, manifest, embedder=embedder, **options)
    except BaseException:
        feed.close()
        raise
    searcher._feed = feed
    return searcher
