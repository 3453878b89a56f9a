"""Opening an index for reading: the checks before the first search.

A reader refuses, with one line naming the file and what to do, a
``meta.sqlite`` that is empty, not a database, damaged, or of another index
than the manifest (``indexer.identity``). It never writes: an index on a
read-only directory or medium is searched through a ``mode=ro`` (and, when
the last writer closed cleanly, ``immutable=1``) connection.
"""
from __future__ import annotations

import os

from mitsuke.indexer.errors import DamagedIndexError
from mitsuke.indexer.identity import check_identity
from mitsuke.indexer.layout import IndexPaths, Manifest
from mitsuke.indexer.store import MetadataStore, SqlStore, StoreError

__all__ = ["open_reader_store", "database_error"]


def database_error(paths: IndexPaths, exc: BaseException) -> DamagedIndexError:
    """The one-line error for a SQLite failure on ``meta.sqlite``."""
    why = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    wal = paths.meta.with_name(paths.meta.name + "-wal")
    if not os.access(paths.root, os.W_OK) and wal.exists() and wal.stat().st_size:
        return DamagedIndexError(
            f"{paths.meta}: cannot be read ({why}); the directory is read-only and the last writer did not close "
            f"cleanly ({wal.name} exists): open the index once with write access (`mitsuke verify --index "
            f"{paths.root}`) or copy it to a writable place")
    if "disk is full" in why or "disk I/O" in why:
        return DamagedIndexError(f"{paths.meta}: {why}")
    return DamagedIndexError(f"{paths.meta} is damaged or not an index database ({why}); run "
                             f"`mitsuke verify --index {paths.root}`")


def open_reader_store(paths: IndexPaths, manifest: Manifest) -> SqlStore:
    """The read-only store of the index at ``paths``, after the identity check."""
    if paths.meta.exists() and paths.meta.stat().st_size == 0:
        raise DamagedIndexError(f"{paths.meta} is empty: the index's metadata is lost; restore it from a backup "
                                "or build the index again")
    store = MetadataStore(paths.meta, readonly=True)
    try:
        with store.snapshot() as snap:
            index_id, dim = snap.state("index_id"), snap.state("dim")
    except StoreError as exc:
        store.close()
        raise database_error(paths, exc) from None
    try:
        check_identity(manifest, index_id, dim, paths)
    except DamagedIndexError:
        store.close()
        raise
    return store
