"""A query node's local copy of a PostgreSQL index, caught up from the commit log.

The cache is an ordinary index directory (``meta.sqlite`` with FTS5 terms,
``vectors.f16``, ``ann.faiss``, ``manifest.json``) whose chunk and document ids
and generation are PostgreSQL's. So the search code, BM25 and scores are those
of a directory index: the same documents give the same answers. Nothing in it
is primary; a deleted, damaged or foreign cache is rebuilt from PostgreSQL.

:func:`sync_cache` brings it to PostgreSQL's newest generation:

1. in one REPEATABLE READ snapshot of PostgreSQL: the commits after the
   cache's generation (``commits``), the documents they added that still
   exist, with chunks, terms and vectors;
2. vectors appended to ``vectors.f16`` past the committed rows, then one
   SQLite transaction deletes the removed documents, inserts the new ones and
   sets the generation: a Searcher of the cache sees whole commits only, and
   the work is proportional to what changed;
3. the ANN index: IVF-PQ is trained once per index and shared through
   PostgreSQL (``ann_training``); Searchers catch their in-memory copy up
   from ``meta.sqlite`` like on a directory index, and ``ann.faiss`` is
   re-saved when a tenth of the chunks are newer than it.

Catch-ups of one cache are serialised by an flock on ``SYNC.lock`` (the
directory index's ``LOCK`` is the cache writer's alone, too).
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from mitsuke.indexer.ann import AnnIndex, AnnParams, _faiss
from mitsuke.indexer.ann_tune import needs_tuning, tune_ann
from mitsuke.indexer.checksums import extend_blocks
from mitsuke.indexer.errors import IndexFormatError, MitsukeError
from mitsuke.indexer.identity import adopt_identity
from mitsuke.indexer.layout import AnnState, Counts, IndexPaths, Manifest
from mitsuke.indexer.location import PgLocation
from mitsuke.indexer.pg_builder import read_pg_manifest
from mitsuke.indexer.recovery import load_ann, rebuild_ann, training_sample
from mitsuke.indexer.salvage import FULL_CHECK_BYTES
from mitsuke.indexer.store import SqliteStore
from mitsuke.indexer.store.postgres import DatabaseError, PostgresStore
from mitsuke.indexer.vectors import VectorStore

__all__ = ["sync_cache", "SYNC_LOCK", "ANN_RESAVE_SHARE"]

log = logging.getLogger("mitsuke")

SYNC_LOCK = "SYNC.lock"
# Re-save ann.faiss when this share of the chunks is newer than it (Searchers replay the rest in memory).
ANN_RESAVE_SHARE = 0.1
_ORIGIN = "pg_origin"  # manifest.json key: which PostgreSQL index (and its creation time) the cache copies


class _SyncLock:
    """A blocking flock: one catch-up of a cache directory at a time, across processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> "_SyncLock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _origin(location: PgLocation, manifest: Manifest) -> str:
    return f"{location.display}#{manifest.created_at!r}"


def _usable(cache: Path, origin: str, pg_manifest: Manifest, check: bool) -> Manifest | None:
    """The cache's manifest if the cache is a sound copy of this index, else None (rebuild it)."""
    try:
        m = Manifest.read(cache)
    except IndexFormatError as exc:
        log.warning("cache %s: %s; rebuilding it from PostgreSQL", cache, exc)
        return None
    paths = IndexPaths(cache)
    if m is None or not paths.meta.exists():
        return None
    if m.extra.get(_ORIGIN) != origin or m.model != pg_manifest.model or m.chunking != pg_manifest.chunking:
        log.warning("cache %s holds another index; rebuilding it from PostgreSQL", cache)
        return None
    if check and (not SqliteStore.file_is_sound(paths.meta) or _vectors_damaged(paths, m)):
        log.warning("cache %s is damaged; rebuilding it from PostgreSQL", cache)
        return None
    return m


def _vectors_damaged(paths: IndexPaths, manifest: Manifest) -> bool:
    """Whether the cache's ``vectors.f16`` fails its block checksums (checked whole up to ``FULL_CHECK_BYTES``)."""
    if not manifest.dim:
        return False
    local = SqliteStore(paths.meta, readonly=True)
    vectors = VectorStore(paths.vectors, manifest.dim)
    try:
        with local.snapshot() as snap:
            sums, committed = snap.block_checksums(), snap.store.vector_rows(snap.conn)
        if committed * vectors.row_bytes > FULL_CHECK_BYTES:
            last = (committed - 1) // 64
            return bool(vectors.damaged_blocks(sums, committed, [0, last]))
        return bool(vectors.damaged_blocks(sums, committed))
    finally:
        local.close()
        vectors.close()


def _reset(cache: Path, pg_manifest: Manifest, origin: str) -> Manifest:
    for item in cache.iterdir():
        if item.name == SYNC_LOCK:
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink()
    fresh = Manifest(model=pg_manifest.model, chunking=pg_manifest.chunking, ann_config=pg_manifest.ann_config,
                     lexical_analysis=pg_manifest.lexical_analysis, created_at=pg_manifest.created_at,
                     index_id=pg_manifest.index_id or str(uuid.uuid4()), extra={_ORIGIN: origin})
    return fresh.write(cache)


def sync_cache(store: PostgresStore, cache: str | Path, *, check: bool = True) -> int:
    """Catch the cache directory ``cache`` up to ``store``'s newest commit; return its generation.

    ``check``: verify the cache's SQLite file first (a full read: once per process is enough).
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    with store.begin() as conn:
        pg_manifest = read_pg_manifest(store, conn)
    if pg_manifest is None:
        raise IndexFormatError(f"{store.location.display} holds no mitsuke index yet; "
                               f"build one with `mitsuke index PATH --index URL`")
    origin = _origin(store.location, pg_manifest)
    with _SyncLock(cache / SYNC_LOCK):
        manifest = _usable(cache, origin, pg_manifest, check) or _reset(cache, pg_manifest, origin)
        paths = IndexPaths(cache)
        local = SqliteStore(paths.meta)
        vectors = VectorStore(paths.vectors, manifest.dim) if manifest.dim else None
        try:
            with local.begin() as conn:  # the cache's meta.sqlite records the index it belongs to
                manifest = adopt_identity(local, conn, manifest, paths)
            generation = _apply(store, local, vectors)
            if vectors is not None:
                manifest = _ann_upkeep(store, local, vectors, manifest, paths, generation)
            with local.begin() as conn:
                counts = local.counts(conn)
            if (manifest.generation != generation or manifest.counts != Counts(**counts)
                    or manifest.search_defaults != pg_manifest.search_defaults):  # `mitsuke tune --save`
                replace(manifest, generation=generation, counts=Counts(**counts),
                        search_defaults=pg_manifest.search_defaults).write(cache)
        finally:
            local.close()
            if vectors is not None:
                vectors.close()
    return generation


def _apply(store: PostgresStore, local: SqliteStore, vectors: VectorStore | None) -> int:
    """Copy the commits PostgreSQL has and the cache lacks; return the cache's new generation."""
    with local.begin() as conn:
        have = local.generation(conn)
        committed_rows = local.vector_rows(conn)
    if vectors is not None and vectors.rows_on_disk != committed_rows:
        vectors.truncate(committed_rows)  # rows of a catch-up killed before its SQLite commit
    with store.snapshot() as snap:
        head = store.head(snap.conn)
        if head == have:
            return have
        if head < have:
            raise MitsukeError(f"cache is at generation {have}, {store.location.display} at {head}: "
                               "the database was restored from an older backup; delete the cache")
        removed: set[int]
        if have == 0:
            added, removed = store.all_document_ids(snap.conn), set()
        else:
            added, removed = store.commits_since(snap.conn, have)
        docs = store.documents_with_chunks(snap.conn, sorted(added))
    vecs: list[bytes] = [v for _, _, _, vs in docs for v in vs if v is not None] if vectors is not None else []
    first_row = committed_rows
    with local.begin() as conn:
        if vecs:
            assert vectors is not None
            raw = b"".join(vecs)
            vectors.append(np.frombuffer(raw, dtype="<f2").reshape(len(vecs), vectors.dim), first_row)
            local.set_block_checksums(conn, extend_blocks(local.block_checksums(conn), first_row, raw,
                                                          vectors.row_bytes))
        local.delete_documents(conn, sorted(removed | {int(d["id"]) for d, _, _, _ in docs}), head)
        row = first_row
        for doc, chunk_rows, terms, vs in docs:
            local.insert_document(conn, {**doc, "meta": doc["meta"] or {}, "page_starts": doc["page_starts"] or None})
            out = []
            for c, v in zip(chunk_rows, vs):
                out.append({**c, "headings": list(c["headings"] or []),
                            "vector_row": row if (v is not None and vectors is not None) else None})
                if v is not None and vectors is not None:
                    row += 1
            local.insert_chunks(conn, out, list(terms))
        if vecs:
            local.set_state(conn, "vector_rows", first_row + len(vecs))
        local.set_state(conn, "generation", head)
    log.info("cache caught up from generation %d to %d: %d documents in, %d out", have, head, len(docs),
             len(removed))
    return head


def _shared_trained(store: PostgresStore, local: SqliteStore, conn: Any, vectors: VectorStore, params: AnnParams
                    ) -> tuple[AnnParams, AnnIndex]:
    """The index's one trained IVF-PQ for ``params``: from PostgreSQL, or trained here and stored first-wins."""
    faiss = _faiss()
    key = f"ivfpq:{params.dim}:{params.nlist}:{params.m}:{params.nbits}"
    with store.begin() as pg:
        found = store.trained_ann(pg, key)
    if found is None:
        rows = np.array([r for _, r in local.live_vectors(conn, by_row=True)], dtype=np.int64)
        ann = AnnIndex.create(params)
        log.info("training IVF-PQ (%d cells) once for the index; other nodes reuse it", params.nlist)
        ann.train(vectors.read(training_sample(rows, max(params.train_size, 1))))
        blob = faiss.serialize_index(ann.index).tobytes()
        try:
            with store.begin() as pg:
                found = store.store_trained_ann(pg, key, params.to_dict(), blob)
        except DatabaseError as exc:  # a read-only role (README) cannot share its training
            log.warning("%s: this node keeps its own IVF-PQ training, so its ANN candidates may differ from "
                        "other nodes'; open the index once with a role that may write to share one", exc)
            found = (params.to_dict(), blob)
    stored = AnnParams.from_dict(found[0])
    index = faiss.deserialize_index(np.frombuffer(found[1], dtype=np.uint8))
    index.nprobe = stored.nprobe
    return stored, AnnIndex(index, stored)


def _ann_upkeep(store: PostgresStore, local: SqliteStore, vectors: VectorStore, manifest: Manifest,
                paths: IndexPaths, generation: int) -> Manifest:
    """Save a fresh ``ann.faiss`` when the kind/size changed or much is newer than it; return the manifest."""
    with local.begin() as conn:
        n = local.counts(conn)["chunks"]
        wanted = manifest.ann_params(n)
        saved = manifest.ann
        current = saved.params if saved else None
        grew = (current is not None and current.kind == "ivfpq" and wanted.kind == "ivfpq"
                and (wanted.nlist >= 4 * current.nlist or wanted.nlist * 4 <= current.nlist))
        if current is None or current.kind != wanted.kind or grew or not paths.ann.exists():
            trained = None
            if wanted.kind == "ivfpq":
                wanted, trained = _shared_trained(store, local, conn, vectors, wanted)
            ann = rebuild_ann(local, conn, vectors, wanted, trained=trained)
        else:
            assert saved is not None  # current (not None here) is saved.params
            newer = sum(1 for _ in local.live_vectors(conn, min_generation=saved.generation))
            if saved.generation == generation or newer < ANN_RESAVE_SHARE * max(n, 1):
                return manifest
            ann, _ = load_ann(paths.ann, local, conn, vectors, current, saved.generation, generation,
                              saved=saved, index_id=manifest.index_id)
        tuning = manifest.ann.tuning if manifest.ann is not None and manifest.ann.params == ann.params else None
        target = manifest.ann_config.recall_target
        if needs_tuning(tuning, ann, target):  # the same measurement on every node: same index, same vectors
            live = local.live_vectors(conn)
            tuning = tune_ann(ann, vectors, np.array([c for c, _ in live], dtype=np.int64),
                              np.array([r for _, r in live], dtype=np.int64), target=target) or tuning
    size, crc = ann.save(paths.ann)
    state = AnnState(ann.params, generation, size=size, crc=crc, index_id=manifest.index_id, tuning=tuning)
    return replace(manifest, ann=state).write(paths.root)
