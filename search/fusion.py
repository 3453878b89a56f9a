"""Combining the dense and lexical legs.

- ``rrf``: reciprocal-rank fusion, score = Σ w / (c + rank); robust to the
  legs' different score scales.
- ``weighted``: each leg's scores min-max normalised to [0, 1] over its own
  candidates, then combined with weights.
"""
from __future__ import annotations

__all__ = ["rrf", "weighted", "RRF_C"]

RRF_C = 60


def rrf(legs: list[list[tuple[int, float]]], weights: list[float] | None = None, c: int = RRF_C) -> list[tuple[int, float]]:
    weights = weights or [1.0] * len(legs)
    scores: dict[int, float] = {}
    for leg, w in zip(legs, weights):
        for rank, (cid, _s) in enumerate(leg, 1):
            scores[cid] = scores.get(cid, 0.0) + w / (c + rank)
    return sorted(scores.items(), key=lambda x: (-x[1], x[0]))


def weighted(legs: list[list[tuple[int, float]]], weights: list[float] | None = None) -> list[tuple[int, float]]:
    weights = weights or [1.0] * len(legs)
    scores: dict[int, float] = {}
    for leg, w in zip(legs, weights):
        if not leg:
            continue
        vals = [s for _, s in leg]
        lo, hi = min(vals), max(vals)
        span = hi - lo
        for cid, s in leg:
            norm = (s - lo) / span if span > 0 else 1.0
            scores[cid] = scores.get(cid, 0.0) + w * norm
    return sorted(scores.items(), key=lambda x: (-x[1], x[0]))
