"""Helpers shared by the benchmark scripts: timing, tables, results files, cheap vectors.

Benchmarks are scripts, never tests. Each prints a table and may write JSON
under bench/results/ (gitignored). Run them from the repository root with the
repository on PYTHONPATH, e.g. ``PYTHONPATH=$PWD python bench/peers.py``.
"""
from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "REPO", "RESULTS", "SHARED_EVAL", "machine", "percentiles", "dir_size", "timer", "table", "write_results",
    "hash_embed", "clustered_vectors", "exact_topk", "recall_at_k", "PrecomputedEmbedder",
]

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SHARED_EVAL = REPO.parent / "shared" / "eval"


EVAL_SETS = ("jsquad-dev", "jaquad-train-sample")


def eval_corpus(sets: Sequence[str] = EVAL_SETS) -> list[dict]:
    """The shared/eval corpora as IndexBuilder documents (id, title, text)."""
    docs = []
    for name in sets:
        with open(SHARED_EVAL / name / "corpus.jsonl", encoding="utf-8") as fh:
            for line in fh:
                obj = json.loads(line)
                docs.append({"id": obj["doc_id"], "title": obj["title"], "text": obj["text"]})
    return docs


def machine() -> dict[str, Any]:
    """What the figures were measured on (cores, memory, CPU model, Python, load at start)."""
    info: dict[str, Any] = {"cores": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d")}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
        info["mem_gib"] = round(int(mem[1]) / 2**20, 1)
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    return info


def percentiles(ms: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / mean of a list of milliseconds (linear interpolation, as numpy does)."""
    a = np.asarray(ms, dtype=np.float64)
    if not a.size:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "mean_ms": float("nan")}
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)), "mean_ms": float(a.mean())}


def dir_size(path: str | Path) -> int:
    """Bytes of every regular file under ``path`` (or of ``path`` itself)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


@contextmanager
def timer(out: dict[str, float], key: str):
    """``with timer(times, "build"): ...`` stores the seconds under ``times["build"]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        out[key] = time.perf_counter() - t0


def table(rows: Iterable[dict[str, Any]], columns: Sequence[str], title: str = "") -> str:
    """A plain-text table (also valid markdown) of ``rows`` restricted to ``columns``."""
    rows = list(rows)

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.1f}"
        if isinstance(v, int):
            return f"{v:,}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = [title] if title else []
    lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        lines.append("| " + " | ".join(v.rjust(w) for v, w in zip(row, widths)) + " |")
    return "\n".join(lines)


def write_results(name: str, data: dict[str, Any], path: str | Path | None = None) -> Path:
    """Write ``bench/results/<name>.json`` (or ``path``), machine description added; return its path.

    Every benchmark records its figures through this, so each results file says
    what it was measured on (``machine()``).
    """
    path = Path(path) if path is not None else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), **data}
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=1, default=str), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- cheap deterministic vectors

_MULT = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing constant: spreads consecutive codes


def hash_embed(texts: Sequence[str], dim: int = 384, seed: int = 0) -> np.ndarray:
    """Signed feature hashing of character unigrams + bigrams, L2-normalised float32.

    A random projection of the text's n-gram counts: texts sharing characters
    get similar vectors, so nearest neighbours are meaningful (unlike pure
    noise) while costing microseconds. It is *not* a semantic model: use it for
    speed, recall-vs-exact and size comparisons only.
    """
    out = np.zeros((len(texts), dim), dtype=np.float32)
    salt = np.uint64(seed * 2654435761 + 1)
    for i, text in enumerate(texts):
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        if cps.size == 0:
            continue
        grams = np.concatenate([cps, (cps[:-1] << np.uint64(21)) | cps[1:] | np.uint64(1 << 63)])
        with np.errstate(over="ignore"):
            h = (grams ^ salt) * _MULT
        idx = (h >> np.uint64(32)) % np.uint64(dim)
        sign = np.where((h >> np.uint64(31)) & np.uint64(1), 1.0, -1.0).astype(np.float32)
        np.add.at(out[i], idx.astype(np.int64), sign)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return out / norms


def clustered_vectors(n: int, dim: int, clusters: int = 256, spread: float = 0.6, seed: int = 0) -> np.ndarray:
    """``n`` L2-normalised float32 vectors around ``clusters`` random centres.

    Real embeddings are clustered, and IVF recall depends on it: uniform noise
    would make every ANN look worse (and every exact search look no slower)
    than on real data.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    step = 65536  # bounded temporary memory
    for s in range(0, n, step):
        e = min(n, s + step)
        noise = rng.standard_normal((e - s, dim)).astype(np.float32) * (spread / np.sqrt(dim))
        out[s:e] = centres[rng.integers(0, clusters, e - s)] + noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int, block: int = 256) -> np.ndarray:
    """Row indices of the ``k`` largest inner products per query (the ground truth)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), block):
        scores = queries[s:s + block] @ base.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
        out[s:s + block] = np.take_along_axis(part, order, axis=1)
    return out


def recall_at_k(found: Sequence[Sequence[int]], truth: np.ndarray, k: int) -> float:
    """Mean |found[:k] ∩ truth[:k]| / k over queries."""
    total = 0.0
    for f, t in zip(found, truth):
        total += len(set(list(f)[:k]) & set(t[:k].tolist())) / k
    return total / max(1, len(truth))


@dataclass
class PrecomputedEmbedder:
    """Serves vectors computed once, looked up by text, through mitsuke's embedder interface.

    The same lookup feeds every system in a comparison, so all of them index
    and query *the same vectors*. An unknown text is an error, never a silent
    zero vector.
    """

    vectors: dict[str, np.ndarray]
    dim: int
    name: str = "precomputed"
    calls: int = field(default=0)

    @property
    def info(self):
        from mitsuke.indexer.embedding import ModelInfo

        return ModelInfo(name=self.name, revision=None, dim=self.dim, pooling="none", normalize=True,
                         max_length=1_000_000)

    device = "cpu"
    dtype_name = "float32"

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t) for t in texts]

    def lookup(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        try:
            return np.stack([self.vectors[t] for t in texts]).astype(np.float32, copy=False)
        except KeyError as exc:
            raise KeyError(f"no precomputed vector for text {str(exc)[:60]}…: the systems must index the "
                           "exact texts the vectors were computed for") from None

    def encode_documents(self, texts: Sequence[str], progress=None) -> np.ndarray:
        return self.lookup(texts)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.lookup(texts)
