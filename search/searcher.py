"""Searcher: dense (ANN + exact rerank), lexical (BM25) and hybrid search over one index."""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mitsuke.indexer.ann import gpu_count
from mitsuke.indexer.ann_delta import AnnView
from mitsuke.indexer.ann_gpu import for_gpu, needs_conversion
from mitsuke.indexer.ann_tune import AnnTuning
from mitsuke.indexer.errors import IndexFormatError
from mitsuke.indexer.japanese import LEXICAL_ANALYSIS_VERSION
from mitsuke.indexer.layout import MANIFEST_FILE, META_FILE, IndexPaths, Manifest
from mitsuke.indexer.location import is_url
from mitsuke.indexer.recovery import load_ann, rebuild_ann
from mitsuke.indexer.store import Snapshot
from mitsuke.indexer.vectors import VectorStore
from mitsuke.search.context import Context, retrieve_context
from mitsuke.search.dense import CANDIDATE_FACTOR, dense_leg
from mitsuke.search.fusion import DEFAULT_SETTINGS, FusionSettings, check_settings, resolve
from mitsuke.search.opening import open_reader_store
from mitsuke.search.ranking import make_passages, rank
from mitsuke.search.request import (
    MODES,
    Request,
    RequestCache,
    check_mode,
    check_queries,
    encodable,
    resolve_request,
    tuning_of,
    weight_pair,
)
from mitsuke.search.results import Passage
from mitsuke.search.rowmap import RowMaps
from mitsuke.search.trigram import LexicalHits, lexical_search

if TYPE_CHECKING:
    from mitsuke.indexer.protocol import Embedder
    from mitsuke.search.remote import CacheFeed

__all__ = ["Searcher", "MODES", "CANDIDATE_FACTOR"]

log = logging.getLogger("mitsuke")

Hits = list[tuple[int, float]]


class Searcher:
    """Query an index directory.

    >>> s = Searcher.open("my-index")                      # doctest: +SKIP
    >>> for p in s.search("更科蕎麦とはなんですか?", k=3):   # doctest: +SKIP
    ...     print(p.score, p.doc_key, p.text[:40])
    """

    def __init__(self, path: Path, manifest: Manifest, *, device: str = "auto", embedder: Embedder | None = None,
                 dtype: str = "auto", fusion: str | None = None, weights: Sequence[float] | None = None,
                 trust_remote_code: bool = False, **settings: Any) -> None:
        given = check_settings(FusionSettings(fusion=fusion, weights=weight_pair(weights), **settings))
        saved = FusionSettings.from_dict(manifest.search_defaults.settings() if manifest.search_defaults else None,
                                         f"{path / MANIFEST_FILE} search_defaults")
        #: The hybrid settings of every search: Searcher.open's arguments, else the
        #: index's saved defaults (``mitsuke tune --save``), else DEFAULT_SETTINGS.
        self.defaults = resolve(given, resolve(saved, DEFAULT_SETTINGS))
        self.fusion = self.defaults.fusion
        self.weights = self.defaults.weights
        self.path = path
        self.paths = IndexPaths(path)
        self.manifest = manifest
        self.store = open_reader_store(self.paths, manifest)
        self._trust_remote_code = trust_remote_code
        self._sums: tuple[tuple[int, int], dict] | None = None  # (generation, block checksums) of vectors.f16
        self.model_name: str | None = manifest.model.name if manifest.model else None
        self.dim = manifest.dim
        self.vectors = VectorStore(self.paths.vectors, self.dim) if self.dim else None
        self._embedder = embedder
        self._device = device
        self._dtype = dtype
        self._lock = threading.RLock()
        self._load_lock = threading.Lock()
        self._encode_lock = threading.Lock()  # one forward pass at a time per model
        self._ann: AnnView | None = None
        self._tuning: AnnTuning | None = tuning_of(manifest, None)
        self._ann_generation = -1
        self._counts: tuple[int, int] | None = None
        self._feed: CacheFeed | None = None  # a PostgreSQL index's cache upkeep (search.remote)
        self._rowmaps = RowMaps()  # chunk id -> vector row per generation, for the exact rerank (no SQL per search)
        self._told_no_trigrams = False
        self._requests = RequestCache()  # resolved settings of recent argument combinations
        if manifest.lexical_analysis_differs:
            log.warning("%s was indexed with lexical analysis v%s, this version queries with v%s: "
                        "lexical matches may be missed until the index is rebuilt",
                        path, manifest.lexical_analysis, LEXICAL_ANALYSIS_VERSION)

    @classmethod
    def open(cls, path: str | Path, *, device: str = "auto", model: str | None = None,
             embedder: Embedder | None = None, dtype: str = "auto", fusion: str | None = None,
             weights: Sequence[float] | None = None, trust_remote_code: bool = False, rrf_k: int | None = None,
             norm: str | None = None, candidates: int | None = None, rerank: bool | None = None,
             cache: str | Path | None = None, refresh_seconds: float | None = None) -> "Searcher":
        """Open an index for reading. ``model`` may only restate the index's own model.

        ``fusion``, ``weights`` (dense, lexical), ``rrf_k``, ``norm``,
        ``candidates`` and ``rerank`` are the defaults of every search of this
        Searcher (each call may override them); left None, the index's saved
        ``search_defaults`` (``mitsuke tune --save``) apply, else mitsuke's
        (``search.fusion.DEFAULT_SETTINGS``). ``embedder`` is any object of the
        ``mitsuke.Embedder`` protocol.
        ``trust_remote_code`` lets a model's own Python code run, as for indexing.
        A read-only index directory works (see ``SqliteStore``).

        ``path`` may be a PostgreSQL URL (``indexer.location``): the Searcher
        then works on a local cache (``cache``, default under the user's cache
        directory) caught up from the database at most every
        ``refresh_seconds`` (default 1) before a search (``search.remote``).
        """
        if embedder is not None:
            from mitsuke.indexer.protocol import check_embedder

            check_embedder(embedder)
        options: dict[str, Any] = dict(device=device, dtype=dtype, fusion=fusion, weights=weights,
                                       trust_remote_code=trust_remote_code, rrf_k=rrf_k, norm=norm,
                                       candidates=candidates, rerank=rerank)
        if is_url(path):
            from mitsuke.search.remote import open_remote

            return open_remote(cls, path, cache, refresh_seconds, model=model, embedder=embedder, **options)
        path = Path(path)
        manifest = Manifest.read(path)
        if manifest is None or not IndexPaths(path).meta.exists():
            raise IndexFormatError(f"{path} is not a mitsuke index (no {MANIFEST_FILE} / {META_FILE}); "
                                   "build one with `mitsuke index PATH --index DIR`")
        manifest.check_model(path, model=model, embedder=embedder, writing=False)
        return cls(path, manifest, embedder=embedder, **options)

    def close(self) -> None:
        self.store.close()
        if self.vectors is not None:
            self.vectors.close()
        if self._feed is not None:
            self._feed.close()

    def refresh(self) -> int:
        """Catch a PostgreSQL index's local cache up now; returns the generation searches will see."""
        if self._feed is not None:
            return self._feed.refresh()
        with self.store.snapshot() as snap:
            return snap.generation

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ parts
    @property
    def index_name(self) -> str:
        """The index as users name it: its absolute directory, or its URL (password hidden)."""
        return self._feed.location.display if self._feed is not None else str(Path(self.path).resolve())

    @property
    def has_dense(self) -> bool:
        return self.model_name is not None

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            from mitsuke.indexer.embedding import Embedder

            with self._load_lock:
                if self._embedder is None:
                    m = self.manifest.model
                    assert m is not None  # has_dense
                    embedder = Embedder.from_pretrained(
                        m.source(), device=self._device, dtype=self._dtype, max_length=m.max_length,
                        revision=m.revision, trust_remote_code=self._trust_remote_code)
                    self.manifest.check_dim(embedder)
                    self._embedder = embedder
        assert self._embedder is not None  # loaded above
        return self._embedder

    def _ann_for(self, snap: Snapshot) -> AnnView:
        """The ANN index, caught up in memory to the snapshot's generation."""
        conn, generation = snap.conn, snap.generation
        assert self.vectors is not None  # has_dense
        with self._lock:
            if self._ann is None:
                manifest = Manifest.read(self.path) or self.manifest  # the writer may have saved one since open
                if manifest.ann is not None:
                    ann, _ = load_ann(self.paths.ann, self.store, conn, self.vectors, manifest.ann.params,
                                      manifest.ann.generation, generation, saved=manifest.ann,
                                      index_id=manifest.index_id)
                    if gpu_count() and needs_conversion(ann.params):  # fast-scan codes: GPU FAISS needs 8-bit
                        ann = for_gpu(ann, self.store, conn, self.vectors)
                    self._ann = AnnView(ann)
                else:
                    params = manifest.ann_params(self.store.counts(conn)["chunks"])
                    log.info("%s has no ANN index yet: building one in memory", self.path)
                    self._ann = AnnView(rebuild_ann(self.store, conn, self.vectors, params))
                self._ann_generation = generation
                self._tuning = tuning_of(manifest, self._ann.params)
            elif generation > self._ann_generation:
                # Other threads may be searching self._ann outside this lock, and FAISS
                # allows concurrent searches but not a search during add/remove (ids come
                # back mismatched): views are immutable, a new one is swapped in.
                # The view shares its base with the old one and adds only what changed
                # (indexer.ann_delta): no copy of the whole index per commit.
                self._ann = self._ann.catch_up(self.store, conn, self.vectors, self._ann_generation)
                self._ann_generation = generation
                self._tuning = tuning_of(Manifest.read(self.path) or self.manifest, self._ann.params)
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
        queries = check_queries(queries)
        if self._feed is not None:
            self._feed.refresh(force=False)
        req = self._cached_request(k, mode, rerank, candidates, nprobe, where, fusion, weights, rrf_k, norm)
        if not queries:
            return []
        live = [i for i, q in enumerate(queries) if q.strip()]
        qvecs = self._embed(queries, live) if req.mode != "lexical" else {}
        results: list[list[Passage]] = [[] for _ in queries]
        with self.store.snapshot() as snap:
            if self.vectors is not None:  # row numbers of this snapshot refer to its vectors epoch
                self.vectors.bind(snap.vectors_epoch())
                self.vectors.expect(self._block_sums(snap))
            dense_legs = self._dense_legs(snap, req, qvecs)
            for qi in live:
                dense = dense_legs.get(qi, [])
                lexical = self._lexical_leg(snap, req, queries[qi])
                ranked, extra = self._fuse(snap, req, qvecs.get(qi), dense, lexical.ranked)
                results[qi] = self._passages(snap, ranked[:req.k], dense, lexical.ranked, extra, lexical.matches)
        return results

    # ------------------------------------------------------------------ validate
    _check_queries = staticmethod(check_queries)

    def _cached_request(self, k: int, mode: str | None, rerank: bool | None, candidates: int | None,
                        nprobe: int | None, where: dict[str, Any] | None, fusion: str | None,
                        weights: Sequence[float] | None, rrf_k: int | None, norm: str | None) -> Request:
        """``_request`` of these arguments; without a ``where``, resolved once per (arguments, tuning)."""
        settings = FusionSettings(fusion, weight_pair(weights), rrf_k, norm)
        return self._requests.get_or_make(
            None if where is not None else (k, mode, rerank, candidates, nprobe, fusion, weights, rrf_k, norm),
            self.defaults, self._tuning, lambda: self._request(k, mode, rerank, candidates, nprobe, where, settings))

    def _request(self, k: int, mode: str | None, rerank: bool | None, candidates: int | None, nprobe: int | None,
                 where: dict[str, Any] | None, fusion: FusionSettings) -> Request:
        return resolve_request(check_mode(mode, self.has_dense, self.path), k, rerank, candidates, nprobe, where,
                               fusion, self.defaults, self._tuning)

    # ------------------------------------------------------------------ legs
    def _embed(self, queries: list[str], live: list[int]) -> dict[int, np.ndarray]:
        """Query vectors of the non-blank queries, by position."""
        if not live:
            return {}
        embedder = self.embedder
        with self._encode_lock:
            vecs = embedder.encode_queries([encodable(queries[i]) for i in live])
        return {i: vecs[j] for j, i in enumerate(live)}

    def _dense_legs(self, snap: Snapshot, req: Request, qvecs: dict[int, np.ndarray]) -> dict[int, Hits]:
        """Each query's dense hits: k in dense mode, the whole candidate pool for fusion."""
        if not qvecs:
            return {}
        assert self.vectors is not None  # has_dense
        order = sorted(qvecs)
        n_out = req.k if req.mode == "dense" else req.pool
        qs = qvecs[order[0]][None, :] if len(order) == 1 else np.stack([qvecs[i] for i in order])
        legs = dense_leg(snap, self._ann_for(snap), self.vectors, qs, n_out,
                         req.pool, req.rerank, req.nprobe, req.flt, self._rowmaps.for_snapshot(snap))
        return dict(zip(order, legs))

    def _lexical_leg(self, snap: Snapshot, req: Request, query: str) -> LexicalHits:
        """BM25 over MeCab terms, with substring (trigram) matches where the index has them."""
        if req.mode == "dense":
            return LexicalHits([])
        return lexical_search(snap, query, req.k if req.mode == "lexical" else req.pool, req.flt,
                              n_docs=self._chunk_count(snap), trigrams=self._has_trigrams(snap))

    def _has_trigrams(self, snap: Snapshot) -> bool:
        """Whether the index has the trigram table; an older index is searched by its terms alone."""
        if snap.has_substrings():
            return True
        if not self._told_no_trigrams:
            self._told_no_trigrams = True
            log.warning("%s predates substring (trigram) matching: lexical search uses MeCab terms only. "
                        "Any `mitsuke index ... --index %s` run adds it (e.g. `mitsuke index - --index %s "
                        "< /dev/null`, which indexes nothing else)", self.path, self.path, self.path)
        return False

    def _block_sums(self, snap: Snapshot) -> dict:
        """The checksums of ``vectors.f16``'s blocks at the snapshot's generation (read once per generation)."""
        key = (snap.generation, snap.vectors_epoch())  # a compaction renumbers rows at the same generation
        cached = self._sums
        if cached is None or cached[0] != key:
            cached = (key, snap.block_checksums())
            self._sums = cached
        return cached[1]

    def _chunk_count(self, snap: Snapshot) -> int:
        """Number of passages at the snapshot's generation (counted once per generation)."""
        cached = self._counts
        if cached is None or cached[0] != snap.generation:
            cached = (snap.generation, int(snap.counts()["chunks"]))
            self._counts = cached
        return cached[1]

    # ------------------------------------------------------------------ fuse
    def _fuse(self, snap: Snapshot, req: Request, qvec: np.ndarray | None, dense: Hits, lexical: Hits
              ) -> tuple[Hits, dict[int, float]]:
        """The ranking the mode asks for, and the exact cosines of lexical-only hybrid candidates."""
        rowmap = self._rowmaps.for_snapshot(snap) if req.mode == "hybrid" else None
        return rank(snap, self.vectors, rowmap, req, qvec, dense, lexical)

    # ------------------------------------------------------------------ passages
    def _passages(self, snap: Snapshot, ranked: Hits, dense: Hits, lexical: Hits,
                  extra_dense: dict[int, float] | None = None, matches: dict[int, str] | None = None
                  ) -> list[Passage]:
        return make_passages(snap.chunk_rows([c for c, _ in ranked]), ranked, dense, lexical, extra_dense, matches)

    # ------------------------------------------------------------------ info
    def info(self) -> dict[str, Any]:
        if self._feed is not None:
            self._feed.refresh(force=False)
        with self.store.snapshot() as snap:
            counts = snap.counts()
            generation = snap.generation
        manifest = Manifest.read(self.path) or self.manifest
        return {
            "path": str(self.path),
            "documents": counts["documents"],
            "chunks": counts["chunks"],
            "model": manifest.model.to_dict() if manifest.model else None,
            "dim": self.dim or None,
            "ann": manifest.ann.params.to_dict() if manifest.ann else None,
            "ann_generation": manifest.ann.generation if manifest.ann else None,
            "ann_tuning": manifest.ann.tuning.to_dict() if manifest.ann and manifest.ann.tuning else None,
            "generation": generation,
            "chunking": asdict(manifest.chunking),
            "search_defaults": manifest.search_defaults.to_dict() if manifest.search_defaults else None,
            "files": self.paths.sizes(),
            **(self._feed.describe() if self._feed is not None else {}),
        }

    # ------------------------------------------------------------------ RAG
    def retrieve_context(self, query: str, *, k: int = 5, max_chars: int | None = None, neighbors: int = 0,
                         mode: str | None = None, **search_kwargs: Any) -> Context:
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
        return retrieve_context(self, query, k=k, max_chars=max_chars, neighbors=neighbors, mode=mode,
                                **search_kwargs)
