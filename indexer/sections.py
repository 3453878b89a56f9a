"""Sections of a document: Markdown ATX headings (not inside fenced code) and page breaks.

``markdown_sections`` gives each section's span and heading path; ``cut_sections``
cuts sections again at page starts. The chunker (``indexer.chunking``) packs
sentences within each section, so no chunk crosses a heading or a page.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["markdown_sections", "cut_sections"]

_HEADING_RE = re.compile(r"^[ \t]{0,3}(#{1,6})[ \t]+(.+?)[ \t]*(?:[ \t]#+[ \t]*)?$", re.MULTILINE)
_FENCE_RE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})", re.MULTILINE)


def _fenced_ranges(text: str) -> list[tuple[int, int]]:
    """Character ranges of fenced code blocks (``` or ~~~), where ``#`` is not a heading."""
    ranges: list[tuple[int, int]] = []
    open_at = -1
    fence = ""
    for m in _FENCE_RE.finditer(text):
        mark = m.group(1)
        if open_at < 0:
            open_at, fence = m.start(), mark
        elif mark[0] == fence[0] and len(mark) >= len(fence):
            ranges.append((open_at, m.end()))
            open_at = -1
    if open_at >= 0:
        ranges.append((open_at, len(text)))
    return ranges


def markdown_sections(text: str) -> list[tuple[int, int, tuple[str, ...]]]:
    """``(start, end, heading path)`` for each section; a heading line opens its section.

    Sections with no text are dropped; a heading-only section directly followed
    by one of its sub-sections is merged into it (the merged span starts at
    the outer heading, so offsets stay exact and nothing is lost).

    >>> t = "# 豊岡市\\n## 気候\\n夏は暑い。\\n## 交通\\n駅がある。"
    >>> [(t[s:e], h) for s, e, h in markdown_sections(t)]
    [('# 豊岡市\\n## 気候\\n夏は暑い。\\n', ('豊岡市', '気候')), ('## 交通\\n駅がある。', ('豊岡市', '交通'))]
    """
    fences = _fenced_ranges(text)
    sections: list[tuple[int, int, tuple[str, ...], int]] = []  # + end of the heading line
    path: list[tuple[int, str]] = []
    start = 0
    body = 0
    current: tuple[str, ...] = ()
    for m in _HEADING_RE.finditer(text):
        if any(a <= m.start() < b for a, b in fences):
            continue
        if m.start() > start:
            sections.append((start, m.start(), current, body))
        level = len(m.group(1))
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, m.group(2).strip()))
        current = tuple(h for _, h in path)
        start, body = m.start(), m.end()
    sections.append((start, len(text), current, body))
    sections = [s for s in sections if text[s[0]:s[1]].strip()]
    # Merge heading-only sections forward into their first sub-section, innermost first.
    merged: list[tuple[int, int, tuple[str, ...]]] = []
    for start, end, heads, body in reversed(sections):
        if merged and heads and not text[body:end].strip():
            nstart, nend, nheads = merged[-1]
            if len(nheads) > len(heads) and nheads[:len(heads)] == heads and nstart == end:
                merged[-1] = (start, nend, nheads)
                continue
        merged.append((start, end, heads))
    merged.reverse()
    return merged


def cut_sections(text: str, sections: list[tuple[int, int, tuple[str, ...]]],
                 breaks: Sequence[int]) -> list[tuple[int, int, tuple[str, ...]]]:
    """``sections`` cut at every offset in ``breaks``; pieces with no text are dropped."""
    out = []
    for start, end, heads in sections:
        for b in sorted(b for b in set(breaks) if start < b < end):
            out.append((start, b, heads))
            start = b
        out.append((start, end, heads))
    return [s for s in out if text[s[0]:s[1]].strip()]
