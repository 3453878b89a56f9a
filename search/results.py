"""The result type users get back."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Passage"]


@dataclass(frozen=True)
class Passage:
    """One ranked passage. ``text == document_text[char_start:char_end]``."""

    chunk_id: int
    doc_key: str
    title: str
    text: str
    score: float
    char_start: int
    char_end: int
    headings: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    chunk_index: int = 0
    source: str = ""
    dense_score: float | None = None
    lexical_score: float | None = None
    dense_rank: int | None = None
    lexical_rank: int | None = None

    def to_dict(self, rank: int | None = None) -> dict[str, Any]:
        d = asdict(self)
        d["headings"] = list(self.headings)
        if rank is not None:
            d = {"rank": rank, **d}
        return d
