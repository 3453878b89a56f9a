"""Cut a document into passages of whole sentences inside a token budget.

Offsets are into the original document text: ``text[c.char_start:c.char_end] == c.text``.
The budget is counted by ``count_tokens`` (the embedding model's tokenizer,
without special tokens) or in characters when there is no model.

How a document becomes chunks:

1. Markdown documents are cut into sections (``indexer.sections``) at ATX headings (``#`` … ``######``,
   not inside fenced code); each chunk carries its section's heading path. A
   heading with no text of its own before a sub-heading (``# 豊岡市`` then
   ``## 概要``) joins the section below it instead of becoming a tiny chunk.
2. Each section is cut into sentences (``japanese.sentence_spans``), which
   keep 「…。」 and （…） whole.
3. A sentence over the budget is split at MeCab morpheme boundaries of the
   whole text (``indexer.morph_source``),
   preferring sentence ends inside quotes, then 、 and clause ends; a bracketed
   span that fits the budget is never split. Only a single morpheme longer
   than the budget makes an over-budget chunk.
   With ``breaks`` (a paged document's page starts) sections are also cut at
   each break, so no chunk spans two pages and every passage cites its page.
4. Sentences (and pieces) are packed greedily up to the budget; with
   ``overlap`` the next chunk starts with trailing whole sentences of the
   previous one.

With a model, token counts are taken in two batched tokenizer calls per
document (sentences, then finished chunks); a chunk the estimate got wrong is
re-packed with exact counts, so the budget always holds.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mitsuke.indexer.config import ChunkConfig
from mitsuke.indexer.japanese import CLOSE_BRACKETS, OPEN_BRACKETS, sentence_spans
from mitsuke.indexer.morph_source import DocumentMorphemes, MorphemeList
from mitsuke.indexer.sections import cut_sections, markdown_sections

__all__ = ["Chunk", "Chunker", "markdown_sections"]

CountFn = Callable[[Sequence[str]], list[int]]

# Cut preferences after a morpheme (higher is better), used only inside an over-long sentence.
_PREF_SENTENCE = 4  # after 。！？ inside a quotation: a sentence end in all but name
_PREF_CLAUSE = 3  # after 、 ； ： a closing bracket, or before whitespace
_PREF_CONNECTIVE = 2  # after a connective particle (〜て 〜が 〜ので): a clause end with no comma
_PREF_PLAIN = 1
_PREF_NEVER = 0  # would start a piece with 、 」 or end one with 「
_SENTENCE_MARKS = frozenset("。．！？!?｡")
_CLAUSE_MARKS = frozenset("、，,；;：:､") | frozenset(CLOSE_BRACKETS)
# A piece should not start with these (they belong to what precedes them).
_NO_START = frozenset("、，,；;：:､。．！？!?｡…‥ー〜") | frozenset(CLOSE_BRACKETS)
_CONNECTIVES = frozenset({"て", "で", "が", "ので", "から", "けれど", "けれども", "けど", "し", "ながら", "ば",
                          "たり", "だり"})
_OPENERS = dict(zip(OPEN_BRACKETS, CLOSE_BRACKETS))


@dataclass(frozen=True)
class Chunk:
    """A passage: ``text == document[char_start:char_end]``, ``token_count`` in the budget's unit."""

    index: int
    char_start: int
    char_end: int
    text: str
    token_count: int
    headings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "chunk_index": self.index,
            "char_start": self.char_start,
            "char_end": self.char_end,
            "token_count": self.token_count,
            "headings": list(self.headings),
            "text": self.text,
        }


# --------------------------------------------------------------------------- chunker

def _cut_pref(surface: str, word: Any) -> int:
    """How good a place the end of this morpheme is to cut an over-long sentence."""
    last = surface[-1]
    if last in _SENTENCE_MARKS:
        return _PREF_SENTENCE
    if last in _CLAUSE_MARKS:
        return _PREF_CLAUSE
    if last in _OPENERS:
        return _PREF_NEVER
    # Only a handful of surfaces can be connective particles: read MeCab's
    # features (the slow part of fugashi) for those alone.
    if word is not None and surface in _CONNECTIVES and word.feature.pos2 == "接続助詞":
        return _PREF_CONNECTIVE
    return _PREF_PLAIN


def _char_count(texts: Sequence[str]) -> list[int]:
    return [len(t) for t in texts]


def _rstrip(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


class Chunker:
    """Packs sentences into chunks within a token (or character) budget.

    ``count_tokens`` maps a batch of strings to their token counts (the
    embedding model's tokenizer without special tokens); without it the
    budget is ``config.max_chars`` characters.

    >>> Chunker(ChunkConfig(max_chars=20)).chunk("今日は晴れ。明日は雨でしょう。明後日は曇り。")[0].text
    '今日は晴れ。明日は雨でしょう。'
    """

    def __init__(self, config: ChunkConfig | None = None, count_tokens: CountFn | None = None) -> None:
        self.config = config or ChunkConfig()
        self.exact_chars = count_tokens is None
        self.count: CountFn = count_tokens or _char_count
        self.budget = self.config.max_tokens if count_tokens else self.config.max_chars
        self.overlap = self.config.overlap
        if self.overlap >= self.budget:
            unit = "characters" if self.exact_chars else "tokens"
            raise ValueError(f"overlap ({self.overlap}) must be smaller than the chunk budget "
                             f"({self.budget} {unit})")

    # ------------------------------------------------------------------ public
    def chunk(self, text: str, markdown: bool = False, breaks: Sequence[int] = ()) -> list[Chunk]:
        """Chunks of ``text`` in document order, each with exact offsets and its heading path.

        ``breaks``: offsets no chunk may span (a PDF's page starts).
        """
        sections: list[tuple[int, int, tuple[str, ...]]] = markdown_sections(text) if markdown else [(0, len(text), ())]
        if breaks:
            sections = cut_sections(text, sections, breaks)
        spans_by_section = [sentence_spans(text, s, e) for s, e, _ in sections]
        if self.exact_chars:
            counts = [e - s for spans in spans_by_section for s, e in spans]
        else:
            # One tokenizer call for every sentence of the document.
            counts = self.count([text[s:e] for spans in spans_by_section for s, e in spans])
        chunks: list[tuple[int, int, int, tuple[str, ...]]] = []
        morphs: DocumentMorphemes | None = None
        pos = 0
        for (_s, _e, headings), spans in zip(sections, spans_by_section):
            units: list[tuple[int, int, int]] = []
            for s, e in spans:
                n = counts[pos]
                pos += 1
                if n <= self.budget:
                    units.append((s, e, n))
                else:
                    if morphs is None:  # the whole text's morphemes, read once as far as needed
                        morphs = DocumentMorphemes(text, _cut_pref)
                    units.extend(self._split_long(text, s, e, n, morphs))
            for s, e, n in self._pack(text, units):
                chunks.append((s, e, n, headings))
        return [Chunk(i, s, e, text[s:e], n, h) for i, (s, e, n, h) in enumerate(chunks)]

    # ------------------------------------------------------------------ packing
    def _pack(self, text: str, units: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        """Greedy packing of units into chunks; returns ``(start, end, tokens)``."""
        if not units:
            return []
        if self.exact_chars:
            return self._pack_from(text, units, 0, exact=True)
        out = self._pack_from(text, units, 0, exact=False)
        real = self.count([text[s:e] for s, e, _ in out])
        for k, ((s, e, _), n) in enumerate(zip(out, real)):
            if n > self.budget and not self._single_unit(units, s, e):
                # The estimate was wrong here: re-pack the rest with exact counts.
                first = next(i for i, u in enumerate(units) if u[0] == s)
                fixed = self._pack_from(text, units, first, exact=True)
                return [(a, b, c) for (a, b, _), c in zip(out[:k], real[:k])] + fixed
        return [(s, e, n) for (s, e, _), n in zip(out, real)]

    @staticmethod
    def _single_unit(units: list[tuple[int, int, int]], s: int, e: int) -> bool:
        return any(u[0] == s and u[1] == e for u in units)

    def _pack_from(self, text: str, units: list[tuple[int, int, int]], i: int,
                   exact: bool) -> list[tuple[int, int, int]]:
        out: list[tuple[int, int, int]] = []
        budget = self.budget
        while i < len(units):
            s = units[i][0]
            total = units[i][2]
            j = i + 1
            if self.exact_chars:
                while j < len(units) and units[j][1] - s <= budget:
                    j += 1
                total = units[j - 1][1] - s
            else:
                while j < len(units) and total + units[j][2] + 1 <= budget:
                    total += units[j][2] + 1  # + 1: the whitespace or seam between them
                    j += 1
                if exact:
                    total = self.count([text[s:units[j - 1][1]]])[0]
                    # Seams can tokenise differently: give back units until it fits.
                    while total > budget and j - i > 1:
                        j -= 1
                        total = self.count([text[s:units[j - 1][1]]])[0]
            out.append((s, units[j - 1][1], total))
            if j >= len(units):
                break
            # Overlap: start the next chunk with trailing whole units of this one.
            back = j
            carried = 0
            while self.overlap and back - 1 > i and carried + units[back - 1][2] <= self.overlap:
                back -= 1
                carried += units[back][2]
            i = back if back > i else j
        return out

    # ------------------------------------------------------------------ long sentences
    def _split_long(self, text: str, start: int, end: int, n_tokens: int,
                    morphs: DocumentMorphemes) -> list[tuple[int, int, int]]:
        """Split one over-budget sentence into pieces at morpheme boundaries of the whole text.

        Works through the sentence in windows, so the morpheme list stays
        small even for a 50 MB line without punctuation.
        """
        # Characters a piece may hold: exact without a model, else estimated from
        # the sentence's own characters per token and checked afterwards.
        if self.exact_chars:
            target = self.budget
        else:
            target = max(1, int(self.budget * (end - start) / max(n_tokens, 1) * 0.9))
        return self._split_range(text, start, end, target, 0, morphs)

    def _split_range(self, text: str, start: int, end: int, target: int, depth: int,
                     source: DocumentMorphemes | MorphemeList) -> list[tuple[int, int, int]]:
        window = max(4096, target * 8)
        pieces: list[tuple[int, int, int]] = []
        pos = start
        first = True
        while pos < end:
            wend = min(end, pos + window)
            morphs = source.take(pos, wend)
            if not morphs:
                # One morpheme longer than the window: widen the window to hold it.
                nxt = source.next_end(pos)
                if nxt is not None and nxt <= end:
                    wend = nxt
                    morphs = source.take(pos, wend)
            if not morphs:
                pieces.extend(self._count_pieces(text, [pos], end, [], target, depth))
                break
            piece_starts = self._cut(text, morphs, target)
            if wend >= end:
                nxt_pos = end
            elif len(piece_starts) > 1:
                nxt_pos = piece_starts.pop()  # the last piece may continue past the window: redo it
            else:
                nxt_pos = morphs[-1][1]  # one giant atom filled the window
            if first:
                piece_starts[0] = start
                first = False
            pieces.extend(self._count_pieces(text, piece_starts, nxt_pos, morphs, target, depth))
            if nxt_pos >= end:
                break
            pos = nxt_pos
        return pieces

    def _count_pieces(self, text: str, starts: list[int], stop: int, morphs: list[tuple[int, int, int]],
                      target: int, depth: int) -> list[tuple[int, int, int]]:
        """Pieces from ``starts`` up to ``stop`` with their counts; a piece the estimate got wrong is cut finer."""
        bounds = [(s, _rstrip(text, s, starts[k + 1] if k + 1 < len(starts) else stop)) for k, s in enumerate(starts)]
        bounds = [(s, e) for s, e in bounds if e > s]
        counts = self.count([text[s:e] for s, e in bounds])
        pieces: list[tuple[int, int, int]] = []
        for (s, e), n in zip(bounds, counts):
            over = n > self.budget and not self.exact_chars and depth < 8
            inside = [m for m in morphs if s <= m[0] and m[1] <= e] if over else []
            if len(inside) > 1:
                # The chars-per-token estimate was optimistic for this stretch: cut it finer,
                # at the same (whole-text) morphemes.
                sub = max(1, int(target * self.budget / n * 0.9))
                pieces.extend(self._split_range(text, s, e, min(sub, target - 1) if target > 1 else 1, depth + 1,
                                                MorphemeList(inside)))
            else:
                pieces.append((s, e, n))
        return pieces

    @staticmethod
    def _atoms(text: str, morphs: list[tuple[int, int, int]], target: int) -> list[tuple[int, int, int]]:
        """Morphemes, with each bracketed span that fits ``target`` characters fused into one atom."""
        n = len(morphs)
        match = [-1] * n
        stack: list[tuple[str, int]] = []
        for k, (s, e, _p) in enumerate(morphs):
            if e - s != 1:
                continue
            ch = text[s]
            if ch in _OPENERS:
                stack.append((_OPENERS[ch], k))
            elif ch in CLOSE_BRACKETS:
                for depth in range(len(stack) - 1, -1, -1):
                    if stack[depth][0] == ch:
                        match[stack[depth][1]] = k
                        del stack[depth:]
                        break
        atoms: list[tuple[int, int, int]] = []
        k = 0
        while k < n:
            c = match[k]
            if c > k and morphs[c][1] - morphs[k][0] <= target:
                atoms.append((morphs[k][0], morphs[c][1], morphs[c][2]))
                k = c + 1
            else:
                atoms.append(morphs[k])
                k += 1
        return atoms

    def _cut(self, text: str, morphs: list[tuple[int, int, int]], target: int) -> list[int]:
        """Start offsets of pieces of at most ``target`` characters over ``morphs``."""
        atoms = self._atoms(text, morphs, target)
        n = len(atoms)
        # Preference of cutting after atom k, given what follows it.
        prefs = []
        for k in range(n):
            p = atoms[k][2]
            if k + 1 < n:
                nxt = atoms[k + 1][0]
                if nxt > atoms[k][1] and p < _PREF_CLAUSE and p != _PREF_NEVER:
                    p = _PREF_CLAUSE  # whitespace between them
                if text[nxt] in _NO_START:
                    p = _PREF_NEVER
            prefs.append(p)
        starts: list[int] = []
        i = 0
        while i < n:
            starts.append(atoms[i][0])
            s = atoms[i][0]
            j = i
            while j < n and atoms[j][1] - s <= target:
                j += 1
            if j >= n:
                break
            if j == i:
                i += 1  # one atom alone is over the target: it is a piece on its own
                continue
            # Best cut among the atoms that end in the second half of the window.
            half = s + target // 2
            best, best_pref = j - 1, -1
            for k in range(j - 1, i - 1, -1):
                if atoms[k][1] < half and best_pref >= 0:
                    break
                if prefs[k] > best_pref:
                    best, best_pref = k, prefs[k]
            i = best + 1
        return starts
