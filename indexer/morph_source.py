"""Morphemes of stretches of a document, as the whole document's MeCab analysis has them.

The chunker cuts an over-long sentence at morpheme boundaries. MeCab's choice
at a place depends on the text on both sides (``ＡＢＣＡＢＣ`` alone is two
words, inside ``「ＡＢＣＡＢＣ」`` one), so tagging a sentence, or a piece of
one, on its own can give boundaries the whole text does not have.
``DocumentMorphemes`` reads the whole document's morphemes
(``japanese.iter_morphemes``) lazily and forward only, so memory stays flat on
a 50 MB line; ``MorphemeList`` serves a stretch already read.

Each morpheme is ``(start, end, cut preference after it)``; the preference
comes from the chunker's ``pref(surface, word)``.
"""
from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from typing import Any

from mitsuke.indexer.japanese import iter_morphemes

__all__ = ["Morpheme", "DocumentMorphemes", "MorphemeList"]

Morpheme = tuple[int, int, int]
PrefFn = Callable[[str, Any], int]


class DocumentMorphemes:
    """The morphemes of ``text``, read on demand; ``take`` calls must go forward."""

    def __init__(self, text: str, pref: PrefFn) -> None:
        self.text = text
        self._pref = pref
        self._it = iter_morphemes(text)
        self._buf: deque[Morpheme] = deque()
        self._done = False
        self._floor = 0

    def _pull(self) -> bool:
        while not self._done:
            try:
                s, e, w = next(self._it)
            except StopIteration:
                self._done = True
                return False
            if s < self._floor:
                continue  # before anything still asked for
            # The preference reads the node now, before the next MeCab window is tagged.
            self._buf.append((s, e, self._pref(self.text[s:e], w)))
            return True
        return False

    def _forget_before(self, start: int) -> None:
        self._floor = max(self._floor, start)
        buf = self._buf
        while buf and buf[0][0] < self._floor:
            buf.popleft()

    def take(self, start: int, end: int) -> list[Morpheme]:
        """Morphemes lying wholly inside ``[start, end)``; those starting before ``start`` are forgotten."""
        self._forget_before(start)
        buf = self._buf
        while (not buf or buf[-1][1] <= end) and self._pull():
            pass
        return [m for m in buf if m[1] <= end]

    def next_end(self, start: int) -> int | None:
        """End of the first morpheme starting at or after ``start`` (None past the last)."""
        self._forget_before(start)
        if not self._buf and not self._pull():
            return None
        return self._buf[0][1]


class MorphemeList:
    """The same interface over morphemes already read (sorted by start)."""

    def __init__(self, morphs: list[Morpheme]) -> None:
        self.morphs = morphs
        self._starts = [m[0] for m in morphs]

    def take(self, start: int, end: int) -> list[Morpheme]:
        i = bisect_left(self._starts, start)
        out = []
        for m in self.morphs[i:]:
            if m[1] > end:
                break
            out.append(m)
        return out

    def next_end(self, start: int) -> int | None:
        i = bisect_left(self._starts, start)
        return self.morphs[i][1] if i < len(self.morphs) else None
