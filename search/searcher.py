"""Searcher: dense (ANN + exact rerank), lexical (BM25) and hybrid search over one index."""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mitsuke.indexer.ann import AnnIndex, AnnParams
from mitsuke.indexer.builder import ANN_FILE, META_FILE, VECTORS_FILE
from mitsuke.indexer.errors import IndexFormatError, ModelMismatchError, QueryError
from mitsuke.indexer.japanese import LEXICAL_ANALYSIS_VERSION
from mitsuke.indexer.manifest import read_manifest
from mitsuke.indexer.recovery import catch_up_ann, load_ann, rebuild_ann
from mitsuke.indexer.store import ChunkRow, MetadataStore
from mitsuke.indexer.vectors import VectorStore
from mitsuke.search.filters import Filter, compile_where, filtered_vectors
from mitsuke.search.fusion import DEFAULT_SETTINGS, FusionSettings, check_settings, fuse, resolve
from mitsuke.search.lexical import bm25_search
from mitsuke.search.rerank import exact_scores, exact_top_k
from mitsuke.search.results import Passage

__all__ = ["Searcher", "MODES", "CANDIDATE_FACTOR"]

log = logging.getLogger("mitsuke")

MODES = ("hybrid", "dense", "lexical")
# ANN candidates per requested result, rescored exactly; PQ codes misorder
# near neighbours, the exact rerank puts them back.
CANDIDATE_FACTOR = 10
# A filter whose matching vectors hold at most this many numbers (rows × dim) is
# answered by an exact scan of them: 4M float16 numbers (2,340 rows of 1792-d,
# 10,900 of 384-d) convert and score in ~21 ms (bench/filter_scan.py, BENCHMARKS.md "Query engine").
# Broader filters go through the ANN index restricted to the matching ids (a
# FAISS IDSelector), then the exact rerank.
EXACT_SCAN_ELEMENTS = 1 << 22


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise QueryError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _encodable(query: str) -> str:
    """``query`` with lone surrogates replaced: tokenizers (Rust) reject them outright."""
    try:
        query.encode("utf-8")
        return query
    except UnicodeEncodeError:
        return query.encode("utf-8", "replace").decode("utf-8")


def _ann_search(ann: AnnIndex, qvecs: np.ndarray, k: int, nprobe: int | None, allowed_ids: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray]:
    """``ann.search``, or a FAISS search restricted to ``allowed_ids`` through an IDSelector."""
    if allowed_ids is None:
        return ann.search(qvecs, k, nprobe)
    import faiss

    q = np.ascontiguousarray(qvecs, dtype=np.float32)
    k = min(k, ann.ntotal)
    if k <= 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    # The selector must outlive the search: FAISS keeps only a raw pointer to it.
    sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
    if ann.params.kind == "ivfpq":
        params = faiss.SearchParametersIVF(sel=sel, nprobe=int(nprobe or ann.params.nprobe))
    else:
        params = faiss.SearchParameters(sel=sel)
    scores, ids = ann.index.search(q, k, params=params)
    del sel
    return scores, ids


class Searcher:
    """Query an index directory.

    >>> s = Searcher.open("my-index")                      # doctest: +SKIP
    >>> for p in s.search("更科蕎麦とはなんですか?", k=3):   # doctest: +SKIP
    ...     print(p.score, p.doc_key, p.text[:40])
    """

    def __init__(self, path: Path, manifest: dict[str, Any], *, device: str = "auto", embedder=None,
                 dtype: str = "auto", fusion: str | None = None, weights: Sequence[float] | None = None,
                 **settings: Any) -> None:
        given = check_settings(FusionSettings(fusion=fusion, weights=None if weights is None else tuple(weights),
                                              **settings))
        saved = FusionSettings.from_dict(manifest.get("search_defaults"), f"{path}/manifest.json search_defaults")
        #: The hybrid settings of every search: Searcher.open's arguments, else the
        #: index's saved defaults (``mitsuke tune --save``), else DEFAULT_SETTINGS.
        self.defaults = resolve(given, resolve(saved, DEFAULT_SETTINGS))
        self.fusion = self.defaults.fusion
        self.weights = self.defaults.weights
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
        self._counts: tuple[int, int] | None = None
        analysis = manifest.get("lexical_analysis")
        if analysis is not None and analysis != LEXICAL_ANALYSIS_VERSION:
            log.warning("%s was indexed with lexical analysis v%s, this version queries with v%s: "
                        "lexical matches may be missed until the index is rebuilt",
                        path, analysis, LEXICAL_ANALYSIS_VERSION)

    @classmethod
    def open(cls, path: str | Path, *, device: str = "auto", model: str | None = None, embedder=None,
             dtype: str = "auto", fusion: str | None = None, weights: Sequence[float] | None = None,
             rrf_k: int | None = None, norm: str | None = None, candidates: int | None = None,
             rerank: bool | None = None) -> "Searcher":
        """Open an index for reading. ``model`` may only restate the index's own model.

        ``fusion``, ``weights`` (dense, lexical), ``rrf_k``, ``norm``,
        ``candidates`` and ``rerank`` are the defaults of every search of this
        Searcher (each call may override them); left None, the index's saved
        ``search_defaults`` (``mitsuke tune --save``) apply, else mitsuke's
        (``search.fusion.DEFAULT_SETTINGS``). ``embedder`` is any object of the
        ``mitsuke.EmbedderProtocol``.
        """
        path = Path(path)
        manifest = read_manifest(path)
        if manifest is None or not (path / META_FILE).exists():
            raise IndexFormatError(f"{path} is not a mitsuke index (no manifest.json / {META_FILE}); "
                                   "build one with `mitsuke index PATH --index DIR`")
        have = manifest["model"]["name"] if manifest.get("model") else None
        if model is not None and str(model) != str(have or "none"):
            raise ModelMismatchError(f"index {path} was built with model {have or 'none'!r}; "
                                     f"it cannot be queried with {model!r}")
        if embedder is not None:
            from mitsuke.indexer.protocol import check_embedder

            check_embedder(embedder)
        if embedder is not None and have is not None and (
                str(embedder.info.name) != str(have) or embedder.dim != int(manifest["model"]["dim"])):
            raise ModelMismatchError(f"index {path} was built with model {have!r}; it cannot be queried "
                                     f"with {embedder.info.name!r} ({embedder.dim}-dim)")
        return cls(path, manifest, device=device, embedder=embedder, dtype=dtype, fusion=fusion, weights=weights,
                   rrf_k=rrf_k, norm=norm, candidates=candidates, rerank=rerank)

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
            from mitsuke.indexer.embedding import Embedder, ModelInfo

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
                    from mitsuke.indexer.ann import choose_params

                    cfg = self.manifest.get("ann_config", {})
                    n = self.store.counts(conn)["chunks"]
                    params = choose_params(n, self.dim, cfg.get("kind", "auto"), cfg.get("flat_threshold", 50_000))
                    log.info("%s has no ANN index yet: building one in memory", self.path)
                    self._ann = rebuild_ann(self.store, conn, self.vectors, params)
                self._ann_generation = generation
            elif generation > self._ann_generation:
                # Other threads may be searching self._ann outside this lock, and FAISS
                # allows concurrent searches but not a search during add/remove (ids come
                # back mismatched): catch up a copy and swap it in.
                import faiss

                ann = AnnIndex(faiss.clone_index(self._ann.index), self._ann.params)
                catch_up_ann(ann, self.store, conn, self.vectors, self._ann_generation)
                self._ann = ann
                self._ann_generation = generation
            return self._ann

    # ------------------------------------------------------------------ search
    def search(self, query: str, k: int = 10, *, mode: str | None = None, rerank: bool | None = None,
               candidates: int | None = None, nprobe: int | None = None, where: dict[str, Any] | None = None,
               fusion: str | None = None, weights: Sequence[float] | None = None, rrf_k: int | None = None,
               norm: str | None = None) -> list[Passage]:
        """Top ``k`` passages for ``query``, best first.

        - ``mode``: ``hybrid`` (default for indexes with a model), ``dense`` or
          ``lexical`` (default for lexical-only indexes; dense or hybrid on one
          is a QueryError).
        - ``rerank``: dense candidates (``candidates``, default ``k × 10``) are
          rescored by exact cosine over their stored float16 vectors (default);
          ``False`` keeps the ANN order and scores. In hybrid mode
          ``candidates`` is the depth of each leg.
        - ``nprobe``: IVF cells to visit (default: the manifest's).
        - ``where``: filters on document metadata and the built-in fields
          ``doc_key`` (glob), ``title``, ``source_type``, ``source`` (see
          ``search.filters``); k passages come back whenever k match.
        - ``fusion``: ``convex`` (default), ``rrf`` or ``weighted``; ``weights``
          are (dense, lexical), ``rrf_k`` the RRF constant, ``norm`` the convex
          normalisation (``tmm`` or ``minmax``) — see ``search.fusion``. Left
          None, every setting comes from ``self.defaults`` (Searcher.open's
          arguments, the index's saved ``search_defaults``, mitsuke's defaults).

        ``Passage.score`` is the cosine (dense), the BM25 score (lexical) or the
        fused score (hybrid); ``dense_score``/``lexical_score`` and the ranks keep
        each leg's view. An empty query returns no passages.
        """
        return self.search_batch([query], k, mode=mode, rerank=rerank, candidates=candidates, nprobe=nprobe,
                                 where=where, fusion=fusion, weights=weights, rrf_k=rrf_k, norm=norm)[0]

    def search_batch(self, queries: Sequence[str], k: int = 10, *, mode: str | None = None,
                     rerank: bool | None = None, candidates: int | None = None, nprobe: int | None = None,
                     where: dict[str, Any] | None = None, fusion: str | None = None,
                     weights: Sequence[float] | None = None, rrf_k: int | None = None,
                     norm: str | None = None) -> list[list[Passage]]:
        """``search`` for many queries: embeddings are computed in batches, the ANN searched once."""
        if isinstance(queries, str):
            raise QueryError("search_batch takes a list of queries, got one string: use search(query) instead")
        queries = list(queries)
        for q in queries:
            if not isinstance(q, str):
                raise QueryError(f"a query must be a string, got {type(q).__name__}: {q!r:.60}")
        mode = self._check_mode(mode)
        k = _positive_int("k", k)
        if candidates is not None:
            candidates = _positive_int("candidates", candidates)
        st = check_settings(FusionSettings(fusion, None if weights is None else tuple(weights), rrf_k, norm,
                                           candidates, rerank))
        st = resolve(st, self.defaults)
        # Saved/opened candidate depths are hybrid leg depths; dense mode keeps k × 10 unless told.
        pool = max(candidates or (st.candidates if mode == "hybrid" else None) or k * CANDIDATE_FACTOR, k)
        rerank = bool(st.rerank)
        if nprobe is not None:
            nprobe = _positive_int("nprobe", nprobe)
        flt = compile_where(where)
        if not queries:
            return []
        live = [i for i, q in enumerate(queries) if q.strip()]
        qvecs: dict[int, np.ndarray] = {}
        if mode != "lexical" and live:
            embedder = self.embedder
            with self._encode_lock:
                vecs = embedder.encode_queries([_encodable(queries[i]) for i in live])
            qvecs = {i: vecs[j] for j, i in enumerate(live)}
        # The dense leg keeps k passages in dense mode, the whole candidate pool for fusion.
        n_dense = k if mode == "dense" else pool
        results: list[list[Passage]] = [[] for _ in queries]
        with self.store.engine.connect() as conn:
            generation = self.store.generation(conn)
            if self.vectors is not None:  # row numbers of this snapshot refer to its vectors epoch
                self.vectors.bind(self.store.vectors_epoch(conn))
            dense_legs: dict[int, list[tuple[int, float]]] = {}
            if qvecs:
                order = sorted(qvecs)
                legs = self._dense(conn, generation, np.stack([qvecs[i] for i in order]), n_dense, pool,
                                   rerank, nprobe, flt)
                dense_legs = dict(zip(order, legs))
            for qi in live:
                dense = dense_legs.get(qi, [])
                lexical: list[tuple[int, float]] = []
                if mode != "dense":
                    lexical = bm25_search(conn, queries[qi], k if mode == "lexical" else pool, flt,
                                          n_docs=self._chunk_count(conn, generation))
                extra: dict[int, float] = {}
                if mode == "dense":
                    ranked = dense
                elif mode == "lexical":
                    ranked = lexical
                else:
                    # Lexical-only candidates get their exact cosine too: weighted fusion
                    # needs it, and the Passage reports it.
                    have = {c for c, _ in dense}
                    missing = [c for c, _ in lexical if c not in have]
                    extra = self._cosines(conn, qvecs[qi], missing)
                    dense_all = dense + sorted(extra.items(), key=lambda x: (-x[1], x[0]))
                    ranked = fuse(dense if st.fusion == "rrf" else dense_all, lexical, st.fusion, st.weights,
                                  rrf_k=st.rrf_k, norm=st.norm)
                results[qi] = self._passages(conn, ranked[:k], dense, lexical, extra)
        return results

    def legs(self, queries: Sequence[str], depth: int, *, rerank: bool = True, nprobe: int | None = None
             ) -> list[tuple[list[tuple[int, float]], list[tuple[int, float]], dict[int, float]]]:
        """Both legs of a hybrid search of each query at ``depth``, unfused (``mitsuke tune`` fuses them).

        Per query: the dense leg (chunk id, cosine), the lexical leg (chunk id,
        BM25), and the exact cosine of every lexical candidate missing from the
        dense leg. Truncated to a smaller depth d, they are what a hybrid search
        with ``candidates=d`` fuses (exactly so on a flat index; with IVF-PQ the
        deeper ANN search may find a few more true neighbours).
        """
        self._check_mode("hybrid")
        depth = _positive_int("depth", depth)
        queries = [_encodable(q) for q in queries]
        out: list[tuple[list[tuple[int, float]], list[tuple[int, float]], dict[int, float]]] = []
        if not queries:
            return out
        with self._encode_lock:
            qvecs = self.embedder.encode_queries(queries)
        with self.store.engine.connect() as conn:
            generation = self.store.generation(conn)
            self.vectors.bind(self.store.vectors_epoch(conn))
            dense_legs = self._dense(conn, generation, np.asarray(qvecs), depth, depth, rerank, nprobe, None)
            n_docs = self._chunk_count(conn, generation)
            for qi, q in enumerate(queries):
                dense = dense_legs[qi]
                lexical = bm25_search(conn, q, depth, None, n_docs=n_docs) if q.strip() else []
                have = {c for c, _ in dense}
                out.append((dense, lexical, self._cosines(conn, qvecs[qi], [c for c, _ in lexical if c not in have])))
        return out

    def _chunk_count(self, conn, generation: int) -> int:
        """Number of passages at ``generation`` (counted once per generation)."""
        cached = self._counts
        if cached is None or cached[0] != generation:
            cached = (generation, int(self.store.counts(conn)["chunks"]))
            self._counts = cached
        return cached[1]

    def _check_mode(self, mode: str | None) -> str:
        mode = mode or ("hybrid" if self.has_dense else "lexical")
        if mode not in MODES:
            raise QueryError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode != "lexical" and not self.has_dense:
            raise QueryError(f"index {self.path} is lexical-only (built with --model none): mode={mode!r} needs "
                             "embeddings; use mode='lexical' (--mode lexical) or rebuild the index with a model")
        return mode

    # ------------------------------------------------------------------ dense leg
    def _dense(self, conn, generation: int, qvecs: np.ndarray, n_out: int, pool: int, rerank: bool,
               nprobe: int | None, flt: Filter | None) -> list[list[tuple[int, float]]]:
        """Best ``n_out`` (chunk id, cosine) per query vector."""
        ann = self._ann_for(conn, generation)
        flat = ann.params.kind == "flat"
        if flt is not None:
            allowed = [(c, r) for c, r in filtered_vectors(conn, flt) if r is not None]
            if not allowed:
                return [[] for _ in qvecs]
            ids = np.fromiter((c for c, _ in allowed), dtype=np.int64, count=len(allowed))
            rows = np.fromiter((r for _, r in allowed), dtype=np.int64, count=len(allowed))
            if flat:
                # The flat index holds float32 copies of the same rows in memory: with an
                # IDSelector it scores only the matching ones, exactly, faster than the memmap.
                return self._ann_candidates(conn, ann, qvecs, n_out, pool, False, nprobe, ids)
            use_nprobe = nprobe or ann.params.nprobe
            # Allowed vectors an IVF search would visit: too few for a full pool means the
            # ANN would come back short, and an exact scan of them is cheap anyway.
            visited = len(allowed) * min(1.0, use_nprobe / max(ann.params.nlist, 1))
            if len(allowed) * self.dim <= EXACT_SCAN_ELEMENTS or visited < 2 * pool:
                return exact_top_k(qvecs, self.vectors, ids, rows, n_out)
            out = self._ann_candidates(conn, ann, qvecs, n_out, pool, rerank, nprobe, ids)
            for qi, cand in enumerate(out):
                if len(cand) < min(n_out, len(allowed)):
                    log.debug("filtered ANN search came back short (%d < %d): exact scan", len(cand), n_out)
                    out[qi] = exact_top_k(qvecs[qi], self.vectors, ids, rows, n_out)[0]
            return out
        return self._ann_candidates(conn, ann, qvecs, n_out, pool, rerank and not flat, nprobe, None)

    def _ann_candidates(self, conn, ann: AnnIndex, qvecs: np.ndarray, n_out: int, pool: int, rerank: bool,
                        nprobe: int | None, allowed_ids: np.ndarray | None) -> list[list[tuple[int, float]]]:
        """ANN search (restricted to ``allowed_ids`` when given), then exact rerank of the candidates."""
        fetch = max(pool, n_out) if rerank else n_out
        scores, ids = _ann_search(ann, qvecs, fetch, nprobe, allowed_ids)
        out: list[list[tuple[int, float]]] = []
        rows = self._vector_rows(conn, {int(i) for i in ids.ravel() if i >= 0}) if rerank else {}
        for qi in range(len(qvecs)):
            cand = [(int(i), float(s)) for i, s in zip(ids[qi], scores[qi]) if i >= 0]
            if rerank and cand:
                # Ids deleted since the ANN snapshot have no row any more: they drop out here.
                cand = [(i, s) for i, s in cand if rows.get(i) is not None]
                exact = exact_scores(qvecs[qi], self.vectors, [rows[i] for i, _ in cand])
                cand = sorted(((i, float(s)) for (i, _), s in zip(cand, exact)), key=lambda x: (-x[1], x[0]))
            out.append(cand[:n_out])
        return out

    def _vector_rows(self, conn, ids) -> dict[int, int | None]:
        ids = sorted(int(i) for i in ids)
        out: dict[int, int | None] = {}
        for start in range(0, len(ids), 900):
            part = ",".join(str(i) for i in ids[start:start + 900])  # ints only: safe to inline
            for cid, row in conn.exec_driver_sql(f"SELECT id, vector_row FROM chunks WHERE id IN ({part})"):
                out[int(cid)] = None if row is None else int(row)
        return out

    def _cosines(self, conn, qvec: np.ndarray, ids: list[int]) -> dict[int, float]:
        """Exact cosine of ``qvec`` with the given chunks (those that have a vector)."""
        if not ids:
            return {}
        rows = self._vector_rows(conn, ids)
        have = [i for i in ids if rows.get(i) is not None]
        scores = exact_scores(qvec, self.vectors, [rows[i] for i in have])
        return {i: float(s) for i, s in zip(have, scores)}

    def _passages(self, conn, ranked: list[tuple[int, float]], dense: list[tuple[int, float]],
                  lexical: list[tuple[int, float]], extra_dense: dict[int, float] | None = None) -> list[Passage]:
        rows = self.store.chunk_rows(conn, [c for c, _ in ranked])
        d_rank = {c: (r, s) for r, (c, s) in enumerate(dense, 1)}
        l_rank = {c: (r, s) for r, (c, s) in enumerate(lexical, 1)}
        extra_dense = extra_dense or {}
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
                dense_score=d[1] if d else extra_dense.get(cid), lexical_score=lx[1] if lx else None,
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
            "search_defaults": manifest.get("search_defaults"),
            "files": files,
        }

    # ------------------------------------------------------------------ RAG
    def retrieve_context(self, query: str, *, k: int = 5, max_chars: int | None = None, neighbors: int = 0,
                         mode: str | None = None, **search_kwargs: Any):
        """The top ``k`` passages for ``query`` as a ``search.context.Context`` for an LLM prompt.

        Each hit is widened with up to ``neighbors`` adjacent chunks of its
        document on each side (overlaps merged, offsets kept), text already
        given by a better-ranked passage is left out, and the passages' text
        totals at most ``max_chars`` characters. Every passage carries a
        ``Citation`` (doc_key, title, char_start, char_end, source, metadata).
        Other keyword arguments (``where``, ``rerank``, ``fusion``, ...) go to ``search``.

        >>> ctx = s.retrieve_context("豊岡市の冬は?", k=5, max_chars=2000, neighbors=1)  # doctest: +SKIP
        >>> print(ctx.render())                                                         # doctest: +SKIP
        """
        from mitsuke.search.context import retrieve_context

        return retrieve_context(self, query, k=k, max_chars=max_chars, neighbors=neighbors, mode=mode,
                                **search_kwargs)
