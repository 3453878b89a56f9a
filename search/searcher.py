"""Searcher: dense (ANN + exact rerank), lexical (BM25) and hybrid search over one index."""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer.ann import AnnIndex, AnnParams
from indexer.builder import ANN_FILE, META_FILE, VECTORS_FILE
from indexer.errors import IndexFormatError, ModelMismatchError, QueryError
from indexer.manifest import read_manifest
from indexer.recovery import catch_up_ann, load_ann, rebuild_ann
from indexer.store import ChunkRow, MetadataStore
from indexer.vectors import VectorStore
from search.filters import matching_chunk_ids
from search.fusion import rrf, weighted
from search.lexical import bm25_search
from search.rerank import exact_scores
from search.results import Passage

__all__ = ["Searcher", "MODES", "CANDIDATE_FACTOR"]

log = logging.getLogger("mitsuke")

MODES = ("hybrid", "dense", "lexical")
# ANN candidates per requested result, rescored exactly; PQ codes misorder
# near neighbours, the exact rerank puts them back.
CANDIDATE_FACTOR = 10
# Filters matching at most this many chunks are answered by an exact scan.
EXACT_FILTER_LIMIT = 20_000


class Searcher:
    """Query an index directory.

    >>> s = Searcher.open("my-index")                      # doctest: +SKIP
    >>> for p in s.search("更科蕎麦とはなんですか?", k=3):   # doctest: +SKIP
    ...     print(p.score, p.doc_key, p.text[:40])
    """

    def __init__(self, path: Path, manifest: dict[str, Any], *, device: str = "auto", embedder=None,
                 dtype: str = "auto") -> None:
        self.path = path
        self.manifest = manifest
        self.store = MetadataStore(path / META_FILE, readonly=True)
        model = manifest.get("model")
        self.model_name: str | None = model["name"] if model else None
        self.dim = int(model["dim"]) if model else 0
        self.vectors = VectorStore(path / VECTORS_FILE, self.dim) if self.dim else None
        self._embedder = embedder
        self._device = device
        self._dtype = dtype
        self._lock = threading.RLock()
        self._load_lock = threading.Lock()
        self._encode_lock = threading.Lock()  # one forward pass at a time per model
        self._ann: AnnIndex | None = None
        self._ann_generation = -1

    @classmethod
    def open(cls, path: str | Path, *, device: str = "auto", model: str | None = None, embedder=None,
             dtype: str = "auto") -> "Searcher":
        """Open an index for reading. ``model`` may only restate the index's own model."""
        path = Path(path)
        manifest = read_manifest(path)
        if manifest is None or not (path / META_FILE).exists():
            raise IndexFormatError(f"{path} is not a mitsuke index (no manifest.json / {META_FILE}); "
                                   "build one with `mitsuke index PATH --index DIR`")
        have = manifest["model"]["name"] if manifest.get("model") else None
        if model is not None and str(model) != str(have or "none"):
            raise ModelMismatchError(f"index {path} was built with model {have or 'none'!r}; "
                                     f"it cannot be queried with {model!r}")
        if embedder is not None and have is not None and (
                str(embedder.info.name) != str(have) or embedder.dim != int(manifest["model"]["dim"])):
            raise ModelMismatchError(f"index {path} was built with model {have!r}; it cannot be queried "
                                     f"with {embedder.info.name!r} ({embedder.dim}-dim)")
        return cls(path, manifest, device=device, embedder=embedder, dtype=dtype)

    def close(self) -> None:
        self.store.close()
        if self.vectors is not None:
            self.vectors.close()

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ parts
    @property
    def has_dense(self) -> bool:
        return self.model_name is not None

    @property
    def embedder(self):
        if self._embedder is None:
            from indexer.embedding import Embedder, ModelInfo

            with self._load_lock:
                if self._embedder is None:
                    m = self.manifest["model"]
                    self._embedder = Embedder.from_pretrained(
                        ModelInfo.source(m), device=self._device, dtype=self._dtype, max_length=m.get("max_length"),
                        revision=m.get("revision"))
                    if self._embedder.dim != self.dim:
                        raise ModelMismatchError(
                            f"model {m['name']!r} now gives {self._embedder.dim}-dim vectors, the index holds {self.dim}")
        return self._embedder

    def _ann_for(self, conn, generation: int) -> AnnIndex:
        """The ANN index, caught up in memory to the snapshot's generation."""
        with self._lock:
            if self._ann is None:
                info = read_manifest(self.path).get("ann") or {}
                if info:
                    params = AnnParams.from_dict(info["params"])
                    self._ann, _ = load_ann(self.path / ANN_FILE, self.store, conn, self.vectors, params,
                                            int(info.get("generation", 0)), generation)
                else:
                    from indexer.ann import choose_params

                    cfg = self.manifest.get("ann_config", {})
                    n = self.store.counts(conn)["chunks"]
                    params = choose_params(n, self.dim, cfg.get("kind", "auto"), cfg.get("flat_threshold", 50_000))
                    log.info("%s has no ANN index yet: building one in memory", self.path)
                    self._ann = rebuild_ann(self.store, conn, self.vectors, params)
                self._ann_generation = generation
            elif generation > self._ann_generation:
                catch_up_ann(self._ann, self.store, conn, self.vectors, self._ann_generation)
                self._ann_generation = generation
            return self._ann

    # ------------------------------------------------------------------ search
    def search(self, query: str, k: int = 10, *, mode: str | None = None, rerank: bool = True,
               candidates: int | None = None, nprobe: int | None = None, where: dict[str, Any] | None = None,
               fusion: str = "rrf", weights: Sequence[float] | None = None) -> list[Passage]:
        """Top ``k`` passages for ``query``.

        ``mode``: ``hybrid`` (default for indexes with a model), ``dense`` or
        ``lexical`` (default for lexical-only indexes). ``where`` filters on
        document metadata and the built-in fields ``doc_key`` (glob), ``title``,
        ``source_type``. ``fusion``: ``rrf`` or ``weighted``; ``weights`` are
        (dense, lexical).
        """
        return self.search_batch([query], k, mode=mode, rerank=rerank, candidates=candidates, nprobe=nprobe,
                                 where=where, fusion=fusion, weights=weights)[0]

    def search_batch(self, queries: Sequence[str], k: int = 10, *, mode: str | None = None, rerank: bool = True,
                     candidates: int | None = None, nprobe: int | None = None, where: dict[str, Any] | None = None,
                     fusion: str = "rrf", weights: Sequence[float] | None = None) -> list[list[Passage]]:
        """``search`` for many queries; query embeddings are computed in one batch."""
        mode = mode or ("hybrid" if self.has_dense else "lexical")
        if mode not in MODES:
            raise QueryError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode != "lexical" and not self.has_dense:
            raise QueryError(f"index {self.path} is lexical-only (built with --model none): use mode='lexical'")
        if fusion not in ("rrf", "weighted"):
            raise QueryError(f"fusion must be 'rrf' or 'weighted', got {fusion!r}")
        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}")
        queries = [q if isinstance(q, str) else str(q) for q in queries]
        qvecs = None
        if mode != "lexical":
            embedder = self.embedder
            with self._encode_lock:
                qvecs = embedder.encode_queries(queries)
        pool = max(candidates or k * CANDIDATE_FACTOR, k)
        results: list[list[Passage]] = []
        with self.store.engine.connect() as conn:
            generation = self.store.generation(conn)
            allowed = matching_chunk_ids(conn, where) if where else None
            for qi, query in enumerate(queries):
                dense: list[tuple[int, float]] = []
                lexical: list[tuple[int, float]] = []
                if mode != "lexical" and query.strip():
                    dense = self._dense(conn, generation, qvecs[qi], k if mode == "dense" else pool, pool,
                                        rerank, nprobe, allowed)
                if mode != "dense":
                    lexical = bm25_search(conn, query, k if mode == "lexical" else pool, allowed)
                if mode == "dense":
                    ranked = dense
                elif mode == "lexical":
                    ranked = lexical
                else:
                    w = list(weights) if weights else None
                    ranked = (rrf if fusion == "rrf" else weighted)([dense, lexical], w)
                results.append(self._passages(conn, ranked[:k], dense, lexical))
        return results

    def _dense(self, conn, generation: int, qvec: np.ndarray, k: int, pool: int, rerank: bool,
               nprobe: int | None, allowed: set[int] | None) -> list[tuple[int, float]]:
        if allowed is not None and len(allowed) <= EXACT_FILTER_LIMIT:
            return self._exact_scan(conn, qvec, allowed, k)
        ann = self._ann_for(conn, generation)
        fetch = pool if rerank else k
        if allowed is not None:
            fetch = min(ann.ntotal, fetch * 4)
        scores, ids = ann.search(qvec[None, :], fetch, nprobe)
        cand = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        if allowed is not None:
            cand = [(i, s) for i, s in cand if i in allowed]
            if len(cand) < k:
                return self._exact_scan(conn, qvec, allowed, k)
        if rerank and cand:
            rows = self.store.chunk_rows(conn, [i for i, _ in cand])
            cand = [(i, s) for i, s in cand if i in rows and rows[i].vector_row is not None]
            exact = exact_scores(qvec, self.vectors, [rows[i].vector_row for i, _ in cand])
            cand = sorted(((i, float(s)) for (i, _), s in zip(cand, exact)), key=lambda x: (-x[1], x[0]))
        return cand[:k]

    def _exact_scan(self, conn, qvec: np.ndarray, allowed: set[int], k: int) -> list[tuple[int, float]]:
        rows = self.store.chunk_rows(conn, allowed)
        items = [(cid, r.vector_row) for cid, r in rows.items() if r.vector_row is not None]
        if not items:
            return []
        scores = exact_scores(qvec, self.vectors, [r for _, r in items])
        order = np.lexsort((np.array([c for c, _ in items]), -scores))[:k]
        return [(items[i][0], float(scores[i])) for i in order]

    def _passages(self, conn, ranked: list[tuple[int, float]], dense: list[tuple[int, float]],
                  lexical: list[tuple[int, float]]) -> list[Passage]:
        rows = self.store.chunk_rows(conn, [c for c, _ in ranked])
        d_rank = {c: (r, s) for r, (c, s) in enumerate(dense, 1)}
        l_rank = {c: (r, s) for r, (c, s) in enumerate(lexical, 1)}
        out = []
        for cid, score in ranked:
            row: ChunkRow | None = rows.get(cid)
            if row is None:  # deleted by a writer after the ANN snapshot
                continue
            d = d_rank.get(cid)
            lx = l_rank.get(cid)
            out.append(Passage(
                chunk_id=cid, doc_key=row.doc_key, title=row.title, text=row.text, score=float(score),
                char_start=row.char_start, char_end=row.char_end, headings=row.headings,
                metadata=row.metadata, chunk_index=row.chunk_index, source=row.source,
                dense_score=d[1] if d else None, lexical_score=lx[1] if lx else None,
                dense_rank=d[0] if d else None, lexical_rank=lx[0] if lx else None,
            ))
        return out

    # ------------------------------------------------------------------ info
    def info(self) -> dict[str, Any]:
        with self.store.engine.connect() as conn:
            counts = self.store.counts(conn)
            generation = self.store.generation(conn)
        manifest = read_manifest(self.path) or self.manifest
        files = {}
        for name in ("manifest.json", META_FILE, META_FILE + "-wal", VECTORS_FILE, ANN_FILE):
            p = self.path / name
            if p.exists():
                files[name] = p.stat().st_size
        ann = manifest.get("ann") or {}
        return {
            "path": str(self.path),
            "documents": counts["documents"],
            "chunks": counts["chunks"],
            "model": manifest.get("model"),
            "dim": self.dim or None,
            "ann": ann.get("params"),
            "ann_generation": ann.get("generation"),
            "generation": generation,
            "chunking": manifest.get("chunking"),
            "files": files,
        }

