"""The lexical leg: BM25 over the MeCab terms of the passages.

Queries are analysed exactly like passages (``indexer.japanese.lexical_terms``:
NFKC, lower case, content words); the store runs the BM25 query (SQLite:
every term quoted as an FTS5 string, so no user string is ever FTS5 syntax
(``NEAR``, ``*``, ``^``, ``-``, column filters) or SQL - the MATCH
expression and the filter are bound parameters). Terms are ORed: BM25 ranks
passages holding more, and rarer, query terms first; a passage needs only
one of them to be a candidate. This module decides which terms to ask for.
"""
from __future__ import annotations

import logging

from mitsuke.indexer.japanese import lexical_terms
from mitsuke.indexer.store import Filter, Snapshot
from mitsuke.indexer.store.sqlite import fts5_match

__all__ = ["fts_query", "query_terms", "bm25_search", "MAX_QUERY_TERMS"]

log = logging.getLogger("mitsuke")

# A pasted page as a query gives thousands of terms; FTS5 cost grows with each
# OR branch, and the first few hundred distinct terms already decide the ranking.
MAX_QUERY_TERMS = 256


def query_terms(query: str) -> list[str]:
    """Distinct lexical terms of ``query`` in order of appearance (at most ``MAX_QUERY_TERMS``)."""
    seen = dict.fromkeys(lexical_terms(query))
    terms = list(seen)
    if len(terms) > MAX_QUERY_TERMS:
        log.info("query has %d distinct terms: searching with the first %d", len(terms), MAX_QUERY_TERMS)
        terms = terms[:MAX_QUERY_TERMS]
    return terms


def fts_query(query: str) -> str | None:
    """The FTS5 MATCH expression the SQLite store runs for ``query``: quoted terms ORed; None if none are left.

    >>> fts_query('東京 OR "タワー*"')
    '"東京" OR "or" OR "タワー"'
    """
    return fts5_match(query_terms(query))


def _informative(snap: Snapshot, terms: list[str], n_docs: int) -> list[str]:
    """``terms`` without those in at least half the passages.

    FTS5's bm25() gives such a term idf = log((N - n + 0.5) / (n + 0.5)) <= 0,
    which it clamps to 1e-6: it cannot move the ranking, but ORing it in makes
    SQLite score nearly every row (する is in 99 % of passages). Dropping it
    halves query time on the eval corpus and leaves the ranking unchanged.
    When every term is that common, all of them are kept.
    """
    if n_docs <= 0 or not terms:
        return terms
    df = snap.term_doc_freq(terms)
    kept = [t for t in terms if 2 * df.get(t, 0) < n_docs]
    return kept or terms


def bm25_search(snap: Snapshot, query: str, k: int, flt: Filter | None = None, *,
                n_docs: int | None = None) -> list[tuple[int, float]]:
    """(chunk id, BM25 score; higher is better), best first, at most ``k``, read in ``snap``.

    With a filter the MATCH is joined with the matching chunk ids in SQL, so
    the ``k`` best *matching* passages come back, however rare they are.
    ``n_docs`` (the number of passages, counted when not given) lets terms that
    cannot change the ranking be left out of the MATCH.
    """
    terms = query_terms(query)
    if not terms or k <= 0:
        return []
    if n_docs is None:
        n_docs = int(snap.counts()["chunks"])
    # With a filter the few allowed passages may hold only the common terms: keep them all.
    informative = terms if flt is not None else _informative(snap, terms, n_docs)
    rows = snap.bm25(informative, k, flt)
    if len(rows) < k and len(informative) < len(terms):
        # Fewer than k passages hold a rare term: the common ones decide the rest.
        rows = snap.bm25(terms, k, flt)
    return rows

