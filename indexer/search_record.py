"""The search defaults an index keeps (``mitsuke tune --save``), as the manifest records them.

The manifest's ``search_defaults`` entry holds the hybrid settings a reader
uses when the caller gives none: ``fusion`` (``convex``, ``rrf``,
``weighted``), ``weights`` (dense, lexical), ``rrf_k``, ``norm`` (``tmm``,
``minmax``), ``candidates`` (depth of each leg), ``rerank``, and ``tuned``:
where they came from (queries file, questions, folds, date, cross-validated
objective). Every field may be absent; an index without the entry uses
mitsuke's defaults (``mitsuke.search.fusion.DEFAULT_SETTINGS``). This module
checks only the types; the search side checks the values
(``search.fusion.FusionSettings.from_dict``).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SearchDefaults"]

_KEYS = ("fusion", "weights", "rrf_k", "norm", "candidates", "rerank")


@dataclass(frozen=True)
class SearchDefaults:
    """The saved hybrid settings of an index; None fields fall back to mitsuke's defaults."""

    fusion: str | None = None
    weights: tuple[float, float] | None = None
    rrf_k: int | None = None
    norm: str | None = None
    candidates: int | None = None
    rerank: bool | None = None
    tuned: Mapping[str, Any] = field(default_factory=dict)  # provenance of ``mitsuke tune --save``

    def settings(self) -> dict[str, Any]:
        """The settings alone (no provenance), None fields left out."""
        out = {k: getattr(self, k) for k in _KEYS if getattr(self, k) is not None}
        if "weights" in out:
            out["weights"] = list(out["weights"])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**self.settings(), **({"tuned": dict(self.tuned)} if self.tuned else {})}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchDefaults:
        """From the manifest's JSON; a TypeError/ValueError for a value of the wrong type."""
        if not isinstance(data, Mapping):
            raise TypeError(f"expected an object, got {type(data).__name__}")
        weights = data.get("weights")
        if weights is not None:
            if isinstance(weights, (str, bytes)) or len(weights) != 2:
                raise ValueError(f"weights must be two numbers, got {weights!r}")
            weights = (float(weights[0]), float(weights[1]))
        rerank = data.get("rerank")
        if rerank is not None and not isinstance(rerank, bool):
            raise TypeError(f"rerank must be true or false, got {rerank!r}")
        tuned = data.get("tuned") or {}
        if not isinstance(tuned, Mapping):
            raise TypeError(f"tuned must be an object, got {tuned!r}")
        return cls(fusion=_opt(str, data.get("fusion")), weights=weights, rrf_k=_opt_int(data.get("rrf_k")),
                   norm=_opt(str, data.get("norm")), candidates=_opt_int(data.get("candidates")), rerank=rerank,
                   tuned=dict(tuned))


def _opt(kind: type, value: Any) -> Any:
    return None if value is None else kind(value)


def _opt_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"expected an integer, got {value!r}")
    return int(value)
