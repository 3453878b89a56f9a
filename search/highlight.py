"""Where a query's terms occur in a passage, as the lexical leg matched them (NFKC + lower case).

Used by ``mitsuke search`` (snippets) and ``mitsuke serve`` (highlights).

Offsets are into the original text, so ｶﾀｶﾅ in a passage is marked for a カタカナ query.
"""
from __future__ import annotations

import re
import unicodedata

__all__ = ["query_terms", "term_spans", "normalized_with_map"]


def query_terms(query: str) -> list[str]:
    """The query's lexical terms worth marking (single ASCII characters would mark noise), longest first."""
    from mitsuke.indexer.japanese import lexical_terms

    return sorted({t for t in lexical_terms(query) if len(t) > 1 or not t.isascii()}, key=lambda t: (-len(t), t))


def normalized_with_map(text: str) -> tuple[str, list[int], list[int]]:
    """NFKC + lower-cased ``text`` and, per character of it, the original [start, end) it came from."""
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for i, ch in enumerate(text):
        n = unicodedata.normalize("NFKC", ch).lower()
        if out and n and unicodedata.combining(n[0]):
            merged = unicodedata.normalize("NFKC", out[-1] + n)  # ｶﾞ → ガ
            if len(merged) == 1:
                out[-1] = merged
                ends[-1] = i + 1
                continue
        for c in n:
            out.append(c)
            starts.append(i)
            ends.append(i + 1)
    return "".join(out), starts, ends


def term_spans(text: str, terms: list[str]) -> list[list[int]]:
    """Non-overlapping ``[start, end)`` offsets into ``text`` of ``terms``, in order; adjacent ones merged."""
    if not terms or not text:
        return []
    norm, starts, ends = normalized_with_map(text)
    pattern = re.compile("|".join(re.escape(t) for t in terms))
    spans: list[list[int]] = []
    for m in pattern.finditer(norm):
        if m.end() > m.start():
            a, b = starts[m.start()], ends[m.end() - 1]
            if spans and a < spans[-1][1]:
                continue
            if spans and a == spans[-1][1]:  # 豊岡 + 市: one mark for adjacent terms
                spans[-1][1] = b
            else:
                spans.append([a, b])
    return spans
