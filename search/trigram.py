"""Substring matching for the lexical leg: an FTS5 trigram index beside the MeCab terms.

MeCab cuts a fragment of a word (``ッカーシンボ`` of サッカーシンボル,
``ラーニングサービ``) into morphemes the document does not have, so the term
index cannot find it. The trigram table (``indexer.store.TRIGRAM_TABLE``)
holds every passage's text NFKC + lower-cased (``japanese.match_text``); a
query is cut at whitespace into pieces, each piece of three or more
characters is a substring match (an FTS5 phrase of its trigrams), and the
pieces are ORed and ranked by BM25.

``lexical_search`` combines this with ``lexical.bm25_search`` (the terms):
the trigram leg adds its passages at weight ``TRIGRAM_WEIGHT`` in units of
the best term score (see ``combine``). Queries of one or two characters have
no trigram and are answered by the terms alone, as before.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from mitsuke.indexer.japanese import match_text
from mitsuke.indexer.store import Filter, Snapshot
from mitsuke.search.lexical import bm25_search

__all__ = ["trigram_phrases", "trigram_search", "lexical_search", "combine", "LexicalHits",
           "TRIGRAM_WEIGHT", "MAX_PHRASES", "MIN_PHRASE_CHARS", "MATCH_KINDS"]

log = logging.getLogger("mitsuke")

MIN_PHRASE_CHARS = 3  # one trigram
MAX_PHRASES = 32
# A piece longer than this is pasted text, not a fragment: its first MAX_PHRASE_CHARS characters are matched.
MAX_PHRASE_CHARS = 256
# Weight of the trigram leg against the terms, chosen on bench/fragments.py (bench/sections/lexical_fragments.md):
# at 2 a passage holding the fragment outranks one that only shares MeCab pieces with it
# (fragment doc hit@1 0.907, at 1: 0.817), and question span hit@k stays within 0.0005 of terms alone.
TRIGRAM_WEIGHT = 2.0
MATCH_KINDS = ("terms", "trigram", "both")


def trigram_phrases(query: str) -> list[str]:
    """Distinct whitespace-separated pieces of the normalised query with at least three characters.

    >>> trigram_phrases("ｯｶｰｼﾝﾎﾞ  東京 タワー")
    ['ッカーシンボ', 'タワー']
    """
    out: dict[str, None] = {}
    for piece in match_text(query).split():
        if len(piece) >= MIN_PHRASE_CHARS:
            out[piece[:MAX_PHRASE_CHARS]] = None
            if len(out) >= MAX_PHRASES:
                break
    return list(out)


def trigram_search(snap: Snapshot, query: str, k: int, flt: Filter | None = None) -> list[tuple[int, float]]:
    """(chunk id, BM25) of passages holding a piece of ``query`` as a substring, best first."""
    phrases = trigram_phrases(query)
    if not phrases or k <= 0:
        return []
    return snap.substring_bm25(phrases, k, flt)


@dataclass
class LexicalHits:
    """The lexical leg: ``ranked`` (chunk id, score) best first, and which match found each passage."""

    ranked: list[tuple[int, float]]
    matches: dict[int, str] = field(default_factory=dict)


def combine(terms: Sequence[tuple[int, float]], trigrams: Sequence[tuple[int, float]],
            weight: float = TRIGRAM_WEIGHT) -> LexicalHits:
    """Terms' BM25 plus ``weight`` × the trigram BM25 rescaled to the best term score.

    Scores stay in the terms' BM25 units (a passage found by terms alone keeps
    its score, so a query no passage holds as a substring ranks exactly as
    before); with no term match at all the trigram scores are used as they are.
    """
    top_terms = max((s for _, s in terms), default=0.0)
    top_tri = max((s for _, s in trigrams), default=0.0)
    scale = weight * (top_terms / top_tri if top_terms > 0 and top_tri > 0 else 1.0)
    scores: dict[int, float] = {}
    matches: dict[int, str] = {}
    for cid, s in terms:
        scores[cid] = s
        matches[cid] = "terms"
    for cid, s in trigrams:
        scores[cid] = scores.get(cid, 0.0) + scale * s
        matches[cid] = "both" if cid in matches else "trigram"
    ranked = sorted(scores.items(), key=lambda x: (-x[1], x[0]))
    return LexicalHits(ranked, matches)


def lexical_search(snap: Snapshot, query: str, k: int, flt: Filter | None = None, *,
                   n_docs: int | None = None, trigrams: bool = True, weight: float | None = None
                   ) -> LexicalHits:
    """The lexical leg: MeCab terms (BM25) and, where the index has it, trigram substrings, combined.

    ``trigrams=False`` (an index written before the trigram table) or
    ``weight=0`` gives the terms alone; ``weight`` defaults to ``TRIGRAM_WEIGHT``.
    """
    weight = TRIGRAM_WEIGHT if weight is None else float(weight)
    terms = bm25_search(snap, query, k, flt, n_docs=n_docs)
    tri = trigram_search(snap, query, k, flt) if trigrams and weight > 0 else []
    if not tri:
        return LexicalHits(list(terms), {c: "terms" for c, _ in terms})
    hits = combine(terms, tri, weight)
    hits.ranked = hits.ranked[:k]
    hits.matches = {c: hits.matches[c] for c, _ in hits.ranked}
    return hits
