"""Make a saved IVF-PQ index GPU-ready: 4-bit fast-scan codes become 8-bit IVF-PQ codes.

FAISS's GPU IVF-PQ (``GpuIndexIVFPQ``) accepts 8-bit codes only (FACTS.md),
and has no fast-scan variant, while 4-bit fast-scan is the faster layout on
CPUs (bench/ann_params.py). A saved fast-scan ``ann.faiss`` still opens
anywhere; on a machine with a GPU FAISS build, the reader converts it in
memory with :func:`for_gpu`:

- the coarse quantizer (the IVF centroids, the costly part of training) is
  reused as it is, so cells and nprobe keep their meaning and the measured
  nprobe / rerank pool (``indexer.ann_tune``) still apply;
- 8-bit PQ codebooks are trained on a sample of the stored vectors
  (``vectors.f16``), and every live vector is encoded again from there.

The file on disk is not changed: the CPU copy stays what the manifest says.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np

from mitsuke.indexer.ann import AnnIndex, AnnParams, choose_m
from mitsuke.indexer.recovery import training_sample
from mitsuke.indexer.store import SqlStore
from mitsuke.indexer.vectors import VectorStore

__all__ = ["gpu_params", "for_gpu", "needs_conversion"]

log = logging.getLogger("mitsuke")
_ADD_BATCH = 65536


def needs_conversion(params: AnnParams) -> bool:
    """Whether an index with ``params`` cannot be cloned to a GPU as it is."""
    return params.kind == "ivfpq" and params.nbits != 8


def gpu_params(params: AnnParams) -> AnnParams:
    """The same index as classic 8-bit IVF-PQ (same nlist and nprobe; m from :func:`choose_m`)."""
    return replace(params, m=choose_m(params.dim), nbits=8)


def for_gpu(ann: AnnIndex, store: SqlStore, conn: Any, vectors: VectorStore) -> AnnIndex:
    """An 8-bit IVF-PQ copy of ``ann`` over the live chunks of ``conn``'s snapshot, keeping its IVF centroids."""
    import faiss

    if not needs_conversion(ann.params):
        return ann
    params = gpu_params(ann.params)
    quantizer = faiss.clone_index(ann.index.quantizer)  # trained: IndexIVFPQ.train trains only the codebooks
    index = faiss.IndexIVFPQ(quantizer, params.dim, params.nlist, params.m, 8, faiss.METRIC_INNER_PRODUCT)
    index.nprobe = params.nprobe
    out = AnnIndex(index, params)
    live = store.live_vectors(conn)
    if not live:
        return out
    ids = np.array([c for c, _ in live], dtype=np.int64)
    rows = np.array([r for _, r in live], dtype=np.int64)
    log.info("converting the fast-scan ANN index to 8-bit IVF-PQ for the GPU (%d vectors)", len(ids))
    out.train(vectors.read(training_sample(rows, max(params.train_size, 1))))
    out.add_bulk((ids[i:i + _ADD_BATCH], vectors.read(rows[i:i + _ADD_BATCH])) for i in range(0, len(ids), _ADD_BATCH))
    return out
