"""Combining the dense and lexical legs of a hybrid search.

Each leg is a list of ``(chunk id, score)``, best first. Three ways to combine
them; ``weights`` are always ``(dense, lexical)``:

- ``convex`` (default): a convex combination of per-leg normalised scores,
  ``α·φ(dense) + (1−α)·φ(lexical)`` with ``α = w_dense / (w_dense + w_lexical)``
  (Bruch et al., "An Analysis of Fusion Functions for Hybrid Retrieval", 2023).
  ``norm="tmm"`` (theoretical-min-max, default) maps each leg to
  ``(s − lo) / (max − lo)`` with the leg's *theoretical* minimum ``lo``
  (−1 for cosine, 0 for BM25): a weak leg whose scores are all alike stays
  flat instead of being stretched over [0, 1]. ``norm="minmax"`` uses the
  observed minimum of the candidates instead. A passage missing from a leg
  gets 0 from it (BM25 has a natural zero; dense cosines are computed for
  every candidate by the Searcher).
- ``rrf``: reciprocal-rank fusion, ``Σ_leg w_leg / (rrf_k + rank_leg)``
  (``rrf_k = 60``, Cormack et al. 2009). Ranks only: blind to how sure a leg is,
  and with ``rrf_k = 60`` neighbouring ranks differ by ~1/3,600, so even a
  small weight on a weak leg reorders the strong one (FACTS.md).
- ``weighted``: the weighted sum of a min-max normalised dense leg and a
  max-normalised BM25 leg (mitsuke's earlier score fusion, kept as is).

The defaults (``DEFAULT_SETTINGS``) were chosen by measurement on the
development sets with a real encoder and a useless one (bench/fusion_defaults.py,
BENCHMARKS.md "Hybrid fusion"). Ties break by chunk id.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from mitsuke.indexer.errors import QueryError

__all__ = ["rrf", "weighted", "convex", "fuse", "check_weights", "check_settings", "FusionSettings",
           "DEFAULT_SETTINGS", "METHOD_WEIGHTS", "resolve", "RRF_C", "FUSIONS", "NORMS"]

RRF_C = 60
FUSIONS = ("convex", "rrf", "weighted")
NORMS = ("tmm", "minmax")
# Theoretical lowest score of each leg: cosine of unit vectors, BM25.
LEG_MIN = (-1.0, 0.0)

Leg = Sequence[tuple[int, float]]


def check_weights(weights: Sequence[float] | None, n_legs: int = 2) -> list[float]:
    """Weights as floats, or a QueryError naming the bad value."""
    if weights is None:
        return [1.0] * n_legs
    try:
        w = [float(x) for x in weights]
    except (TypeError, ValueError):
        raise QueryError(f"weights must be {n_legs} numbers (dense, lexical), got {weights!r}") from None
    if len(w) != n_legs or any(not (x >= 0) or x == float("inf") for x in w):
        raise QueryError(f"weights must be {n_legs} finite numbers >= 0 (dense, lexical), got {weights!r}")
    if not any(w):
        raise QueryError(f"weights {weights!r} are all zero: at least one leg must count")
    return w


def _sorted(scores: dict[int, float]) -> list[tuple[int, float]]:
    return sorted(scores.items(), key=lambda x: (-x[1], x[0]))


def rrf(legs: Sequence[Leg], weights: Sequence[float] | None = None, c: int = RRF_C) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion of ``legs``; a passage absent from a leg gets nothing from it.

    >>> rrf([[(1, 0.9), (2, 0.8)], [(2, 7.0), (3, 5.0)]])[0][0]
    2
    """
    w = check_weights(weights, len(legs))
    scores: dict[int, float] = {}
    for leg, wl in zip(legs, w):
        for rank, (cid, _s) in enumerate(leg, 1):
            scores[cid] = scores.get(cid, 0.0) + wl / (c + rank)
    return _sorted(scores)


def weighted(legs: Sequence[Leg], weights: Sequence[float] | None = None,
             kinds: Sequence[str] = ("minmax", "max")) -> list[tuple[int, float]]:
    """Weighted sum of per-leg normalised scores (``minmax`` or ``max`` normalisation per leg).

    >>> weighted([[(1, 0.9), (2, 0.5)], [(2, 10.0), (3, 5.0)]], [1.0, 1.0])
    [(1, 1.0), (2, 1.0), (3, 0.5)]
    """
    w = check_weights(weights, len(legs))
    scores: dict[int, float] = {}
    for leg, wl, kind in zip(legs, w, list(kinds) + ["minmax"] * (len(legs) - len(kinds))):
        if not leg:
            continue
        vals = [s for _, s in leg]
        hi = max(vals)
        lo = min(vals) if kind == "minmax" else 0.0
        span = hi - lo
        for cid, s in leg:
            norm = (s - lo) / span if span > 0 else 1.0
            scores[cid] = scores.get(cid, 0.0) + wl * norm
    return _sorted(scores)


def normalise(leg: Leg, norm: str, theoretical_min: float) -> dict[int, float]:
    """``chunk id -> score in [0, 1]`` (``tmm``: against ``theoretical_min``; ``minmax``: the observed min)."""
    if not leg:
        return {}
    vals = [s for _, s in leg]
    hi = max(vals)
    lo = min(vals) if norm == "minmax" else min(theoretical_min, min(vals))
    span = hi - lo
    return {cid: ((s - lo) / span if span > 0 else 1.0) for cid, s in leg}


def convex(legs: Sequence[Leg], weights: Sequence[float] | None = None, norm: str = "tmm",
           lows: Sequence[float] = LEG_MIN) -> list[tuple[int, float]]:
    """Convex combination of normalised leg scores: weights are scaled to sum 1, scores lie in [0, 1].

    >>> convex([[(1, 0.5), (2, 0.0)], [(2, 10.0), (3, 5.0)]], [1, 1])
    [(2, 0.8333333333333333), (1, 0.5), (3, 0.25)]
    """
    w = check_weights(weights, len(legs))
    if norm not in NORMS:
        raise QueryError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    total = sum(w)
    scores: dict[int, float] = {}
    for leg, wl, lo in zip(legs, w, list(lows) + [0.0] * (len(legs) - len(lows))):
        for cid, s in normalise(leg, norm, lo).items():
            scores[cid] = scores.get(cid, 0.0) + (wl / total) * s
        for cid, _ in leg:  # present in another leg only: 0 from this one
            scores.setdefault(cid, 0.0)
    return _sorted(scores)


@dataclass(frozen=True)
class FusionSettings:
    """How a hybrid search fuses its legs; ``None`` fields mean "the built-in default".

    ``candidates`` is the depth of each leg (passages each leg contributes;
    default ``k × 10``); ``rerank`` rescored the dense candidates exactly.
    """

    fusion: str | None = None
    weights: tuple[float, float] | None = None
    rrf_k: int | None = None
    norm: str | None = None
    candidates: int | None = None
    rerank: bool | None = None

    def over(self, base: "FusionSettings") -> "FusionSettings":
        """These settings, with ``base``'s wherever a field here is None."""
        return FusionSettings(**{f.name: getattr(self, f.name) if getattr(self, f.name) is not None
                                 else getattr(base, f.name) for f in fields(self)})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["weights"] is not None:
            d["weights"] = list(d["weights"])
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "search defaults") -> "FusionSettings":
        """Checked settings from a dict (a manifest's ``search_defaults``); unknown keys are ignored."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        s = cls(**{k: v for k, v in data.items() if k in known})
        try:
            return check_settings(s)
        except QueryError as exc:
            raise QueryError(f"{where}: {exc}") from None

    def describe(self) -> str:
        """One line for people: ``convex tmm 0.2:1, candidates 100``."""
        w = self.weights or (1.0, 1.0)
        how = {"convex": f"convex {self.norm or 'tmm'}", "rrf": f"rrf k={self.rrf_k or RRF_C}"}.get(
            self.fusion or "", self.fusion or "?")
        out = f"{how} {w[0]:g}:{w[1]:g}"
        if self.candidates:
            out += f", candidates {self.candidates}"
        if self.rerank is False:
            out += ", no rerank"
        return out


def check_settings(s: FusionSettings) -> FusionSettings:
    """``s`` with its fields checked (QueryError naming the bad one) and weights as a float pair."""
    if s.fusion is not None and s.fusion not in FUSIONS:
        raise QueryError(f"fusion must be one of {', '.join(FUSIONS)}, got {s.fusion!r}")
    if s.norm is not None and s.norm not in NORMS:
        raise QueryError(f"norm must be one of {', '.join(NORMS)}, got {s.norm!r}")
    for name in ("rrf_k", "candidates"):
        v = getattr(s, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "rrf_k" else 1)):
            raise QueryError(f"{name} must be a{' non-negative' if name == 'rrf_k' else ' positive'} integer, "
                             f"got {v!r}")
    if s.rerank is not None and not isinstance(s.rerank, bool):
        raise QueryError(f"rerank must be true or false, got {s.rerank!r}")
    if s.weights is not None:
        dense, lexical = check_weights(s.weights)  # two legs: a checked pair
        s = replace(s, weights=(dense, lexical))
    return s


# Chosen on the development sets (bench/fusion_defaults.py, BENCHMARKS.md "Hybrid fusion"): with
# USE multilingual as the dense leg, convex tmm α = 0.2 is within 0.001 of the better leg at
# hit@1/5/10 on all three sets (α = 0.3 scores 0.0003 more on average but dips 0.0025 below it);
# with the random tiny model it stays within 0.001 of BM25, where RRF 1:1 loses half the first hits.
DEFAULT_SETTINGS = FusionSettings(fusion="convex", weights=(0.2, 0.8), rrf_k=RRF_C, norm="tmm", candidates=None,
                                  rerank=True)


# A fusion named without weights gets its own default weights, never another method's.
METHOD_WEIGHTS = {"convex": DEFAULT_SETTINGS.weights, "rrf": (1.0, 1.0), "weighted": (1.0, 1.0)}


def resolve(given: FusionSettings, base: FusionSettings) -> FusionSettings:
    """``given`` over ``base``; naming another fusion than ``base``'s without weights takes that fusion's defaults."""
    if given.fusion is not None and given.fusion != base.fusion and given.weights is None:
        given = replace(given, weights=METHOD_WEIGHTS[given.fusion])
    return given.over(base)


def fuse(dense: Leg, lexical: Leg, how: str = "convex", weights: Sequence[float] | None = None, *,
         rrf_k: int = RRF_C, norm: str = "tmm") -> list[tuple[int, float]]:
    """Combine a dense and a lexical leg with ``how`` (``convex``, ``rrf`` or ``weighted``).

    For the score fusions, ``dense`` should hold the cosine of every lexical
    candidate too (the Searcher computes them), so no candidate lacks one.
    """
    if how == "convex":
        return convex([dense, lexical], weights, norm)
    if how == "rrf":
        return rrf([dense, lexical], weights, rrf_k)
    if how == "weighted":
        return weighted([dense, lexical], weights, ("minmax", "max"))
    raise QueryError(f"fusion must be one of {', '.join(FUSIONS)}, got {how!r}")
