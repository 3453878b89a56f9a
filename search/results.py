"""The result type users get back."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Passage"]


@dataclass(frozen=True)
class Passage:
    """One ranked passage. ``text == document_text[char_start:char_end]``.

    ``score`` is what the passage was ranked by: the cosine (dense mode), the
    BM25 score (lexical mode, higher is better) or the fused score (hybrid).
    ``dense_score`` / ``lexical_score`` are each leg's own score and
    ``dense_rank`` / ``lexical_rank`` (1-based) its rank in that leg's
    candidates; ``None`` where the leg did not return the passage (in hybrid
    mode ``dense_score`` is filled in for lexical-only passages too).
    ``pages``: the 1-based first and last page the passage lies on, for paged
    documents (PDF); ``None`` otherwise.
    ``lexical_match`` says what the lexical leg found the passage by:
    ``"terms"`` (MeCab terms), ``"trigram"`` (the query, or a
    whitespace-separated piece of it, as a substring) or ``"both"``.
    """

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
    pages: tuple[int, int] | None = None
    lexical_match: str | None = None

    def __hash__(self) -> int:
        # The generated hash would fail on the metadata dict; a passage's identity is its chunk and score.
        return hash((self.chunk_id, self.score))

    @property
    def ranks(self) -> dict[str, int]:
        """Ranks in the legs that returned this passage, e.g. ``{"dense": 3, "lexical": 1}``."""
        out = {}
        if self.dense_rank is not None:
            out["dense"] = self.dense_rank
        if self.lexical_rank is not None:
            out["lexical"] = self.lexical_rank
        return out

    def to_dict(self, rank: int | None = None) -> dict[str, Any]:
        d = asdict(self)
        d["headings"] = list(self.headings)
        d["pages"] = list(self.pages) if self.pages else None
        if rank is not None:
            d = {"rank": rank, **d}
        return d
