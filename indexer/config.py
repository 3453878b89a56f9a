"""Frozen settings for chunking, embedding and the ANN index.

Defaults live here and only here, so a reader can find where a value is decided.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ChunkConfig", "EmbedConfig", "AnnConfig", "IndexConfig", "DEFAULT_MODEL"]

DEFAULT_MODEL = "sbintuitions/sarashina-embedding-v1-1b"


@dataclass(frozen=True)
class ChunkConfig:
    """How documents are cut into passages.

    ``max_tokens`` is counted in the embedding model's tokens, or in characters
    for a lexical-only index (``max_chars``). 400 characters and no overlap were
    chosen by measurement on the pooled JSQuAD + JaQuAD corpora (bench/chunk_defaults.py,
    BENCHMARKS.md "Text pipeline"): lexical span hit@5 0.909 / 0.927 / 0.946 / 0.960
    at 200 / 300 / 400 / 600 characters; a 25 % overlap adds 19 % more chunks at
    400 for +0.003. Bigger chunks mostly win by returning more text per hit.
    """

    max_tokens: int = 256
    max_chars: int = 400
    overlap: int = 0  # in the same unit as the budget; whole sentences are repeated
    title_context: bool = True  # prepend title / heading path to the embedding input

    def __post_init__(self) -> None:
        if self.max_tokens < 8 or self.max_chars < 8:
            raise ValueError(f"chunk budget must be at least 8, got tokens={self.max_tokens} chars={self.max_chars}")
        # The overlap is in the unit in use (tokens with a model, characters
        # without), which only the Chunker knows: it checks the upper bound.
        if self.overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {self.overlap}")


@dataclass(frozen=True)
class EmbedConfig:
    """Which model embeds passages, and how. ``model=None`` means lexical-only."""

    model: str | None = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    max_length: int | None = None
    batch_tokens: int = 16384
    trust_remote_code: bool = False


@dataclass(frozen=True)
class AnnConfig:
    """ANN kind: ``auto`` uses exact flat search below ``flat_threshold`` vectors.

    ``nlist`` fixes the number of IVF cells instead of deriving it from the
    count (indexer.ann.choose_nlist); small test corpora use it.
    ``recall_target``: the mean recall@10 (ANN + exact rerank vs exact search)
    that the measured nprobe / rerank pool must reach (indexer.ann_tune).
    """

    kind: str = "auto"
    # Below this many vectors exact search is used: it needs no training, and a
    # scan of 50k × 1792 floats (~0.35 GB) is still tens of milliseconds on a CPU,
    # while IVF-PQ training on so few points costs more than it would ever save.
    flat_threshold: int = 50_000
    nlist: int | None = None
    recall_target: float = 0.97
    nbits: int | None = None  # PQ code bits: 8, or 4 for fast-scan; None: indexer.ann.DEFAULT_NBITS

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "flat", "ivfpq"):
            raise ValueError(f"ann kind must be auto, flat or ivfpq, got {self.kind!r}")
        if self.nlist is not None and self.nlist < 1:
            raise ValueError(f"nlist must be at least 1, got {self.nlist}")
        if self.nbits not in (None, 4, 8):
            raise ValueError(f"PQ code bits must be 4 or 8, got {self.nbits}")
        if not 0 < self.recall_target <= 1:
            raise ValueError(f"recall target must be in (0, 1], got {self.recall_target}")


@dataclass(frozen=True)
class IndexConfig:
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    ann: AnnConfig = field(default_factory=AnnConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
