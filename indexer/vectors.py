"""Full-precision vectors for exact rerank: float16 rows in an append-only file.

Row ``r`` of ``vectors.f16`` is the vector of the chunk whose ``vector_row`` is
``r``. Rows past the count committed in SQLite are garbage from an interrupted
write; the next writer truncates them (invariant 1).

Compaction (dropping the rows of deleted chunks) renumbers rows, so the file
has an *epoch*, recorded in SQLite's ``state`` next to the row numbers that
refer to it. While an epoch change is in flight three names can hold rows:

``vectors.f16``                the current file;
``vectors.f16.compact-E``      epoch E written, committed or not, not yet renamed;
``vectors.f16.epoch-E``        a hard link to the retired epoch-E file, kept one
                               compaction long for readers whose snapshot is at E.

A reader whose SQLite snapshot says epoch E opens the file of epoch E with
:meth:`VectorStore.bind` (see ``_open_epoch`` for why that is race-free).
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mitsuke.indexer.checksums import BLOCK_ROWS, Block, block_crc
from mitsuke.indexer.durable import fault_point, fsync_dir, replace_file
from mitsuke.indexer.errors import DamagedIndexError
from mitsuke.indexer.layout import compact_path, epoch_file, retired_path

__all__ = ["VectorStore", "compact_path", "retired_path"]

log = logging.getLogger("mitsuke")


class VectorStore:
    """float16 ``[rows, dim]`` rows; the writer appends, readers memory-map.

    >>> vs = VectorStore("idx/vectors.f16", 384)             # doctest: +SKIP
    >>> vs.append(np.eye(2, 384, dtype=np.float32), at_row=0)  # doctest: +SKIP
    >>> vs.read([1])                                        # doctest: +SKIP
    """

    def __init__(self, path: str | Path, dim: int) -> None:
        if dim <= 0:
            raise ValueError(f"vector dimension must be positive, got {dim}")
        self.path = Path(path)
        self.dim = dim
        self.row_bytes = dim * 2
        # Reader state is per thread: threads of one Searcher may hold SQLite
        # snapshots on either side of a compaction, and each must read the rows
        # of its own snapshot's epoch.
        self._local = threading.local()
        # Blocks whose checksum was checked, per epoch: (block, rows) pairs, each checked once.
        self._verified: dict[int | None, set[tuple[int, int]]] = {}

    @property
    def epoch(self) -> int | None:
        """The epoch this thread reads; None: always the current file (the writer)."""
        return getattr(self._local, "epoch", None)

    @property
    def _map(self) -> np.memmap | None:
        return getattr(self._local, "map", None)

    @property
    def _map_rows(self) -> int:
        return getattr(self._local, "map_rows", 0)

    def _set_map(self, mapped: np.memmap | None, rows: int) -> None:
        self._local.map = mapped
        self._local.map_rows = rows

    # ------------------------------------------------------------------ checksums
    def expect(self, sums: dict[int, Block] | None) -> None:
        """The block checksums of this thread's snapshot: rows read from now on are checked lazily.

        None (or empty: an index written before checksums) checks nothing.
        """
        sums = sums or None
        if sums is not getattr(self._local, "sums", None):
            # Blocks this thread found checked under these sums (a search's reads skip the set lookups).
            self._local.clear = np.zeros(max(sums) + 1 if sums else 0, bool)
        self._local.sums = sums

    def _check(self, m: np.memmap, rows: np.ndarray, epoch: int | None) -> None:
        sums = getattr(self._local, "sums", None)
        if sums is None:
            return
        blocks = rows // BLOCK_ROWS
        clear = self._local.clear
        if int(blocks.max()) < clear.size and clear[blocks].all():
            return
        done = self._verified.setdefault(epoch, set())
        for b in np.unique(blocks).tolist():
            want = sums.get(b)
            if want is None:
                continue  # no checksum (yet): nothing to check, nothing to remember
            if (b, want.rows) not in done:
                start = b * BLOCK_ROWS
                if block_crc(m[start:start + want.rows].tobytes()) != want.crc:
                    raise DamagedIndexError(
                        f"{self.path}: rows {start}-{start + want.rows - 1} do not match their checksum: the vectors "
                        f"file is damaged; run `mitsuke verify --index {self.path.parent}`, then `mitsuke repair`")
                done.add((b, want.rows))
            if want.rows == BLOCK_ROWS:  # only a full block is final; a writer's last block still grows
                if b >= clear.size:  # the sums grew in place (a writer's): widen the mask
                    clear = np.concatenate([clear, np.zeros(b + 1 - clear.size, bool)])
                    self._local.clear = clear
                clear[b] = True

    def damaged_blocks(self, sums: dict[int, Block], committed_rows: int, blocks: list[int] | None = None
                       ) -> list[int]:
        """Blocks (of ``blocks``, default all) whose rows are missing or do not match their checksum."""
        have = self.rows_on_disk
        bad: list[int] = []
        todo = sorted(sums) if blocks is None else sorted(set(blocks) & set(sums))
        m = None
        if have:
            try:
                m = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(have * self.row_bytes,))
            except (OSError, ValueError):
                m = None
        for b in todo:
            want = sums[b]
            start = b * BLOCK_ROWS
            if start + want.rows > have or m is None:
                bad.append(b)
                continue
            data = m[start * self.row_bytes:(start + want.rows) * self.row_bytes].tobytes()
            if block_crc(data) != want.crc:
                bad.append(b)
        last = (committed_rows - 1) // BLOCK_ROWS
        if committed_rows and blocks is None and (have < committed_rows) and last not in bad:
            bad.append(last)  # rows with no checksum recorded yet are still counted as lost when missing
        del m
        return sorted(set(bad))

    # ------------------------------------------------------------------ writer side
    @property
    def rows_on_disk(self) -> int:
        try:
            return os.path.getsize(self.path) // self.row_bytes
        except FileNotFoundError:
            return 0

    def truncate(self, rows: int) -> None:
        """Drop rows past ``rows`` (uncommitted garbage of a crashed writer)."""
        self.close()
        if not self.path.exists():
            self.path.touch()
        with open(self.path, "r+b") as fh:
            fh.truncate(rows * self.row_bytes)
            fh.flush()
            os.fsync(fh.fileno())

    def append(self, vectors: np.ndarray, at_row: int) -> int:
        """Write ``vectors`` as float16 starting at ``at_row``, fsync, return the first row."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {vectors.shape}")
        data = vectors.astype(np.float16).tobytes()
        half = (len(vectors) // 2) * self.row_bytes
        with open(self.path, "r+b" if self.path.exists() else "w+b") as fh:
            fh.seek(at_row * self.row_bytes)
            fh.write(data[:half])
            fh.flush()
            fault_point("vectors_half_written")  # a kill here leaves a torn, uncommitted tail
            fh.write(data[half:])
            fh.flush()
            os.fsync(fh.fileno())
        return at_row

    def write_compacted(self, rows: np.ndarray, epoch: int, batch: int = 65536) -> Path:
        """Copy ``rows`` (in that order) into the epoch-``epoch`` file; fsync it; return its path.

        The copy goes through the current file's memmap in batches, so memory
        stays bounded whatever the index size.
        """
        target = compact_path(self.path, epoch)
        rows = np.asarray(rows, dtype=np.int64)
        with open(target, "wb") as fh:
            for i in range(0, len(rows), batch):
                fh.write(np.ascontiguousarray(self._mapped(int(rows[i:i + batch].max()) + 1)[rows[i:i + batch]])
                         .tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(self.path.parent)
        return target

    def retire(self, epoch: int) -> None:
        """Keep the current file readable as ``epoch-<epoch>`` (a hard link: no copy)."""
        link = retired_path(self.path, epoch)
        link.unlink(missing_ok=True)
        if self.path.exists():
            os.link(self.path, link)
        fsync_dir(self.path.parent)

    def install(self, epoch: int) -> None:
        """Make the committed epoch-``epoch`` file the current one (atomic rename)."""
        self.close()
        replace_file(compact_path(self.path, epoch), self.path)

    def tidy(self, epoch: int) -> None:
        """Writer open: settle the files around the committed ``epoch``.

        A committed compaction that was not renamed yet is installed; an
        uncommitted one is deleted; retired files older than ``epoch - 1`` are
        dropped (a reader's snapshot does not live through two compactions).
        """
        pending = compact_path(self.path, epoch)
        if pending.exists():
            log.info("finishing the interrupted compaction of %s (epoch %d)", self.path.name, epoch)
            self.install(epoch)
        for p in self.path.parent.glob(self.path.name + ".*"):
            found = epoch_file(self.path, p)
            if found is None:
                continue
            kind, num = found
            stale = (kind == "compact" and num != epoch) or (kind == "retired" and num < epoch - 1)
            if stale:
                log.info("removing stale %s", p.name)
                p.unlink(missing_ok=True)

    # ------------------------------------------------------------------ reader side
    def bind(self, epoch: int) -> None:
        """Read rows numbered as in ``epoch`` (the epoch of the caller's SQLite snapshot)."""
        if self.epoch != epoch:
            self.close()
            self._local.epoch = epoch

    def _open_epoch(self, epoch: int):
        """An open file holding epoch ``epoch``'s rows.

        A pending ``compact-E`` file is epoch E; a retired ``epoch-E`` link is
        epoch E; otherwise ``vectors.f16`` is — unless a newer compaction
        replaced it while we opened it. That compaction links ``epoch-E``
        before it commits, so checking for the link *after* opening tells:
        if it appeared, look again.
        """
        pending, retired = compact_path(self.path, epoch), retired_path(self.path, epoch)
        for _ in range(10):
            for candidate in (pending, retired):
                try:
                    return open(candidate, "rb")
                except FileNotFoundError:
                    pass
            try:
                fh = open(self.path, "rb")
            except FileNotFoundError:
                continue
            if not retired.exists() and not pending.exists():
                return fh
            fh.close()
        raise FileNotFoundError(f"no vectors file for epoch {epoch} in {self.path.parent}")

    def _mapped(self, need_rows: int) -> np.memmap:
        if self._map is None or self._map_rows < need_rows:
            if self.epoch is None:
                try:
                    fh = open(self.path, "rb")
                except FileNotFoundError:
                    raise DamagedIndexError(f"{self.path} is missing, row {need_rows - 1} was asked for; run "
                                            f"`mitsuke repair --index {self.path.parent}`") from None
            else:
                fh = self._open_epoch(self.epoch)
            with fh:
                rows = os.fstat(fh.fileno()).st_size // self.row_bytes
                if rows < need_rows:
                    raise DamagedIndexError(f"{fh.name} holds {rows} rows, row {need_rows - 1} was asked for: vectors "
                                            f"were lost; run `mitsuke repair --index {self.path.parent}`")
                # The map keeps the inode alive even if the name is replaced or unlinked later.
                self._set_map(np.memmap(fh, dtype=np.float16, mode="r", shape=(rows, self.dim)), rows)
        assert self._map is not None
        return self._map

    def read(self, rows: np.ndarray | list[int]) -> np.ndarray:
        """Rows as float32 (only those rows are read from the memmap)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        m = self._mapped(int(rows.max()) + 1)
        self._check(m, rows, self.epoch)
        return np.asarray(m[rows], dtype=np.float32)

    def iter_rows(self, rows: np.ndarray, batch: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """(offset, float32 block) over ``rows`` in batches, for rebuilds that must not load everything."""
        for i in range(0, len(rows), batch):
            yield i, self.read(rows[i:i + batch])

    def close(self) -> None:
        """Drop this thread's map (other threads keep theirs until they rebind)."""
        self._set_map(None, 0)
        clear = getattr(self._local, "clear", None)
        if clear is not None:  # another epoch or a changed file: check blocks against the set again
            self._local.clear = np.zeros_like(clear)
        if self.epoch is None:  # the writer's file changes under the same epoch key: check again
            self._verified.pop(None, None)
