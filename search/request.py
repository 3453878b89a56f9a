"""The checked settings of one search: arguments over the Searcher's defaults, the index's tuning, mitsuke's.

``Searcher.search_batch`` resolves its arguments here into a :class:`Request`
(mode, k, candidate pool, rerank, nprobe, fusion, filter). Resolving is pure:
the same arguments, defaults and tuning give the same request, so a Searcher
keeps recent ones (:class:`RequestCache`) instead of resolving per search.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np

from mitsuke.indexer.ann import AnnParams
from mitsuke.indexer.ann_tune import AnnTuning
from mitsuke.indexer.errors import QueryError
from mitsuke.indexer.layout import Manifest
from mitsuke.search.dense import CANDIDATE_FACTOR
from mitsuke.search.filters import Filter, compile_where
from mitsuke.search.fusion import FusionSettings, check_settings, resolve

__all__ = ["Request", "RequestCache", "MODES", "resolve_request", "check_mode", "check_queries", "positive_int",
           "encodable", "tuning_of", "weight_pair"]

MODES = ("hybrid", "dense", "lexical")


@dataclass(frozen=True)
class Request:
    """The checked settings of one ``search_batch`` call."""

    mode: str
    k: int
    pool: int  # candidates per leg that fusion and the rerank see
    rerank: bool
    nprobe: int | None
    fusion: str
    weights: tuple[float, ...]
    rrf_k: int
    norm: str
    flt: Filter | None


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise QueryError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def encodable(query: str) -> str:
    """``query`` with lone surrogates replaced: tokenizers (Rust) reject them outright."""
    try:
        query.encode("utf-8")
        return query
    except UnicodeEncodeError:
        return query.encode("utf-8", "replace").decode("utf-8")


def tuning_of(manifest: Manifest | None, params: AnnParams | None) -> AnnTuning | None:
    """The measured nprobe / pool recorded for the saved ANN index (if ``params`` given: for those parameters)."""
    tuning = manifest.ann.tuning if manifest is not None and manifest.ann is not None else None
    if tuning is None or params is None:
        return tuning
    return tuning if params.kind == "ivfpq" and tuning.nlist == params.nlist else None


def weight_pair(weights: Sequence[float] | None) -> tuple[float, float] | None:
    """``weights`` as ``FusionSettings`` holds them (its ``check_settings`` rejects any other length)."""
    return None if weights is None else cast("tuple[float, float]", tuple(weights))


def check_queries(queries: Sequence[str]) -> list[str]:
    if isinstance(queries, str):
        raise QueryError("search_batch takes a list of queries, got one string: use search(query) instead")
    out = list(queries)
    for q in out:
        if not isinstance(q, str):
            raise QueryError(f"a query must be a string, got {type(q).__name__}: {q!r:.60}")
    return out


def check_mode(mode: str | None, has_dense: bool, path: Any) -> str:
    mode = mode or ("hybrid" if has_dense else "lexical")
    if mode not in MODES:
        raise QueryError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "lexical" and not has_dense:
        raise QueryError(f"index {path} is lexical-only (built with --model none): mode={mode!r} needs "
                         "embeddings; use mode='lexical' (--mode lexical) or rebuild the index with a model")
    return mode


def resolve_request(mode: str, k: int, rerank: bool | None, candidates: int | None, nprobe: int | None,
                    where: dict[str, Any] | None, fusion: FusionSettings, defaults: FusionSettings,
                    tuning: AnnTuning | None) -> Request:
    """The request of checked ``mode`` and the other arguments, over ``defaults`` and the index's ``tuning``."""
    k = positive_int("k", k)
    if candidates is not None:
        candidates = positive_int("candidates", candidates)
    # Arguments over Searcher.open's, the index's saved defaults and mitsuke's (search.fusion).
    st = resolve(check_settings(replace(fusion, candidates=candidates, rerank=rerank)), defaults)
    # tuning: measured at build time (indexer.ann_tune); None: the formula defaults
    factor = tuning.candidate_factor if tuning is not None else CANDIDATE_FACTOR
    # A saved/opened candidate depth is the hybrid legs' depth; dense mode keeps k × factor unless told.
    pool = max(candidates or (st.candidates if mode == "hybrid" else None) or k * factor, k)
    if nprobe is not None:
        nprobe = positive_int("nprobe", nprobe)
    elif tuning is not None:
        nprobe = tuning.nprobe
    return Request(mode=mode, k=k, pool=pool, rerank=bool(st.rerank), nprobe=nprobe, fusion=str(st.fusion),
                   weights=tuple(st.weights or (1.0, 1.0)), rrf_k=int(st.rrf_k or 0), norm=str(st.norm),
                   flt=compile_where(where))


class RequestCache:
    """Recent requests without a ``where`` filter, for one (defaults, tuning): resolved once, then looked up."""

    SIZE = 64

    def __init__(self) -> None:
        # (defaults, tuning, requests): replaced whole, so a reader sees one consistent triple.
        self._state: tuple[Any, Any, dict[tuple, Request]] = (None, None, {})
        self._lock = threading.Lock()

    def get_or_make(self, args: tuple | None, defaults: FusionSettings, tuning: AnnTuning | None,
                    make: Callable[[], Request]) -> Request:
        """The request of the search arguments ``args`` (None: not to be kept, e.g. with a filter), made once."""
        if args is None:
            return make()
        try:
            # Typed: True == 1 == 1.0 as keys, but only 1 is a valid k (weights: a tuple of (type, value)).
            key = tuple((type(v), tuple((type(x), x) for x in v) if isinstance(v, (list, tuple)) else v)
                        for v in args) if any(isinstance(v, (list, tuple)) for v in args) else (
                args, tuple(map(type, args)))
            found = self.get(key, defaults, tuning)
        except TypeError:  # an unhashable argument: resolving it says what is wrong
            return make()
        if found is None:
            found = make()
            self.put(key, defaults, tuning, found)
        return found

    def get(self, key: tuple, defaults: FusionSettings, tuning: AnnTuning | None) -> Request | None:
        owner_defaults, owner_tuning, seen = self._state
        if owner_defaults is not defaults or owner_tuning is not tuning:
            return None
        return seen.get(key)

    def put(self, key: tuple, defaults: FusionSettings, tuning: AnnTuning | None, req: Request) -> None:
        with self._lock:
            owner_defaults, owner_tuning, seen = self._state
            if owner_defaults is not defaults or owner_tuning is not tuning or len(seen) >= self.SIZE:
                seen = {}
            seen = {**seen, key: req}
            self._state = (defaults, tuning, seen)
