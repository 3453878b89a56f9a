"""Full-precision vectors for exact rerank: float16 rows in an append-only file.

Row ``r`` of ``vectors.f16`` is the vector of the chunk whose ``vector_row`` is
``r``. Rows past the count committed in SQLite are garbage from an interrupted
write; the next writer truncates them (invariant 1).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["VectorStore"]


class VectorStore:
    def __init__(self, path: str | Path, dim: int) -> None:
        if dim <= 0:
            raise ValueError(f"vector dimension must be positive, got {dim}")
        self.path = Path(path)
        self.dim = dim
        self.row_bytes = dim * 2
        self._map: np.memmap | None = None
        self._map_rows = 0

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
        with open(self.path, "r+b" if self.path.exists() else "w+b") as fh:
            fh.seek(at_row * self.row_bytes)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return at_row

    def _mapped(self, need_rows: int) -> np.memmap:
        if self._map is None or self._map_rows < need_rows:
            rows = self.rows_on_disk
            if rows < need_rows:
                raise IndexError(f"{self.path} holds {rows} rows, row {need_rows - 1} was asked for")
            self._map = np.memmap(self.path, dtype=np.float16, mode="r", shape=(rows, self.dim))
            self._map_rows = rows
        return self._map

    def read(self, rows: np.ndarray | list[int]) -> np.ndarray:
        """Rows as float32 (only those rows are read from the memmap)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        m = self._mapped(int(rows.max()) + 1)
        return np.asarray(m[rows], dtype=np.float32)

    def close(self) -> None:
        self._map = None
        self._map_rows = 0
