"""What the integrity checks cost: the writer's full check of vectors.f16 at open, and a reader's lazy checks.

A synthetic float16 file of N unit vectors (dim 1792, sarashina's) with its
block checksums; measures (1) ``file_blocks`` (the checksums of a whole file,
as compaction and salvage compute them), (2) ``damaged_blocks`` over every
block (``mitsuke index`` at open, ``mitsuke verify``), (3) reading 100 random
rows cold (every touched block checked) vs the same read with checks off, and
(4) the same read again (blocks already checked).

    PYTHONPATH=$PWD python bench/integrity_checks.py --rows 100000
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import machine, percentiles, table, write_results
from mitsuke.indexer.checksums import file_blocks
from mitsuke.indexer.vectors import VectorStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1792)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vectors.f16"
        vs = VectorStore(path, args.dim)
        for i in range(0, args.rows, 8192):
            n = min(8192, args.rows - i)
            x = rng.standard_normal((n, args.dim)).astype(np.float32)
            vs.append(x / np.linalg.norm(x, axis=1, keepdims=True), i)
        size = path.stat().st_size
        t = time.perf_counter()
        sums = file_blocks(path, vs.row_bytes, args.rows)
        t_blocks = time.perf_counter() - t
        t = time.perf_counter()
        bad = vs.damaged_blocks(sums, args.rows)
        t_full = time.perf_counter() - t
        assert not bad
        cold, warm, off = [], [], []
        for _ in range(args.repeats):
            rows = rng.choice(args.rows, 100, replace=False)
            reader = VectorStore(path, args.dim)
            reader.bind(0)
            reader.expect(None)
            t = time.perf_counter()
            reader.read(rows)
            off.append((time.perf_counter() - t) * 1000)
            reader = VectorStore(path, args.dim)
            reader.bind(0)
            reader.expect(sums)
            t = time.perf_counter()
            reader.read(rows)
            cold.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            reader.read(rows)
            warm.append((time.perf_counter() - t) * 1000)
    rows_out = [
        {"step": "file_blocks (whole file)", "value": f"{t_blocks:.3f} s", "rate": f"{size / t_blocks / 1e9:.2f} GB/s"},
        {"step": "damaged_blocks (full check)", "value": f"{t_full:.3f} s", "rate": f"{size / t_full / 1e9:.2f} GB/s"},
        {"step": "read 100 rows, checks off (ms, median)", "value": f"{percentiles(off)['p50_ms']:.2f}", "rate": ""},
        {"step": "read 100 rows, cold checks (ms, median)", "value": f"{percentiles(cold)['p50_ms']:.2f}", "rate": ""},
        {"step": "read 100 rows, checked blocks (ms, median)", "value": f"{percentiles(warm)['p50_ms']:.2f}", "rate": ""},
    ]
    print(table(rows_out, ["step", "value", "rate"], f"{args.rows} x {args.dim} float16 ({size / 1e6:.0f} MB)"))
    write_results("integrity_checks", {"args": vars(args), "machine": machine(), "bytes": size,
                                       "file_blocks_s": t_blocks, "full_check_s": t_full,
                                       "read_off_ms": percentiles(off), "read_cold_ms": percentiles(cold),
                                       "read_warm_ms": percentiles(warm)})


if __name__ == "__main__":
    main()
