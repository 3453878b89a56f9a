"""FAISS index over chunk ids: parameter choice, train/add/remove/search, atomic save.

The ANN index is derived data (invariant 2): it is always rebuildable from
``vectors.f16``, and it is read only through FAISS (no pickle).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.manifest import fsync_dir

__all__ = ["AnnParams", "AnnIndex", "choose_params", "choose_m", "gpu_cloner_settings", "GPU_PQ_M"]

log = logging.getLogger("mitsuke")

# Sub-quantizer counts the classic GPU IVF-PQ accepts (GpuIndexIVFPQ verifyPQSettings_).
GPU_PQ_M = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)
# Shared memory per block on the cards FAISS targets; lookup tables above it need float16.
GPU_SHARED_MEM = 48 * 1024


@dataclass(frozen=True)
class AnnParams:
    kind: str  # flat | ivfpq
    dim: int
    nlist: int = 0
    m: int = 0
    nbits: int = 8
    nprobe: int = 1
    train_size: int = 0
    metric: str = "ip"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AnnParams":
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in fields})


def choose_m(dim: int) -> int:
    """Largest GPU-compatible sub-quantizer count leaving >= 16 dims per sub-vector.

    More sub-quantizers = finer codes (better recall) and bigger codes; 16 dims
    per sub-vector keeps the PQ error low enough for an exact rerank to repair.
    """
    fits = [m for m in GPU_PQ_M if dim % m == 0 and dim // m >= 16]
    if fits:
        return max(fits)
    divisors = [m for m in GPU_PQ_M if dim % m == 0]
    return max(divisors)


def choose_params(n: int, dim: int, kind: str = "auto", flat_threshold: int = 50_000) -> AnnParams:
    """ANN parameters for ``n`` vectors of ``dim`` dimensions.

    - flat below ``flat_threshold``: exact search is fast enough there and needs no training;
    - nlist ≈ 4·sqrt(n) (txtai/FAISS guidance), at most n/39 (FAISS wants ≥ 39
      training points per cell), rounded to a power of two, capped at 65536;
    - training sample: 64 points per cell, at least 256·39 for the 256-centroid
      PQ codebooks, at most n — enough for stable centroids without making
      training the bottleneck;
    - nprobe: nlist/16 (at least 8): with an exact rerank over ×k candidates this
      gives ≥ 0.95 top-10 agreement on clustered data (BENCHMARKS.md).
    """
    if kind == "auto":
        kind = "flat" if n < flat_threshold else "ivfpq"
    if kind == "flat":
        return AnnParams(kind="flat", dim=dim)
    if kind != "ivfpq":
        raise ValueError(f"ann kind must be auto, flat or ivfpq, got {kind!r}")
    raw = max(min(4 * math.sqrt(max(n, 1)), n / 39), 1)
    nlist = min(65536, 2 ** max(0, round(math.log2(raw))))
    while nlist > 1 and nlist * 39 > n:
        nlist //= 2
    train_size = min(n, max(nlist * 64, 256 * 39))
    nprobe = min(nlist, max(8, nlist // 16))
    return AnnParams(kind="ivfpq", dim=dim, nlist=nlist, m=choose_m(dim), nbits=8, nprobe=nprobe,
                     train_size=train_size)


def gpu_cloner_settings(params: AnnParams) -> dict[str, bool]:
    """GpuClonerOptions for ``params``: float16 lookup tables when float32 ones overflow shared memory."""
    if params.kind != "ivfpq":
        return {"useFloat16": False}
    return {"useFloat16": params.m * (1 << params.nbits) * 4 > GPU_SHARED_MEM}


def _faiss():
    import faiss

    return faiss


class AnnIndex:
    """A FAISS index keyed by int64 chunk ids."""

    def __init__(self, index, params: AnnParams) -> None:
        self.index = index
        self.params = params

    @classmethod
    def create(cls, params: AnnParams) -> "AnnIndex":
        faiss = _faiss()
        if params.kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(params.dim))
        else:
            quantizer = faiss.IndexFlatIP(params.dim)
            index = faiss.IndexIVFPQ(quantizer, params.dim, params.nlist, params.m, params.nbits,
                                     faiss.METRIC_INNER_PRODUCT)
            index.nprobe = params.nprobe
        return cls(index, params)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def train(self, vectors: np.ndarray) -> None:
        if self.is_trained:
            return
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        log.info("training %s index on %d vectors", self.params.kind, len(x))
        self.index.train(x)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                                np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids) -> int:
        ids = np.ascontiguousarray(np.asarray(list(ids), dtype=np.int64))
        if ids.size == 0 or self.ntotal == 0:
            return 0
        return int(self.index.remove_ids(_faiss().IDSelectorBatch(ids)))

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self.ntotal == 0 or k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        k = min(k, self.ntotal)
        if self.params.kind == "ivfpq":
            params = _faiss().SearchParametersIVF(nprobe=int(nprobe or self.params.nprobe))
            scores, ids = self.index.search(q, k, params=params)
        else:
            scores, ids = self.index.search(q, k)
        return scores, ids

    def save(self, path: str | Path) -> None:
        """Write atomically: temp file, fsync, replace (invariant 4)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        _faiss().write_index(self.index, str(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)

    @classmethod
    def load(cls, path: str | Path, params: AnnParams) -> "AnnIndex":
        index = _faiss().read_index(str(path))
        if index.d != params.dim:
            raise ValueError(f"{path}: dimension {index.d} does not match the manifest's {params.dim}")
        return cls(index, params)
