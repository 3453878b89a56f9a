"""Which index a file belongs to: the index id and dimension, in the manifest and in ``meta.sqlite``.

A new index gets a uuid (``Manifest.index_id``), written into the manifest
and into the store's ``state`` (``index_id``, ``dim``) by its first writer;
``ann.faiss``'s record in the manifest carries it too. Every opener compares
them: a file swapped in from another index, or a manifest whose ``dim`` was
edited, is refused before a byte is read with the wrong shape.

Primary data is never recreated over: a missing or empty ``meta.sqlite``
beside an index that holds data is an error, not a new empty index.
"""
from __future__ import annotations

import uuid
from dataclasses import replace
from typing import TYPE_CHECKING

from mitsuke.indexer.errors import DamagedIndexError
from mitsuke.indexer.layout import META_FILE, IndexPaths, Manifest

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from mitsuke.indexer.store import SqlStore

__all__ = ["adopt_identity", "check_identity", "check_files_beside"]


def check_identity(manifest: Manifest, index_id: str | None, dim: str | None, paths: IndexPaths) -> None:
    """Refuse a ``meta.sqlite`` whose recorded identity is not the manifest's."""
    if index_id and manifest.index_id and index_id != manifest.index_id:
        raise DamagedIndexError(
            f"{paths.meta} belongs to index {index_id}, {paths.manifest} to {manifest.index_id}: a file was "
            f"swapped in from another index; restore the right one (run `mitsuke verify --index {paths.root}`)")
    if dim is not None and int(dim) != manifest.dim:
        raise DamagedIndexError(
            f"{paths.manifest} says vectors have {manifest.dim} dimensions, {paths.meta} records {dim}: the "
            f"manifest was edited or damaged; restore its model dimension ({dim}) or run "
            f"`mitsuke verify --index {paths.root}`")


def adopt_identity(store: SqlStore, conn: Connection, manifest: Manifest, paths: IndexPaths) -> Manifest:
    """Writer open: check the identity, record it where it is missing (an older index); the manifest to use."""
    index_id = store.get_state(conn, "index_id")
    dim = store.get_state(conn, "dim")
    check_identity(manifest, index_id, dim, paths)
    if manifest.index_id is None:
        manifest = replace(manifest, index_id=index_id or str(uuid.uuid4()))
    if index_id is None:
        store.set_state(conn, "index_id", manifest.index_id)
    if dim is None:
        store.set_state(conn, "dim", manifest.dim)
    return manifest


def check_files_beside(paths: IndexPaths, manifest: Manifest | None) -> None:
    """Refuse to create ``meta.sqlite`` anew beside data an earlier writer committed."""
    meta_size = paths.meta.stat().st_size if paths.meta.exists() else None
    if meta_size:
        return
    held = []
    if manifest is not None and manifest.generation > 0:
        held.append(f"{paths.manifest.name} at generation {manifest.generation}")
    for p in (paths.vectors, paths.ann):
        if p.exists() and p.stat().st_size > 0:
            held.append(f"{p.name} ({p.stat().st_size:,} bytes)")
    if held:
        state = "is missing" if meta_size is None else "is empty"
        raise DamagedIndexError(
            f"{paths.meta} {state}, but {paths.root} holds data ({', '.join(held)}): {META_FILE} is the index's "
            "source of truth and is not recreated over that data; restore it from a backup, or build the "
            "index again in a new directory")
