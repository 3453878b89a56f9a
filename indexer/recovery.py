"""Bring the derived ANN index up to SQLite's generation (invariant 2).

A missing, unreadable or stale ``ann.faiss`` is caught up (replaying the
chunks added and deleted since its generation) or rebuilt from
``vectors.f16`` — never by re-embedding. Replays are idempotent: ids are
removed before they are added, so a crash between saving ``ann.faiss`` and
writing the manifest cannot duplicate vectors.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mitsuke.indexer.ann import AnnIndex, AnnParams
from mitsuke.indexer.checksums import file_crc32
from mitsuke.indexer.store import SqlStore
from mitsuke.indexer.vectors import VectorStore

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from mitsuke.indexer.layout import AnnState

__all__ = ["load_ann", "untrusted_ann", "live_count", "rebuild_ann", "catch_up_ann", "training_sample", "TRAIN_SEED"]

log = logging.getLogger("mitsuke")

TRAIN_SEED = 1234
_ADD_BATCH = 65536


def training_sample(rows: np.ndarray, size: int) -> np.ndarray:
    """The rows IVF-PQ trains on: ``size`` of ``rows``, drawn with ``TRAIN_SEED``, sorted (all if fewer)."""
    if len(rows) <= size:
        return rows
    rng = np.random.default_rng(TRAIN_SEED)
    return np.sort(rng.choice(rows, size=size, replace=False))


def rebuild_ann(store: SqlStore, conn: Connection, vectors: VectorStore, params: AnnParams,
                trained: AnnIndex | None = None) -> AnnIndex:
    """A fresh ANN index over every live chunk.

    IVF-PQ is trained on a seeded sample of ``params.train_size`` stored
    vectors, unless ``trained`` (an index with the same parameters) lends its
    quantizer and codebooks, which skips training.
    """
    live = store.live_vectors(conn)
    if trained is not None and trained.params == params and trained.is_trained:
        ann = trained.empty_like()
    else:
        ann = AnnIndex.create(params)
    if not live:
        return ann
    ids = np.array([c for c, _ in live], dtype=np.int64)
    rows = np.array([r for _, r in live], dtype=np.int64)
    if not ann.is_trained:
        ann.train(vectors.read(training_sample(rows, max(params.train_size, 1))))
    ann.add_bulk((ids[i:i + _ADD_BATCH], vectors.read(rows[i:i + _ADD_BATCH]))
                 for i in range(0, len(ids), _ADD_BATCH))
    return ann


def catch_up_ann(ann: AnnIndex, store: SqlStore, conn: Connection, vectors: VectorStore,
                 since_generation: int) -> None:
    """Replay, in place, the chunks added and deleted after ``since_generation``.

    A compaction forgets deletions up to its generation (``deleted_floor``);
    an index older than that is refilled from stored vectors instead, keeping
    its trained quantizer.
    """
    if since_generation < store.deleted_floor(conn):
        log.info("ANN index at generation %d predates the last compaction: refilling it from stored vectors",
                 since_generation)
        fresh = rebuild_ann(store, conn, vectors, ann.params, trained=ann)
        ann.index = fresh.index
        ann._changed()
        return
    deleted = store.deleted_since(conn, since_generation)
    added = store.live_vectors(conn, min_generation=since_generation)
    ann.remove(deleted + [c for c, _ in added])
    if added:
        ids = np.array([c for c, _ in added], dtype=np.int64)
        rows = np.array([r for _, r in added], dtype=np.int64)
        for i in range(0, len(ids), _ADD_BATCH):
            ann.add(ids[i:i + _ADD_BATCH], vectors.read(rows[i:i + _ADD_BATCH]))


def untrusted_ann(path: Path, saved: AnnState | None, index_id: str | None) -> str | None:
    """Why the file at ``path`` must not be read (None: its size and CRC32 are the ones recorded at save).

    Checked before FAISS reads a byte: a damaged, foreign or crafted file
    (a length field claiming gigabytes) never reaches ``faiss.read_index``.
    """
    if saved is None or saved.crc is None or saved.size is None:
        return "has no recorded checksum"
    if index_id and saved.index_id and saved.index_id != index_id:
        return f"belongs to index {saved.index_id}, not {index_id}"
    try:
        size = path.stat().st_size
        if size != saved.size:
            return f"holds {size} bytes, {saved.size} were saved"
        if file_crc32(path)[1] != saved.crc:
            return "does not match its checksum"
    except OSError as exc:
        return f"is unreadable ({exc.strerror})"
    return None


def live_count(store: SqlStore, conn: Connection) -> int:
    """Live chunks with a vector: what a complete ANN index holds."""
    return store.vector_rows(conn) - store.dead_vector_rows(conn)


def load_ann(path: Path, store: SqlStore, conn: Connection, vectors: VectorStore, params: AnnParams,
             ann_generation: int, generation: int, *, saved: AnnState | None = None,
             index_id: str | None = None) -> tuple[AnnIndex, bool]:
    """The ANN index at ``generation``; the bool says whether it differs from the file.

    ``saved`` is the manifest's record of the file: a file that does not
    match it, or whose vector count disagrees with the live chunks once caught
    up, is rebuilt from ``vectors.f16`` (it is derived data).
    """
    if path.exists():
        why = untrusted_ann(path, saved, index_id)
        if why is not None:
            log.warning("%s %s: rebuilding it from stored vectors", path, why)
            return rebuild_ann(store, conn, vectors, params), True
        try:
            ann = AnnIndex.load(path, params)
        except Exception as exc:  # FAISS raises RuntimeError on damaged files
            log.warning("%s is unreadable (%s): rebuilding it from stored vectors", path, exc)
            return rebuild_ann(store, conn, vectors, params), True
        changed = False
        if ann_generation > generation or not ann.is_trained:
            log.warning("%s is at generation %d, the index at %d: rebuilding it from stored vectors",
                        path, ann_generation, generation)
            return rebuild_ann(store, conn, vectors, params), True
        if ann_generation < generation:
            log.info("%s is at generation %d, the index at %d: catching up from stored vectors",
                     path, ann_generation, generation)
            catch_up_ann(ann, store, conn, vectors, ann_generation)
            changed = True
        want = live_count(store, conn)
        if ann.ntotal != want:
            log.warning("%s holds %d vectors, the index %d live chunks: rebuilding it from stored vectors",
                        path, ann.ntotal, want)
            return rebuild_ann(store, conn, vectors, params), True
        return ann, changed
    if generation > 0:
        log.info("%s is missing: rebuilding it from stored vectors", path)
    return rebuild_ann(store, conn, vectors, params), generation > 0
