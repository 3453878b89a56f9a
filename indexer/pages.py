"""Page numbers of a character range, from a document's page start offsets.

A paged document (a PDF) is indexed as its pages' texts joined with
``PAGE_SEPARATOR``; ``page_starts[i]`` is the offset where page ``i + 1``
begins. Chunks keep plain character offsets; their pages are computed from
those offsets when they are read, so offsets stay the one source of truth.
"""
from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

__all__ = ["PAGE_SEPARATOR", "join_pages", "pages_of"]

# A blank line: sentence and paragraph splitting treat a page end like a paragraph end.
PAGE_SEPARATOR = "\n\n"


def join_pages(pages: Sequence[str]) -> tuple[str, tuple[int, ...]]:
    """The document text and each page's start offset.

    >>> join_pages(["一頁目。", "", "三頁目。"])
    ('一頁目。\\n\\n\\n\\n三頁目。', (0, 6, 8))
    """
    starts = []
    pos = 0
    for text in pages:
        starts.append(pos)
        pos += len(text) + len(PAGE_SEPARATOR)
    return PAGE_SEPARATOR.join(pages), tuple(starts)


def pages_of(page_starts: Sequence[int] | None, char_start: int, char_end: int) -> tuple[int, int] | None:
    """1-based ``(first, last)`` pages that ``[char_start, char_end)`` touches; ``None`` for an unpaged document.

    >>> pages_of((0, 6, 8), 8, 12)
    (3, 3)
    >>> pages_of((0, 6, 8), 0, 12)
    (1, 3)
    """
    if not page_starts:
        return None
    first = max(1, bisect_right(page_starts, char_start))
    last = max(first, bisect_right(page_starts, max(char_start, char_end - 1)))
    return first, last
