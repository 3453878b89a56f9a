"""ANN parameter logic against FAISS's GPU constraints (FACTS.md), and flat vs IVF-PQ agreement."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mitsuke.indexer.ann import (
    DEFAULT_NBITS, FLAT_THRESHOLD, GPU_PQ_M, GPU_SHARED_MEM, PQ_MIN_TRAIN, AnnIndex, AnnParams, choose_m, choose_params,
    gpu_cloner_settings, gpu_count,
)
from mitsuke.indexer.ann_gpu import gpu_params

DIMS = [384, 768, 1024, 1536, 1792, 4096]


@pytest.mark.parametrize("dim", DIMS)
def test_pq_settings_are_valid_for_classic_gpu_ivfpq(dim):
    # The default may be 4-bit fast-scan (CPU); its GPU form (indexer.ann_gpu) must be valid for GpuIndexIVFPQ.
    p = gpu_params(choose_params(1_000_000, dim))
    assert p.kind == "ivfpq"
    assert p.m in GPU_PQ_M, "GpuIndexIVFPQ rejects sub-quantizer counts outside its list"
    assert dim % p.m == 0, "m must divide dim"
    assert p.nbits == 8, "classic GPU IVF-PQ needs nbits 8"
    assert dim // p.m >= 16
    # float16 lookup tables exactly when float32 ones overflow 48 KiB of shared memory
    needs_fp16 = p.m * 256 * 4 > GPU_SHARED_MEM
    assert gpu_cloner_settings(p) == {"useFloat16": needs_fp16}
    if not needs_fp16:
        assert p.m * 256 * 4 <= 49_152
    else:
        assert p.m * 256 * 2 <= 49_152, "even float16 tables must fit"


@pytest.mark.parametrize("dim, m, fp16", [
    (384, 24, False), (768, 48, False), (1024, 64, True), (1536, 96, True), (1792, 64, True), (4096, 64, True),
])
def test_chosen_m_per_dimension(dim, m, fp16):
    assert choose_m(dim) == m
    assert gpu_cloner_settings(gpu_params(choose_params(10**6, dim)))["useFloat16"] is fp16
    assert gpu_cloner_settings(choose_params(10**6, dim, nbits=8))["useFloat16"] is fp16


@pytest.mark.parametrize("dim", DIMS + [64])
def test_fastscan_codes_take_the_bytes_of_the_8bit_ones(dim):
    p4, p8 = choose_params(10**6, dim, nbits=4), choose_params(10**6, dim, nbits=8)
    assert p4.nbits == 4 and p8.nbits == 8
    assert choose_params(10**6, dim).nbits == (DEFAULT_NBITS if dim >= 384 else 8)
    assert dim % p4.m == 0 and p4.m % 2 == 0, "fast-scan packs sub-quantizers in pairs"
    if dim % (2 * p8.m) == 0:
        assert p4.m * 4 == p8.m * 8, "equal bytes per vector"
    with pytest.raises(ValueError, match="4 .*or 8"):
        choose_params(10**6, dim, nbits=6)


def test_1792_never_gets_96_which_does_not_divide_it():
    assert 1792 % 96 != 0
    assert choose_m(1792) in {1, 2, 4, 8, 16, 28, 32, 56, 64}


def test_flat_below_threshold_ivfpq_above_and_forced_kinds():
    assert choose_params(FLAT_THRESHOLD - 1, 1792).kind == "flat"
    assert choose_params(FLAT_THRESHOLD, 1792).kind == "ivfpq"
    assert choose_params(10**6, 1792, "flat").kind == "flat"
    assert choose_params(500, 64, "ivfpq").kind == "ivfpq"
    assert choose_params(100, 64, "ivfpq").kind == "flat", "PQ cannot train 256 centroids on 100 points"
    with pytest.raises(ValueError, match="auto, flat or ivfpq"):
        choose_params(10, 64, "hnsw")


@settings(max_examples=200, deadline=None)
@given(n=st.integers(256, 10**9), dim=st.sampled_from(DIMS + [64, 100]))
def test_ivfpq_sizing_invariants(n, dim):
    p = choose_params(n, dim, "ivfpq")
    assert p.nlist >= 1 and p.nlist & (p.nlist - 1) == 0, "nlist is a power of two"
    assert p.nlist <= 65536
    if n >= 39:
        assert p.nlist * 39 <= n, "at least 39 training points per cell"
    assert 1 <= p.nprobe <= p.nlist
    assert p.train_size <= n
    assert p.train_size >= min(n, PQ_MIN_TRAIN, p.nlist * 39)
    assert p.train_size >= min(n, p.nlist * 39)
    # training grows like sqrt(n), never like n: 64 points per cell
    assert p.train_size <= max(PQ_MIN_TRAIN, 64 * p.nlist)
    assert dim % p.m == 0


def test_nlist_grows_with_the_count():
    sizes = [choose_params(n, 1792, "ivfpq").nlist for n in (10**4, 10**5, 10**6, 10**7)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert choose_params(10**6, 1792).nlist == 1024


def test_params_round_trip_through_the_manifest_dict():
    p = choose_params(123_456, 768)
    assert AnnParams.from_dict(p.to_dict() | {"unknown": 1}) == p


def test_saved_file_is_checked_against_the_manifest(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ivf = AnnIndex.create(choose_params(1000, 64, "ivfpq", nlist=16))
    ivf.train(x)
    ivf.add(np.arange(1, 1001), x)
    ivf.save(tmp_path / "ann.faiss")
    assert AnnIndex.load(tmp_path / "ann.faiss", ivf.params).ntotal == 1000
    with pytest.raises(ValueError, match="IndexIVFPQ"):
        AnnIndex.load(tmp_path / "ann.faiss", AnnParams(kind="flat", dim=64))
    with pytest.raises(ValueError, match="manifest"):
        AnnIndex.load(tmp_path / "ann.faiss", choose_params(1000, 64, "ivfpq", nlist=8))


def test_removed_ids_never_come_back_from_search():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(10, 1010, dtype=np.int64) * 7  # ids are not positions
    for params in (AnnParams(kind="flat", dim=64), choose_params(1000, 64, "ivfpq", nlist=16)):
        ann = AnnIndex.create(params)
        ann.train(x)
        ann.add(ids, x)
        gone = ids[::3]
        assert ann.remove(gone) == len(gone)
        _, got = ann.search(x[:50], 20, nprobe=16)
        assert not set(got.ravel().tolist()) & set(gone.tolist())
        assert set(got.ravel().tolist()) - {-1} <= set(ids.tolist())


@pytest.mark.gpu
@pytest.mark.skipif(gpu_count() == 0, reason="needs a FAISS build with a GPU")
@pytest.mark.parametrize("dim", [384, 1792])
def test_gpu_train_search_and_cpu_save(tmp_path, dim):
    import faiss

    rng = np.random.default_rng(2)
    x = rng.standard_normal((20_000, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    params = choose_params(20_000, dim, "ivfpq", nlist=64, nbits=8)  # fast-scan has no GPU form
    ann = AnnIndex.create(params)
    ann.train(x)
    ann.add_bulk([(np.arange(len(x)), x)])
    _, got = ann.search(x[:20], 5)
    assert ann._gpu is not None, "search should have run on the GPU"
    assert (got[:, 0] == np.arange(20)).mean() >= 0.9
    ann.save(tmp_path / "ann.faiss")
    cpu = faiss.read_index(str(tmp_path / "ann.faiss"))
    assert isinstance(cpu, faiss.IndexIVFPQ), "the saved form is the CPU index"
