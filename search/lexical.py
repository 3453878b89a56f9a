"""BM25 over the FTS5 table of MeCab terms.

Queries are analysed exactly like passages (``indexer.japanese.lexical_terms``:
NFKC, lower case, content words) and every term is quoted as an FTS5 string,
so no user string is ever FTS5 syntax (``NEAR``, ``*``, ``^``, ``-``, column
filters) or SQL (the MATCH expression and the filter are bound parameters).
Terms are ORed: BM25 ranks passages holding more, and rarer, query terms
first; a passage needs only one of them to be a candidate.
"""
from __future__ import annotations

import logging

from sqlalchemy import Connection, text

from indexer.japanese import lexical_terms
from search.filters import Filter

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


def _quote(term: str) -> str:
    # An FTS5 string: "..." with inner quotes doubled; everything inside is plain text.
    return '"' + term.replace('"', '""') + '"'


def fts_query(query: str) -> str | None:
    """An FTS5 MATCH expression: quoted terms joined by OR; None when nothing is left.

    >>> fts_query('東京 OR "タワー*"')
    '"東京" OR "or" OR "タワー"'
    """
    terms = query_terms(query)
    if not terms:
        return None
    return " OR ".join(_quote(t) for t in terms)


def bm25_search(conn: Connection, query: str, k: int, flt: Filter | None = None) -> list[tuple[int, float]]:
    """(chunk id, BM25 score; higher is better), best first, at most ``k``.

    With a filter the MATCH is joined with the matching chunk ids in SQL, so
    the ``k`` best *matching* passages come back, however rare they are.
    """
    match = fts_query(query)
    if match is None or k <= 0:
        return []
    params = {"match": match, "k": int(k)}
    sql = "SELECT rowid, bm25(chunk_terms) FROM chunk_terms WHERE chunk_terms MATCH :match"
    if flt is not None:
        sql += f" AND rowid IN ({flt.chunk_ids_sql})"
        params.update(flt.params)
    # bm25() is lower-is-better (negative); ties broken by chunk id for a stable order.
    sql += " ORDER BY bm25(chunk_terms), rowid LIMIT :k"
    rows = conn.execute(text(sql), params).fetchall()
    return [(int(r[0]), -float(r[1])) for r in rows]
