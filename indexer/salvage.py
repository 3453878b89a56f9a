"""What the writer does with a ``vectors.f16`` that does not match ``meta.sqlite``.

Never destroy what cannot be re-derived: the writer does not truncate or
extend the vectors file to "agree" with the committed row count, and never
zero-fills. When rows are missing (a truncated or deleted file) or do not
match their block checksums (garbage, a file of another index), it

1. keeps the damaged file as ``vectors.f16.damaged-E-<time>`` (a hard link:
   nothing is written over it, mitsuke never deletes it);
2. copies the rows that still match into a new epoch's file, like a
   compaction, and embeds the lost chunks again from their stored text when
   it has the model; chunks it cannot embed lose their vector row and their
   documents are marked (no longer "unchanged"), so the next ``mitsuke index``
   of them, or ``mitsuke repair`` with the model, embeds them;
3. commits the new row numbers, epoch and block checksums in one
   transaction, at a new generation past which the ANN index is refilled.

Only rows past the committed count (an interrupted write's garbage) are ever
truncated, and only after the committed rows around them checked out.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mitsuke.indexer.checksums import BLOCK_ROWS, Block, extend_blocks, file_blocks
from mitsuke.indexer.store import SqlStore
from mitsuke.indexer.vectors import VectorStore

__all__ = ["Salvage", "settle_vectors", "salvage_vectors", "reembed_missing", "FULL_CHECK_BYTES", "Embed"]

log = logging.getLogger("mitsuke")

# A writer checks every block of a vectors file up to this size when it opens
# (0.16 GB/s measured on a loaded 2-core machine, bench/integrity_checks.py:
# about 1.5 s); a bigger file gets its first and last block checked, and the
# rest in `mitsuke verify`, in ANN rebuilds and whenever rows are read.
FULL_CHECK_BYTES = 256 << 20

# chunk ids -> their vectors (float32 [n, dim]); None when the model is not available.
Embed = Callable[[Sequence[int]], np.ndarray]


@dataclass
class Salvage:
    """What ``settle_vectors`` found and did."""

    lost_chunks: int = 0        # live chunks whose stored vectors were missing or damaged
    reembedded: int = 0         # of those (or of earlier losses), embedded again
    marked_documents: int = 0   # documents left without vectors, to be embedded by the next run
    kept_as: str | None = None  # where the damaged file was kept
    reclaimed_rows: int = 0     # uncommitted rows past the committed ones, truncated


def settle_vectors(store: SqlStore, vectors: VectorStore, embed: Embed | None, *, full: bool | None = None
                   ) -> tuple[dict[int, Block], Salvage]:
    """Writer open: check the committed rows, salvage them if damaged; returns (block checksums, report)."""
    report = Salvage()
    with store.begin() as conn:
        committed = store.vector_rows(conn)
        sums = store.block_checksums(conn)
    have = vectors.rows_on_disk
    if not sums and committed and have >= committed:
        # An index written before checksums: adopt what the file holds now.
        sums = file_blocks(vectors.path, vectors.row_bytes, committed)
        with store.begin() as conn:
            store.set_block_checksums(conn, sums, replace_all=True)
        log.info("recorded checksums of %d blocks of %s", len(sums), vectors.path.name)
    if full is None:
        full = have * vectors.row_bytes <= FULL_CHECK_BYTES
    last = (committed - 1) // BLOCK_ROWS if committed else 0
    bad = vectors.damaged_blocks(sums, committed, None if full else [0, last])
    if have < committed:
        bad = sorted(set(bad) | set(range(have // BLOCK_ROWS, last + 1)))
    if bad and not full:
        bad = sorted(set(bad) | set(vectors.damaged_blocks(sums, committed)))
    if bad:
        sums = salvage_vectors(store, vectors, embed, bad, report)
    elif have > committed or (vectors.path.exists() and os.path.getsize(vectors.path) % vectors.row_bytes):
        report.reclaimed_rows = max(have - committed, 0)
        log.info("reclaiming %d uncommitted vector rows", report.reclaimed_rows)
        vectors.truncate(committed)
    elif not vectors.path.exists():
        vectors.truncate(0)  # an empty index: the file exists from the start
    return sums, report


def salvage_vectors(store: SqlStore, vectors: VectorStore, embed: Embed | None, bad_blocks: Sequence[int],
                    report: Salvage) -> dict[int, Block]:
    """Move the rows that match into a new epoch's file; embed again (or mark) the chunks of ``bad_blocks``."""
    bad = {int(b) for b in bad_blocks}
    with store.begin() as conn:
        live = store.live_vectors(conn, by_row=True)
        epoch = store.vectors_epoch(conn)
        generation = store.generation(conn)
    keep = [(c, r) for c, r in live if r // BLOCK_ROWS not in bad]
    lost = [c for c, r in live if r // BLOCK_ROWS in bad]
    report.lost_chunks = len(lost)
    log.warning("%s: %d stored vectors of %d live chunks are missing or damaged (blocks %s)",
                vectors.path, len(lost), len(live), _ranges(sorted(bad)))
    if vectors.path.exists():
        kept = vectors.path.with_name(f"{vectors.path.name}.damaged-{epoch}-{int(time.time())}")
        os.link(vectors.path, kept)
        report.kept_as = kept.name
        log.warning("kept the damaged file as %s (mitsuke never deletes it)", kept.name)
    new_epoch = epoch + 1
    target = vectors.write_compacted(np.array([r for _, r in keep], dtype=np.int64), new_epoch)
    sums = file_blocks(target, vectors.row_bytes, len(keep))
    vecs = embed(lost) if (embed is not None and lost) else None
    if vecs is not None:
        data = np.asarray(vecs, dtype=np.float32).astype(np.float16).tobytes()
        with open(target, "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        sums.update(extend_blocks(sums, len(keep), data, vectors.row_bytes))
    if vectors.path.exists():
        vectors.retire(epoch)
    with store.begin() as conn:
        store.renumber_vectors(conn, [c for c, _ in keep], list(range(len(keep))))
        rows = len(keep)
        if vecs is not None:
            store.renumber_vectors(conn, lost, list(range(rows, rows + len(lost))))
            rows += len(lost)
            report.reembedded += len(lost)
        elif lost:
            report.marked_documents = store.mark_vectors_lost(conn, lost)
        store.set_state(conn, "vector_rows", rows)
        store.set_state(conn, "vectors_epoch", new_epoch)
        store.set_block_checksums(conn, sums, replace_all=True)
        store.set_state(conn, "generation", generation + 1)
        store.prune_deleted(conn, generation + 1)  # every ANN index is refilled from the new file
    vectors.install(new_epoch)
    vectors.tidy(new_epoch)
    return sums


def reembed_missing(store: SqlStore, vectors: VectorStore, embed: Embed, sums: dict[int, Block]
                    ) -> tuple[dict[int, Block], int]:
    """Embed the live chunks that have no vector row (lost earlier without a model); returns (sums, count)."""
    with store.begin() as conn:
        missing = [c for c, *_ in store.chunks_without_vectors(conn)]
    if not missing:
        return sums, 0
    vecs = embed(missing)
    data = np.asarray(vecs, dtype=np.float32).astype(np.float16).tobytes()
    with store.begin() as conn:
        first = store.vector_rows(conn)
        vectors.append(vecs, first)
        changed = extend_blocks(sums, first, data, vectors.row_bytes)
        store.renumber_vectors(conn, missing, list(range(first, first + len(missing))))
        store.set_state(conn, "vector_rows", first + len(missing))
        store.set_block_checksums(conn, changed)
        store.unmark_documents(conn)
        generation = store.generation(conn) + 1
        store.set_state(conn, "generation", generation)
        store.prune_deleted(conn, generation)
    return {**sums, **changed}, len(missing)


def _ranges(blocks: list[int]) -> str:
    """``0-3, 7`` for blocks [0, 1, 2, 3, 7]."""
    out: list[tuple[int, int]] = []
    for b in blocks:
        if out and out[-1][1] == b - 1:
            out[-1] = (out[-1][0], b)
        else:
            out.append((b, b))
    return ", ".join(f"{a}-{z}" if a != z else str(a) for a, z in out)
