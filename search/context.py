"""Context assembly for RAG: search hits grown into passages that fit an LLM's budget, with citations.

Each hit may be widened with up to ``neighbors`` adjacent chunks of its own
document on either side (read from the store by ``chunk_index``). Overlapping
chunks are merged, text already given by a better-ranked passage is left
out, and the total is cut to ``max_chars``. Offsets stay exact: every
``Span`` satisfies ``span.text == document[span.char_start:span.char_end]``.

The index stores chunks, not whole documents, so the whitespace between two
chunks that do not touch is unknown; such a passage keeps them as separate
spans joined by ``SPAN_SEPARATOR``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mitsuke.indexer.errors import QueryError
from mitsuke.indexer.pages import pages_of
from mitsuke.indexer.store import ChunkPiece, SqlStore
from mitsuke.search.results import Passage

__all__ = [
    "Span",
    "Citation",
    "ContextPassage",
    "Context",
    "ChunkPiece",
    "Retriever",
    "SPAN_SEPARATOR",
    "MIN_CUT_CHARS",
    "assemble",
    "retrieve_context",
    "retrieve_passages",
]

log = logging.getLogger("mitsuke")

# Joins spans of one passage that are not contiguous in the document.
SPAN_SEPARATOR = "\n"
# A hit that does not fit the remaining budget is cut only if at least this
# much of it fits; a shorter stub is noise to an LLM, so a shorter later hit gets the room.
MIN_CUT_CHARS = 32
# Where a cut passage should preferably end: after a sentence or a line.
_SENTENCE_ENDS = set("。．！？!?\n")
_CLOSERS = set("」』）)】〕］]｝}〉》”’\"'")


@dataclass(frozen=True)
class Span:
    """A contiguous piece of a document: ``text == document[char_start:char_end]``."""

    char_start: int
    char_end: int
    text: str


@dataclass(frozen=True)
class Citation:
    """Where a passage comes from, precisely enough to quote or link it."""

    doc_key: str
    title: str
    char_start: int
    char_end: int
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    headings: tuple[str, ...] = ()
    chunk_ids: tuple[int, ...] = ()
    pages: tuple[int, int] | None = None  # 1-based first and last page, for paged documents (PDF)

    def to_dict(self) -> dict[str, Any]:
        return {"doc_key": self.doc_key, "title": self.title, "char_start": self.char_start,
                "char_end": self.char_end, "source": self.source, "metadata": dict(self.metadata),
                "headings": list(self.headings), "chunk_ids": list(self.chunk_ids),
                "pages": list(self.pages) if self.pages else None}

    @property
    def page_label(self) -> str:
        """``p.3`` or ``pp.3–4``; empty for an unpaged document."""
        if not self.pages:
            return ""
        first, last = self.pages
        return f"p.{first}" if first == last else f"pp.{first}–{last}"

    def __str__(self) -> str:
        where = f"{self.doc_key} {self.char_start}–{self.char_end}"
        if self.pages:
            where += f", {self.page_label}"
        return f"{self.title or self.doc_key} ({where})"


@dataclass(frozen=True)
class ContextPassage:
    """One passage of an assembled context.

    ``text == SPAN_SEPARATOR.join(s.text for s in spans)``; ``rank`` is the
    rank of the search hit it grew from (hits whose text was already given
    are skipped, so ranks may have gaps); ``truncated`` says the hit itself
    was cut to fit the budget.
    """

    rank: int
    score: float
    text: str
    spans: tuple[Span, ...]
    citation: Citation
    hit: Passage
    truncated: bool = False

    @property
    def doc_key(self) -> str:
        return self.citation.doc_key

    @property
    def char_start(self) -> int:
        return self.citation.char_start

    @property
    def char_end(self) -> int:
        return self.citation.char_end

    @classmethod
    def from_hit(cls, hit: Passage, rank: int) -> "ContextPassage":
        """A search hit as it is: one span, no neighbours, nothing cut."""
        return cls(rank=rank, score=hit.score, text=hit.text, spans=(Span(hit.char_start, hit.char_end, hit.text),),
                   citation=_citation(hit, hit.char_start, hit.char_end, (hit.chunk_id,)), hit=hit)

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": self.score, "text": self.text, "truncated": self.truncated,
                "spans": [{"char_start": s.char_start, "char_end": s.char_end} for s in self.spans],
                "citation": self.citation.to_dict(), "chunk_id": self.hit.chunk_id}

    def to_metadata(self) -> dict[str, Any]:
        """Flat metadata for a framework's document: the citation fields, score, ranks, chunk id."""
        return {**self.citation.to_dict(), "score": self.score, "rank": self.rank, "chunk_id": self.hit.chunk_id,
                "dense_score": self.hit.dense_score, "lexical_score": self.hit.lexical_score,
                "truncated": self.truncated}


@dataclass(frozen=True)
class Context(Sequence):
    """The passages for one query, best first; a sequence of ``ContextPassage``.

    >>> ctx = Searcher.open("idx").retrieve_context("豊岡市の冬は?", k=5, max_chars=2000)  # doctest: +SKIP
    >>> prompt = ctx.render()                                                          # doctest: +SKIP
    """

    query: str
    passages: tuple[ContextPassage, ...]
    max_chars: int | None = None

    def __len__(self) -> int:
        return len(self.passages)

    def __getitem__(self, i):
        return self.passages[i]

    def __iter__(self) -> Iterator[ContextPassage]:
        return iter(self.passages)

    @property
    def n_chars(self) -> int:
        """Characters of passage text; never more than ``max_chars``."""
        return sum(len(p.text) for p in self.passages)

    @property
    def citations(self) -> list[Citation]:
        return [p.citation for p in self.passages]

    def render(self, header: str = "[{n}] {citation}") -> str:
        """Numbered passages for a prompt; ``header`` may use ``{n}``, ``{citation}`` and Citation fields.

        Headers are added on top of ``max_chars``, which bounds the passage text only.
        """
        parts = []
        for n, p in enumerate(self.passages, 1):
            c = p.citation
            head = header.format(n=n, citation=c, doc_key=c.doc_key, title=c.title, char_start=c.char_start,
                                 char_end=c.char_end, source=c.source, score=p.score, pages=c.page_label)
            parts.append(f"{head}\n{p.text}")
        return "\n\n".join(parts)


class Retriever(Protocol):
    """What context assembly reads from: a search and the store behind it (a ``Searcher``)."""

    store: SqlStore

    @property
    def search(self) -> Callable[..., list[Passage]]:
        """``search(query, k, *, mode=..., where=..., ...)``: keyword options as ``Searcher.search`` takes them."""


# ---------------------------------------------------------------------- intervals
def _normalize(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint, non-empty; touching intervals merge (their text is contiguous)."""
    out: list[tuple[int, int]] = []
    for s, e in sorted(i for i in intervals if i[1] > i[0]):
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def _subtract(intervals: list[tuple[int, int]], used: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in _normalize(intervals):
        for us, ue in used:
            if ue <= s or us >= e:
                continue
            if us > s:
                out.append((s, us))
            s = max(s, ue)
            if s >= e:
                break
        if s < e:
            out.append((s, e))
    return out


def _cost(intervals: list[tuple[int, int]]) -> int:
    if not intervals:
        return 0
    return sum(e - s for s, e in intervals) + len(SPAN_SEPARATOR) * (len(intervals) - 1)


def _compose(pieces: Sequence[ChunkPiece], start: int, end: int) -> str:
    """``document[start:end]`` rebuilt from chunks that cover it."""
    parts: list[str] = []
    pos = start
    for p in sorted(pieces, key=lambda p: (p.char_start, -p.char_end)):
        if pos >= end:
            break
        if p.char_start <= pos < p.char_end:
            stop = min(p.char_end, end)
            parts.append(p.text[pos - p.char_start:stop - p.char_start])
            pos = stop
    if pos < end:  # cannot happen for intervals built from these pieces
        raise AssertionError(f"chunks do not cover {start}:{end} (stopped at {pos})")
    return "".join(parts)


def _cut(text: str, limit: int) -> int:
    """How much of ``text`` to keep within ``limit`` chars: after a sentence end when one is near the limit."""
    if len(text) <= limit:
        return len(text)
    best = -1
    for i in range(limit - 1, limit // 2 - 1, -1):
        if text[i] in _SENTENCE_ENDS:
            best = i + 1
            break
    if best < 0:
        return limit
    while best < limit and text[best] in _CLOSERS:  # keep 。」 together
        best += 1
    return best


# ---------------------------------------------------------------------- assembly
def _citation(hit: Passage, start: int, end: int, chunk_ids: tuple[int, ...],
              page_starts: Mapping[str, Sequence[int]] | None = None) -> Citation:
    starts = (page_starts or {}).get(hit.doc_key)
    pages = pages_of(starts, start, end) if starts else hit.pages
    return Citation(doc_key=hit.doc_key, title=hit.title, char_start=start, char_end=end, source=hit.source,
                    metadata=dict(hit.metadata), headings=tuple(hit.headings), chunk_ids=chunk_ids, pages=pages)


def assemble(hits: Sequence[Passage], around: Mapping[int, Sequence[ChunkPiece]] | None = None, *,
             max_chars: int | None = None, query: str = "",
             page_starts: Mapping[str, Sequence[int]] | None = None) -> Context:
    """Build a ``Context`` from ranked ``hits``.

    ``around[hit.chunk_id]``: the chunks the hit may grow into (its
    neighbours; see ``SqlStore.neighbours``). Neighbours are added nearest
    first while they fit the budget; a hit whose own text is already in the
    context is skipped; a hit too long for what is left is cut at a sentence
    end if at least ``MIN_CUT_CHARS`` of it fit, else skipped. ``page_starts[doc_key]``
    (paged documents) gives each citation the pages of its whole span.
    """
    if max_chars is not None and max_chars < 1:
        raise QueryError(f"max_chars must be at least 1 (or None for no limit), got {max_chars}")
    used: dict[str, list[tuple[int, int]]] = {}
    total = 0
    out: list[ContextPassage] = []
    for rank, hit in enumerate(hits, 1):
        remaining = None if max_chars is None else max_chars - total
        if remaining is not None and remaining <= 0:
            break
        own = ChunkPiece(hit.chunk_id, hit.chunk_index, hit.char_start, hit.char_end, hit.text)
        pieces = [p for p in (around or {}).get(hit.chunk_id, ()) if p.chunk_id != hit.chunk_id]
        pieces.append(own)
        done = used.get(hit.doc_key, [])
        selected = _subtract([(hit.char_start, hit.char_end)], done)
        if not selected:
            continue  # a better-ranked passage already holds this text
        contributors = [hit.chunk_id]
        truncated = False
        if remaining is not None and _cost(selected) > remaining:
            if remaining < MIN_CUT_CHARS:
                continue
            selected = _truncate(pieces, selected, remaining)
            truncated = True
        else:
            selected, contributors = _grow(hit, pieces, selected, done, remaining)
        spans = tuple(Span(s, e, _compose(pieces, s, e)) for s, e in selected)
        text = SPAN_SEPARATOR.join(s.text for s in spans)
        total += len(text)
        used[hit.doc_key] = _normalize(done + selected)
        citation = _citation(hit, spans[0].char_start, spans[-1].char_end, tuple(sorted(contributors)), page_starts)
        out.append(ContextPassage(rank=rank, score=hit.score, text=text, spans=spans, citation=citation, hit=hit,
                                  truncated=truncated))
    return Context(query=query, passages=tuple(out), max_chars=max_chars)


def _grow(hit: Passage, pieces: list[ChunkPiece], selected: list[tuple[int, int]], done: list[tuple[int, int]],
          remaining: int | None) -> tuple[list[tuple[int, int]], list[int]]:
    """Add neighbours nearest first, before and after alternately, until one side no longer fits."""
    before = sorted((p for p in pieces if p.chunk_index < hit.chunk_index), key=lambda p: -p.chunk_index)
    after = sorted((p for p in pieces if p.chunk_index > hit.chunk_index), key=lambda p: p.chunk_index)
    order = sorted([(hit.chunk_index - p.chunk_index, 0, p) for p in before]
                   + [(p.chunk_index - hit.chunk_index, 1, p) for p in after], key=lambda t: (t[0], t[1]))
    blocked = [False, False]
    contributors = [hit.chunk_id]
    for _dist, side, p in order:
        if blocked[side]:
            continue
        new = _subtract([(p.char_start, p.char_end)], done)
        if not new:
            continue
        grown = _normalize(selected + new)
        if remaining is not None and _cost(grown) > remaining:
            blocked[side] = True  # the next one on this side would not be adjacent
            continue
        selected = grown
        contributors.append(p.chunk_id)
    return selected, contributors


def _truncate(pieces: list[ChunkPiece], selected: list[tuple[int, int]], budget: int) -> list[tuple[int, int]]:
    """The first ``budget`` characters (separators counted) of ``selected``, ending at a sentence when possible."""
    out: list[tuple[int, int]] = []
    left = budget
    for s, e in selected:
        if out:
            left -= len(SPAN_SEPARATOR)
        if left <= 0:
            break
        if e - s <= left:
            out.append((s, e))
            left -= e - s
            continue
        keep = _cut(_compose(pieces, s, e), left)
        if keep > 0:
            out.append((s, s + keep))
        break
    return out


def retrieve_context(searcher: Retriever, query: str, *, k: int = 5, max_chars: int | None = None,
                     neighbors: int = 0, mode: str | None = None, **search_kwargs: Any) -> Context:
    """``searcher.search(query, k, mode=mode, **search_kwargs)`` assembled into a ``Context``.

    See ``Searcher.retrieve_context``. With ``neighbors=0`` and no
    ``max_chars`` the framework retrievers skip assembly and return the hits
    exactly as ``search`` ranks them (see ``retrieve_passages``).
    """
    if neighbors < 0:
        raise QueryError(f"neighbors must be 0 or more, got {neighbors}")
    if max_chars is not None and max_chars < 1:
        raise QueryError(f"max_chars must be at least 1 (or None for no limit), got {max_chars}")
    hits = searcher.search(query, k, mode=mode, **search_kwargs)
    around = None
    page_starts = None
    paged = [h.chunk_id for h in hits if h.pages]
    if neighbors and hits or paged:
        with searcher.store.snapshot() as snap:
            if neighbors:
                around = snap.neighbours([h.chunk_id for h in hits], neighbors)
            if paged:
                page_starts = snap.page_starts_of_chunks(paged)
    ctx = assemble(hits, around, max_chars=max_chars, query=query, page_starts=page_starts)
    log.debug("context for %r: %d hits -> %d passages, %d chars", query, len(hits), len(ctx), ctx.n_chars)
    return ctx


def retrieve_passages(searcher: Retriever, query: str, *, k: int = 5, max_chars: int | None = None,
                      neighbors: int = 0, mode: str | None = None, **search_kwargs: Any) -> list[ContextPassage]:
    """What the framework retrievers return: the hits of ``search`` as they are, or an assembled context.

    Plain ``search`` order when neither ``neighbors`` nor ``max_chars`` is
    asked for (even overlapping hits are kept, as ``search`` returns them);
    ``retrieve_context`` otherwise.
    """
    if neighbors or max_chars is not None:
        return list(retrieve_context(searcher, query, k=k, max_chars=max_chars, neighbors=neighbors, mode=mode,
                                     **search_kwargs))
    hits = searcher.search(query, k, mode=mode, **search_kwargs)
    return [ContextPassage.from_hit(h, rank) for rank, h in enumerate(hits, 1)]
