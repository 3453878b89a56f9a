"""Cut a document into passages of whole sentences inside a token budget.

Offsets are into the original document text: ``text[c.char_start:c.char_end] == c.text``.
The budget is counted by ``count_tokens`` (the embedding model's tokenizer,
without special tokens) or in characters when there is no model.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from indexer.config import ChunkConfig
from indexer.japanese import morpheme_spans, sentence_spans

__all__ = ["Chunk", "Chunker", "markdown_sections"]

CountFn = Callable[[Sequence[str]], list[int]]

_HEADING_RE = re.compile(r"^[ \t]{0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
# Where a long sentence is best split: after these marks (clause ends, commas).
_SOFT_BREAKS = set("、，,；;：:）)」』】〕 \u3000")


@dataclass(frozen=True)
class Chunk:
    index: int
    char_start: int
    char_end: int
    text: str
    token_count: int
    headings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "chunk_index": self.index,
            "char_start": self.char_start,
            "char_end": self.char_end,
            "token_count": self.token_count,
            "headings": list(self.headings),
            "text": self.text,
        }


def markdown_sections(text: str) -> list[tuple[int, int, tuple[str, ...]]]:
    """(start, end, heading path) for each section; a heading line opens its section."""
    sections: list[tuple[int, int, tuple[str, ...]]] = []
    path: list[tuple[int, str]] = []
    start = 0
    current: tuple[str, ...] = ()
    for m in _HEADING_RE.finditer(text):
        if m.start() > start:
            sections.append((start, m.start(), current))
        level = len(m.group(1))
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, m.group(2).strip()))
        current = tuple(h for _, h in path)
        start = m.start()
    sections.append((start, len(text), current))
    return [s for s in sections if text[s[0]:s[1]].strip()]


def _char_count(texts: Sequence[str]) -> list[int]:
    return [len(t) for t in texts]


class Chunker:
    """Packs sentences into chunks.

    >>> Chunker(ChunkConfig(max_chars=20)).chunk("今日は晴れ。明日は雨でしょう。明後日は曇り。")[0].text
    '今日は晴れ。明日は雨でしょう。'
    """

    def __init__(self, config: ChunkConfig | None = None, count_tokens: CountFn | None = None) -> None:
        self.config = config or ChunkConfig()
        self.count = count_tokens or _char_count
        self.budget = self.config.max_tokens if count_tokens else self.config.max_chars
        self.overlap = self.config.overlap

    # ------------------------------------------------------------------ public
    def chunk(self, text: str, markdown: bool = False) -> list[Chunk]:
        sections = markdown_sections(text) if markdown else [(0, len(text), ())]
        chunks: list[Chunk] = []
        for start, end, headings in sections:
            units = self._units(text, start, end)
            for s, e, n in self._pack(text, units):
                chunks.append(Chunk(len(chunks), s, e, text[s:e], n, headings))
        return chunks

    # ------------------------------------------------------------------ units
    def _units(self, text: str, start: int, end: int) -> list[tuple[int, int, int]]:
        """Sentences (split further where one exceeds the budget) with token counts."""
        spans = sentence_spans(text, start, end)
        counts = self.count([text[s:e] for s, e in spans]) if spans else []
        units: list[tuple[int, int, int]] = []
        for (s, e), n in zip(spans, counts):
            if n <= self.budget:
                units.append((s, e, n))
            else:
                units.extend(self._split_long(text, s, e, n))
        return units

    def _split_long(self, text: str, start: int, end: int, n_tokens: int) -> list[tuple[int, int, int]]:
        """Split one over-budget sentence at morpheme boundaries, preferring 、 and clause ends."""
        morphs = [(start + s, start + e) for s, e in morpheme_spans(text[start:end])]
        if not morphs:
            return [(start, end, n_tokens)]
        # Estimate a character target from the sentence's own tokens-per-char,
        # then verify each piece with the real counter and shrink when needed.
        target = max(1, int(self.budget * (end - start) / max(n_tokens, 1) * 0.95))
        pieces: list[tuple[int, int, int]] = []
        i = 0
        while i < len(morphs):
            j = i
            best_soft = -1
            while j < len(morphs) and morphs[j][1] - morphs[i][0] <= target:
                if text[morphs[j][1] - 1] in _SOFT_BREAKS:
                    best_soft = j
                j += 1
            if j == i:
                j = i + 1  # one morpheme alone is over budget: it becomes its own piece
            elif j < len(morphs) and best_soft >= i + (j - i) // 2:
                j = best_soft + 1
            while True:
                s, e = morphs[i][0], morphs[j - 1][1]
                n = self.count([text[s:e]])[0]
                if n <= self.budget or j == i + 1:
                    break
                j = max(i + 1, i + (j - i) * 3 // 4)
            pieces.append((s, e, n))
            i = j
        return pieces

    # ------------------------------------------------------------------ packing
    def _pack(self, text: str, units: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        out: list[tuple[int, int, int]] = []
        i = 0
        while i < len(units):
            total = units[i][2]
            j = i + 1
            while j < len(units) and total + units[j][2] <= self.budget:
                total += units[j][2]
                j += 1
            s, e = units[i][0], units[j - 1][1]
            n = self.count([text[s:e]])[0]
            # Whitespace between sentences or merges at their seams can push the
            # real count over: give back sentences until it fits.
            while n > self.budget and j - i > 1:
                j -= 1
                e = units[j - 1][1]
                n = self.count([text[s:e]])[0]
            out.append((s, e, n))
            if j >= len(units):
                break
            # Overlap: start the next chunk with trailing whole sentences of this one.
            back = j
            carried = 0
            while self.overlap and back - 1 > i and carried + units[back - 1][2] <= self.overlap:
                back -= 1
                carried += units[back][2]
            i = back if back > i else j
        return out
