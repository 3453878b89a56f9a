"""The recorded result of an ANN recall measurement (``indexer.ann_tune``), as the manifest keeps it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["AnnTuning"]


@dataclass(frozen=True)
class AnnTuning:
    """What was measured and chosen; stored in the manifest's ``ann`` section as ``tuning``."""

    nprobe: int
    candidate_factor: int  # rerank pool = k × candidate_factor
    k: int
    recall: float  # mean recall@k of ANN + exact rerank vs exact search, at the chosen values
    p50_ms: float
    p95_ms: float
    target: float
    met: bool
    queries: int
    vectors: int  # index size when measured
    nlist: int
    perturb: float
    seconds: float
    note: str = ""
    frontier: list[dict[str, float]] = field(default_factory=list)
    # One-sided 95% lower confidence bound of ``recall`` (what had to meet the target); None: measured
    # before the bound was recorded.
    recall_low: float | None = None

    @property
    def candidates(self) -> int:
        return self.k * self.candidate_factor

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "AnnTuning | None":
        if not data:
            return None
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in fields})
