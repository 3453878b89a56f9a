"""Writers of a PostgreSQL index: many at once, on any machines.

``IndexBuilder.open(url)`` returns a :class:`PgIndexBuilder`. It chunks and
embeds like the directory builder (the same ``IndexWriter`` code, outside any
transaction), then commits each batch as one PostgreSQL transaction
(``PostgresStore.commit_documents``): documents replaced by key, chunks with
ids from a sequence, their terms and float16 vectors, and one row of the
commit log, numbered under an advisory lock. So:

- commits never collide (ids from sequences, generations gap-free in commit order);
- two writers touching the same document key leave exactly one version (the
  later commit replaces the earlier one whole);
- a killed writer leaves nothing behind: its open transaction rolls back;
- a re-run skips what was committed (same key and content hash) and embeds
  only the rest.

There is no directory lock and no local file: the ANN index and the other
derived structures are built by each query node (``indexer.pg_cache``).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from mitsuke.indexer.chunking import Chunker
from mitsuke.indexer.config import AnnConfig, ChunkConfig, EmbedConfig
from mitsuke.indexer.durable import fault_point
from mitsuke.indexer.errors import IndexFormatError
from mitsuke.indexer.layout import Manifest
from mitsuke.indexer.location import PgLocation, parse_location
from mitsuke.indexer.salvage import Salvage
from mitsuke.indexer.store.postgres import PostgresStore
from mitsuke.indexer.writer import IndexWriter, _Pending, document_row, settle_open

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mitsuke.indexer.embedding import Embedder

__all__ = ["PgIndexBuilder", "read_pg_manifest", "pg_document_hashes"]

log = logging.getLogger("mitsuke")


def read_pg_manifest(store: PostgresStore, conn: Any) -> Manifest | None:
    """The index's manifest as stored in PostgreSQL (None for a fresh schema)."""
    data = store.read_manifest(conn)
    return None if data is None else Manifest.from_json(data, f"{store.location.display} (index_manifest)")


def pg_document_hashes(url: str | PgLocation) -> dict[str, tuple[int, str]]:
    """Key -> (document id, content hash) of the PostgreSQL index ``url``; empty when it holds none. Read-only."""
    store = PostgresStore(parse_location(url), readonly=True)
    try:
        with store.begin() as conn:  # before a snapshot: a snapshot reads tables a fresh schema lacks
            if store.read_manifest(conn) is None:
                return {}
        with store.snapshot() as snap:
            return snap.document_hashes()
    finally:
        store.close()


class PgIndexBuilder(IndexWriter):
    """An index writer whose commits go to PostgreSQL. Open it with ``IndexBuilder.open(url)``."""

    def __init__(self, location: PgLocation, store: PostgresStore, manifest: Manifest, embedder: Embedder | None, *,
                 batch_docs: int = 64, batch_chunks: int = 512, **_ignored: Any) -> None:
        self.path = location  # messages name the index by its (password-free) URL
        self.location = location
        self.manifest = manifest
        self.embedder = embedder
        self.chunk_config = manifest.chunking
        self.chunker = Chunker(self.chunk_config, embedder.count_tokens if embedder else None)
        self.store = store
        self.dim = manifest.dim
        self.vectors = None
        self.ann = None
        self.salvage = Salvage()  # nothing to salvage: PostgreSQL keeps the vectors
        self._start_run(batch_docs, batch_chunks)
        with store.snapshot() as snap:
            self._known = snap.document_hashes()
            self.generation = snap.generation

    @classmethod
    def open_url(cls, url: str | PgLocation, model: str | None = None, *, chunking: ChunkConfig | None = None,
                 ann: AnnConfig | None = None, embed: EmbedConfig | None = None, embedder: Embedder | None = None,
                 load_model: bool = True, recall_target: float | None = None, **kwargs: Any) -> "PgIndexBuilder":
        """Open (creating schema and tables if needed) the PostgreSQL index ``url`` for writing."""
        location = parse_location(url)
        assert isinstance(location, PgLocation)
        store = PostgresStore(location)
        try:
            with store.begin() as conn:
                manifest = read_pg_manifest(store, conn)
            manifest, embedder, new = settle_open(location.display, manifest, model, chunking=chunking, ann=ann,
                                                  embed=embed, embedder=embedder, load_model=load_model,
                                                  recall_target=recall_target)
            if new:
                with store.begin() as conn:
                    stored = Manifest.from_json(store.init_manifest(conn, manifest.to_json()), location.display)
                if stored.to_json() != manifest.to_json():  # another writer created the index first
                    stored.check_model(location.display, model=model, embedder=embedder, writing=True)
                    if chunking is not None and stored.chunking != chunking:
                        raise IndexFormatError(f"index {location.display} was just created by another writer with "
                                               "other chunking settings")
                    manifest = stored
            return cls(location, store, manifest, embedder, **kwargs)
        except BaseException:
            store.close()
            raise

    # ------------------------------------------------------------------ closing
    def close(self, commit: bool = True) -> None:
        if self._closed:
            return
        try:
            if commit:
                self.flush()
            else:
                self._pending, self._pending_chunks = [], 0
        finally:
            self._closed = True
            self.summary.seconds = time.monotonic() - self._started
            self.store.close()

    # ------------------------------------------------------------------ deleting
    def delete(self, keys) -> int:
        """Delete documents by key; returns how many this writer knew of (others' deletions are idempotent)."""
        self.flush()
        keys = [k for k in dict.fromkeys(keys) if k in self._known]
        step = max(self.batch_docs, 1) * 16
        for i in range(0, len(keys), step):
            part = keys[i:i + step]
            self._commit([], delete_keys=part)
            for k in part:
                del self._known[k]
            self.summary.deleted += len(part)
        return len(keys)

    def maybe_compact(self, force: bool = False) -> bool:
        """Nothing to compact: PostgreSQL reclaims deleted rows itself (VACUUM)."""
        return False

    # ------------------------------------------------------------------ committing
    def _commit(self, pending: list[_Pending], delete_doc_ids: Sequence[int] = (), delete_keys: Sequence[str] = ()
                ) -> None:
        vecs, terms = self._embed_batch(pending)  # outside the transaction: the slow part holds no lock
        docs, rows, doc_terms, doc_vecs = [], [], [], []
        at = 0
        for p in pending:
            doc = p.doc
            docs.append(document_row(doc))
            n = len(p.chunks)
            rows.append([{"chunk_index": c.index, "char_start": c.char_start, "char_end": c.char_end,
                          "text": c.text, "token_count": c.token_count, "headings": list(c.headings)}
                         for c in p.chunks])
            doc_terms.append(terms[at:at + n])
            if vecs is not None:
                f16 = np.ascontiguousarray(np.asarray(vecs[at:at + n], dtype="<f2"))
                doc_vecs.append([f16[j].tobytes() for j in range(n)])
            at += n
        with self.store.begin() as conn:
            done = self.store.commit_documents(conn, docs, rows, doc_terms, doc_vecs if vecs is not None else None,
                                               delete_keys)
            fault_point("before_commit")
        fault_point("after_commit")
        self.generation = done.generation
        for p in pending:
            if p.old_doc_id is None:
                self.summary.added += 1
            else:
                self.summary.updated += 1
            self._known[p.doc.key] = (done.doc_ids[p.doc.key], p.doc.content_hash)
        self.summary.chunks_embedded += len(done.added_chunks) if vecs is not None else 0
        self.summary.chunks_added += len(done.added_chunks)
        if self.on_progress:
            self.on_progress("documents", len(pending))
