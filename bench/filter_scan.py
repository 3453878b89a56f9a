"""Cost of answering a filter by exact scan: float16 rows from the memmap, float32 query.

Decides ``search.dense.EXACT_SCAN_ELEMENTS`` (above it, the IVF index with an
IDSelector answers). Random normalised 1792-d vectors (sarashina's width) in a
temporary ``vectors.f16``; median of 7 single-query scans, k = 10.

    PYTHONPATH=$PWD /work/venv/bin/python bench/filter_scan.py
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import write_results  # noqa: E402
from mitsuke.indexer.vectors import VectorStore  # noqa: E402
from mitsuke.search.rerank import exact_scores, exact_top_k  # noqa: E402

DIM = 1792


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    print(f"| matching rows (dim {DIM}) | numbers | exact scan p50 ms | rerank of 100 candidates p50 ms |")
    print("|---:|---:|---:|---:|")
    results = []
    for n in (1000, 2340, 5000, 20000):
        rng = np.random.default_rng(0)
        v = rng.standard_normal((n, DIM)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        store = VectorStore(tmp / f"v{n}.f16", DIM)
        store.append(v, 0)
        ids = np.arange(n, dtype=np.int64)
        rows = rng.permutation(n).astype(np.int64)
        q = v[:1]
        exact_top_k(q, store, ids, rows, 10)
        scan = []
        for _ in range(7):
            t0 = time.perf_counter()
            exact_top_k(q, store, ids, rows, 10)
            scan.append((time.perf_counter() - t0) * 1000)
        cand = rng.choice(n, 100, replace=False)
        rr = []
        for _ in range(21):
            t0 = time.perf_counter()
            exact_scores(q[0], store, cand)
            rr.append((time.perf_counter() - t0) * 1000)
        print(f"| {n:,} | {n * DIM / 1e6:.1f} M | {np.median(scan):.1f} | {np.median(rr):.2f} |", flush=True)
        results.append({"rows": n, "dim": DIM, "scan_p50_ms": float(np.median(scan)),
                        "rerank_100_p50_ms": float(np.median(rr))})
    write_results("filter_scan", {"rows": results})


if __name__ == "__main__":
    main()
