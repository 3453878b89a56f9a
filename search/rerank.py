"""Exact cosine over stored vectors: float32 query against float16 rows."""
from __future__ import annotations

import numpy as np

from indexer.vectors import VectorStore

__all__ = ["exact_scores"]


def exact_scores(query: np.ndarray, vectors: VectorStore, rows: list[int]) -> np.ndarray:
    """Inner products of the (normalised) query with the given rows, read from the memmap."""
    if not rows:
        return np.zeros(0, dtype=np.float32)
    mat = vectors.read(np.asarray(rows, dtype=np.int64))
    return mat @ np.asarray(query, dtype=np.float32)
