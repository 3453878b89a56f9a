"""FAISS index over chunk ids: parameter choice, train/add/remove/search, GPU, atomic save.

The ANN index is derived data (invariant 2): it is always rebuildable from
``vectors.f16``, and it is read only through FAISS (no pickle). Ids are chunk
ids (``add_with_ids``), never positions (invariant 3).

On a FAISS build with GPUs, training, bulk adds and searches run on the GPU
(``index_cpu_to_gpu``); the master copy, deletions and the saved file are the
CPU index, because GPU indexes have no ``remove_ids`` and files must load
anywhere.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mitsuke.indexer.config import AnnConfig
from mitsuke.indexer.durable import atomic_write, fault_point

__all__ = [
    "AnnParams", "AnnIndex", "choose_params", "choose_m", "choose_m_fastscan", "choose_nlist", "gpu_cloner_settings",
    "gpu_count", "GPU_PQ_M", "GPU_SHARED_MEM", "FLAT_THRESHOLD", "DEFAULT_NBITS",
]

log = logging.getLogger("mitsuke")

# Sub-quantizer counts the classic GPU IVF-PQ accepts (GpuIndexIVFPQ verifyPQSettings_).
GPU_PQ_M = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)
# Shared memory per block on the cards FAISS targets; float32 lookup tables
# bigger than this (m × 256 × 4 bytes, i.e. m > 48) need float16 tables.
GPU_SHARED_MEM = 48 * 1024
# Below this many vectors exact search is used (decided, with the reason, in config.AnnConfig).
FLAT_THRESHOLD = AnnConfig.flat_threshold
# FAISS k-means warns under 39 training points per centroid: fewer give
# centroids that are mostly noise.
MIN_POINTS_PER_CENTROID = 39
# Training sample per IVF cell. k-means cost is sample × nlist × dim per
# iteration, so the sample is what makes training slow or fast: 64 points per
# cell is comfortably above FAISS's 39 and well below its 256 cap (beyond
# which it subsamples anyway). Measured on 2 cores at d=1792: see
# BENCHMARKS.md "Index storage".
TRAIN_POINTS_PER_CELL = 64
# PQ codebooks have 2**nbits = 256 centroids per sub-quantizer and need as
# many training points as a 256-cell k-means.
PQ_MIN_TRAIN = 256 * MIN_POINTS_PER_CENTROID
# Below this k-means cannot even place the 256 centroids of a PQ codebook.
PQ_MIN_POINTS = 256
# PQ code bits of new IVF-PQ indexes: 4 (IndexIVFPQFastScan, SIMD on the CPU) or 8
# (IndexIVFPQ, clones to a GPU as it is). Measured at equal bytes per vector (64) on
# 50k x 1792 clustered vectors, nlist 256 (bench/ann_params.py, bench/sections/ann_recall.md):
# for >= 0.97 recall@10 fast-scan needed a rerank pool of 30 vs 300, p50 2.1 vs 84 ms
# (loaded machine), training 25 vs 288 s, adds 29 vs 140 s. A GPU reader converts
# (indexer.ann_gpu keeps the IVF centroids, retrains 8-bit codebooks).
DEFAULT_NBITS = 4
# ... for dimensions where each 4-bit sub-quantizer keeps at least this many dims (384-d and up);
# on the 64-d test corpus (2 dims each) fast-scan's top-10 overlap with flat at pool 100 was 0.985
# vs 0.995 for 8-bit codes, so small dims keep 8-bit codes.
FASTSCAN_MIN_DIMS = 8


@dataclass(frozen=True)
class AnnParams:
    """Resolved ANN parameters; written to ``manifest.json`` as they are."""

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
    """PQ sub-quantizers for ``dim``: the largest of FAISS's GPU list dividing ``dim``
    with at least 16 dimensions per sub-vector.

    ``m`` bytes per vector: more sub-quantizers give finer codes (better recall
    before the exact rerank) and bigger codes; under ~16 dims per sub-vector
    the codes cost more than the rerank needs. It is a divisor of ``dim`` from
    ``GPU_PQ_M`` so the same index can be cloned to a GPU. For 1792 this is
    64 (28 dims each); for 384, 24; 768, 48; 1024, 64; 1536, 96; 4096, 64
    (96 does not divide 4096); for 64, 16 (see below).
    """
    if dim <= 0:
        raise ValueError(f"dimension must be positive, got {dim}")
    fits = [m for m in GPU_PQ_M if dim % m == 0 and dim // m >= 16]
    if fits and max(fits) >= 16:
        return max(fits)
    # Small dims (tests, tiny models): 16 dims per sub-vector would leave a
    # handful of bytes per vector, too coarse for the rerank to repair; take
    # up to 16 sub-quantizers of at least 4 dims instead (64 -> 16).
    small = [m for m in GPU_PQ_M if dim % m == 0 and dim // m >= 4 and m <= 16]
    return max(small or fits or [m for m in GPU_PQ_M if dim % m == 0])


def choose_nlist(n: int) -> int:
    """IVF cells for ``n`` vectors: the power of two nearest sqrt(n), at most n/39.

    sqrt(n) balances the two halves of a query's cost (scanning nlist
    centroids vs. scanning the nprobe lists of ~n/nlist codes each) and, with
    64 training points per cell, keeps training at ~64·sqrt(n) points (65k at
    1M: a few minutes on 2 cores, about the time the adds take). txtai's
    4·sqrt(n) would quadruple training for little recall once an exact rerank
    follows. The n/39 cap keeps ≥ 39 points per centroid (FAISS's minimum).
    Capped at 65536 cells.
    """
    raw = max(1.0, math.sqrt(max(n, 1)))
    nlist = 2 ** max(0, round(math.log2(raw)))
    while nlist > 1 and nlist * MIN_POINTS_PER_CENTROID > n:
        nlist //= 2
    return min(nlist, 65536)


def choose_m_fastscan(dim: int) -> int:
    """Sub-quantizers for 4-bit fast-scan PQ at the bytes per vector of :func:`choose_m`'s 8-bit codes.

    Twice as many 4-bit sub-quantizers as 8-bit ones (1792: 128 of 14 dims,
    64 bytes), when that divides ``dim``; fast-scan needs an even count.
    """
    m = choose_m(dim)
    if dim % (2 * m) == 0:
        return 2 * m
    return m if m % 2 == 0 else 2 * m


def choose_params(n: int, dim: int, kind: str = "auto", flat_threshold: int | None = None,
                  nlist: int | None = None, nbits: int | None = None) -> AnnParams:
    """ANN parameters for ``n`` vectors of ``dim`` dimensions (``kind``: auto, flat, ivfpq).

    - kind: flat below ``flat_threshold`` (``FLAT_THRESHOLD``), IVF-PQ above;
    - nlist: :func:`choose_nlist` (``nlist`` overrides it, e.g. for small test corpora);
    - nbits: ``DEFAULT_NBITS`` (4: FAISS's SIMD fast-scan PQ with
      :func:`choose_m_fastscan` sub-quantizers; bench/ann_params.py), or 8 with
      :func:`choose_m` (the only code size classic GPU IVF-PQ accepts; a GPU
      reader converts 4-bit indexes with ``indexer.ann_gpu``);
    - train_size: 64 points per cell, at least 256·39 for the PQ codebooks,
      at most n — good centroids without training dominating the build;
    - nprobe: nlist/8, at least 16 (all cells if fewer): a query's true
      neighbours straddle cell borders, and the exact rerank can only restore
      what the visited lists hold. nlist/16 gave 0.80 top-10 agreement on the
      100k clustered benchmark and 93/100 on the tiny-model test corpus;
      nlist/8 visits 12.5% of the lists (BENCHMARKS.md "Index storage" has the
      curve; ``nprobe=`` at search time trades it for latency).

    >>> choose_params(1_000_000, 1792)
    AnnParams(kind='ivfpq', dim=1792, nlist=1024, m=128, nbits=4, nprobe=128, train_size=65536, metric='ip')
    """
    threshold = FLAT_THRESHOLD if flat_threshold is None else flat_threshold
    if kind == "auto":
        kind = "flat" if n < threshold else "ivfpq"
    if kind == "flat":
        return AnnParams(kind="flat", dim=dim)
    if kind != "ivfpq":
        raise ValueError(f"ann kind must be auto, flat or ivfpq, got {kind!r}")
    if 0 < n < PQ_MIN_POINTS:
        # PQ codebooks have 256 centroids each: FAISS cannot train them on fewer
        # points, and exact search over so few vectors is instant anyway.
        log.warning("%d vectors are too few to train IVF-PQ (needs %d): using exact flat search", n, PQ_MIN_POINTS)
        return AnnParams(kind="flat", dim=dim)
    cells = int(nlist) if nlist else choose_nlist(n)
    if cells < 1:
        raise ValueError(f"nlist must be at least 1, got {nlist}")
    train_size = min(max(n, 1), max(cells * TRAIN_POINTS_PER_CELL, PQ_MIN_TRAIN))
    nprobe = min(cells, max(16, cells // 8))
    bits = DEFAULT_NBITS if nbits is None else int(nbits)
    if nbits is None and bits == 4 and dim // choose_m_fastscan(dim) < FASTSCAN_MIN_DIMS:
        bits = 8  # tiny dims: 4-bit codes of 2-4 dims ranked worse than 8-bit ones (64-d test corpus)
    if bits not in (4, 8):
        raise ValueError(f"PQ code bits must be 4 (fast-scan) or 8, got {nbits}")
    m = choose_m(dim) if bits == 8 else choose_m_fastscan(dim)
    return AnnParams(kind="ivfpq", dim=dim, nlist=cells, m=m, nbits=bits, nprobe=nprobe, train_size=train_size)


def gpu_cloner_settings(params: AnnParams) -> dict[str, bool]:
    """GpuClonerOptions for ``params``: float16 lookup tables when float32 ones overflow shared memory."""
    if params.kind != "ivfpq":
        return {"useFloat16": False}
    return {"useFloat16": params.m * (1 << params.nbits) * 4 > GPU_SHARED_MEM}


def _as_stored(vectors: np.ndarray) -> np.ndarray:
    """Vectors as ``vectors.f16`` holds them (float16-rounded, as float32).

    The ANN index is derived from the stored vectors: adding the embedder's
    float32 output directly would make an index that was caught up score
    differently (by ~1e-4) from one rebuilt from ``vectors.f16``.
    """
    return np.ascontiguousarray(np.asarray(vectors, dtype=np.float16), dtype=np.float32)


def _faiss():
    import faiss

    return faiss


def gpu_count() -> int:
    """GPUs the installed FAISS can use (0 with faiss-cpu); ``MITSUKE_NO_GPU=1`` forces 0."""
    if os.environ.get("MITSUKE_NO_GPU"):
        return 0
    faiss = _faiss()
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


_IVF_PARAMS: dict[int, object] = {}


def _ivf_params(nprobe: int):
    """``SearchParametersIVF(nprobe=nprobe)``, made once per nprobe: FAISS only reads it, threads share it."""
    got = _IVF_PARAMS.get(nprobe)
    if got is None:
        got = _IVF_PARAMS.setdefault(nprobe, _faiss().SearchParametersIVF(nprobe=nprobe))
    return got


class AnnIndex:
    """A FAISS index keyed by int64 chunk ids."""

    def __init__(self, index, params: AnnParams) -> None:
        self.index = index  # always the CPU index
        self.params = params
        self._gpu = None  # a GPU clone for searching, dropped whenever the CPU index changes
        self._cpu_only = False  # no GPU was found for this index (gpu_count() is asked once)
        self._gpu_res = None
        self._gpu_failed = False

    @classmethod
    def create(cls, params: AnnParams) -> "AnnIndex":
        faiss = _faiss()
        if params.kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(params.dim))
        else:
            if params.dim % params.m:
                raise ValueError(f"m={params.m} does not divide dim={params.dim}")
            quantizer = faiss.IndexFlatIP(params.dim)
            cls_ = faiss.IndexIVFPQFastScan if params.nbits == 4 else faiss.IndexIVFPQ
            index = cls_(quantizer, params.dim, params.nlist, params.m, params.nbits, faiss.METRIC_INNER_PRODUCT)
            index.nprobe = params.nprobe
        return cls(index, params)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    # ------------------------------------------------------------------ GPU
    def _to_gpu(self, index):
        """``index`` cloned to GPU 0 with the cloner options its parameters need, or None."""
        if self._gpu_failed or gpu_count() == 0:
            return None
        if self.params.nbits == 4 and self.params.kind == "ivfpq":
            # FAISS GPU has no fast-scan IVF-PQ: indexer.ann_gpu.for_gpu converts (readers do it at load).
            return None
        faiss = _faiss()
        try:
            if self._gpu_res is None:
                self._gpu_res = faiss.StandardGpuResources()
            co = faiss.GpuClonerOptions()
            co.useFloat16 = gpu_cloner_settings(self.params)["useFloat16"]
            return faiss.index_cpu_to_gpu(self._gpu_res, 0, index, co)
        except Exception as exc:  # an old card or an unsupported layout: the CPU still works
            log.warning("could not move the %s index to the GPU (%s); staying on the CPU", self.params.kind, exc)
            self._gpu_failed = True  # say it once, not on every search
            return None

    def _from_gpu(self, gpu) -> None:
        """Make the CPU master copy the GPU index's (trained or filled there); nprobe does not travel."""
        self.index = _faiss().index_gpu_to_cpu(gpu)
        self.index.nprobe = self.params.nprobe

    def _changed(self) -> None:
        self._gpu = None

    # ------------------------------------------------------------------ building
    def train(self, vectors: np.ndarray) -> None:
        if self.is_trained:
            return
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        gpu = self._to_gpu(self.index)
        log.info("training %s index on %d vectors%s", self.params.kind, len(x), " on the GPU" if gpu else "")
        if gpu is not None:
            gpu.train(x)
            self._from_gpu(gpu)
        else:
            self.index.train(x)
        self._changed()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        self.index.add_with_ids(_as_stored(vectors), np.ascontiguousarray(ids, dtype=np.int64))
        self._changed()

    def add_bulk(self, blocks) -> None:
        """Add many ``(ids, vectors)`` blocks; on a GPU the encoding runs there, then comes back."""
        gpu = self._to_gpu(self.index) if self.params.kind == "ivfpq" else None
        target = gpu if gpu is not None else self.index
        for ids, vecs in blocks:
            if len(ids):
                target.add_with_ids(_as_stored(vecs), np.ascontiguousarray(ids, dtype=np.int64))
        if gpu is not None:
            self._from_gpu(gpu)
        self._changed()

    def remove(self, ids) -> int:
        ids = np.ascontiguousarray(np.asarray(list(ids), dtype=np.int64))
        if ids.size == 0 or self.ntotal == 0:
            return 0
        removed = int(self.index.remove_ids(_faiss().IDSelectorBatch(ids)))
        if removed:
            self._changed()
        return removed

    def empty_like(self) -> "AnnIndex":
        """An empty index with the same trained quantizer and codebooks (no retraining)."""
        index = _faiss().clone_index(self.index)
        index.reset()
        return AnnIndex(index, self.params)

    # ------------------------------------------------------------------ searching
    def copy(self) -> "AnnIndex":
        """An independent copy (same parameters, codebooks and vectors) to change while this one is searched.

        FAISS allows concurrent searches but not a search during add/remove
        (ids come back mismatched): a reader catches up a copy and swaps it in.
        """
        return AnnIndex(_faiss().clone_index(self.index), self.params)

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None,
               allowed_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the ``k`` best vectors per query; ids are -1 where fewer exist.

        ``allowed_ids``: search only these ids (a FAISS IDSelector, on the CPU index).
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self.ntotal == 0 or k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        k = min(k, self.ntotal)
        if allowed_ids is not None:
            return self._search_selected(q, k, nprobe, allowed_ids)
        if self._gpu is None and not self._cpu_only:
            if gpu_count():
                self._gpu = self._to_gpu(self.index)
            else:
                self._cpu_only = True  # asked once per index, not per search
        index = self._gpu if self._gpu is not None else self.index
        if self.params.kind == "ivfpq":
            # nprobe travels with the call (GPU indexes accept SearchParametersIVF too):
            # setting index.nprobe on an index shared by threads would race.
            return index.search(q, k, params=_ivf_params(min(int(nprobe or self.params.nprobe), self.params.nlist)))
        return index.search(q, k)

    def _search_selected(self, q: np.ndarray, k: int, nprobe: int | None, allowed_ids: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        # The selector must outlive the search: FAISS keeps only a raw pointer to it.
        sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
        if self.params.kind == "ivfpq":
            params = faiss.SearchParametersIVF(sel=sel, nprobe=int(nprobe or self.params.nprobe))
        else:
            params = faiss.SearchParameters(sel=sel)
        scores, ids = self.index.search(q, k, params=params)
        del sel
        return scores, ids

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> tuple[int, int]:
        """Write the CPU index atomically: temp file, fsync, replace (invariant 4); returns (size, CRC32)."""
        from mitsuke.indexer.checksums import file_crc32
        from mitsuke.indexer.errors import StorageError

        out: list[tuple[int, int]] = []

        def write(tmp: Path) -> None:
            try:
                _faiss().write_index(self.index, str(tmp))
            except RuntimeError as exc:  # FAISS reports a failed write (disk full) as RuntimeError
                Path(tmp).unlink(missing_ok=True)
                why = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                raise StorageError(f"{path}: could not write the ANN index ({why}); is the disk full?") from None
            out.append(file_crc32(tmp))
            fault_point("ann_written")  # a kill here leaves a temp file and the old ann.faiss

        atomic_write(path, write)
        return out[0]

    @classmethod
    def load(cls, path: str | Path, params: AnnParams) -> "AnnIndex":
        """Read ``path`` through FAISS and check it is the index ``params`` describe."""
        faiss = _faiss()
        index = faiss.read_index(str(path))  # returns the concrete class; downcasting again would free it
        if index.d != params.dim:
            raise ValueError(f"{path}: dimension {index.d} does not match the manifest's {params.dim}")
        if params.kind == "flat":
            ok = isinstance(index, faiss.IndexIDMap2)
        else:
            cls_ = faiss.IndexIVFPQFastScan if params.nbits == 4 else faiss.IndexIVFPQ
            ok = (isinstance(index, cls_) and index.nlist == params.nlist and index.pq.M == params.m
                  and index.pq.nbits == params.nbits)
        if not ok:
            # e.g. a kill between saving a re-sized index and writing the manifest
            raise ValueError(f"{path}: holds a {type(index).__name__}, the manifest describes {params}")
        if params.kind == "ivfpq":
            index.nprobe = params.nprobe
        return cls(index, params)
