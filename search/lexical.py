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

from mitsuke.indexer.japanese import lexical_terms
from mitsuke.search.filters import Filter

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


def _informative(conn: Connection, terms: list[str], n_docs: int) -> list[str]:
    """``terms`` without those in at least half the passages.

    FTS5's bm25() gives such a term idf = log((N - n + 0.5) / (n + 0.5)) <= 0,
    which it clamps to 1e-6: it cannot move the ranking, but ORing it in makes
    SQLite score nearly every row (する is in 99 % of passages). Dropping it
    halves query time on the eval corpus and leaves the ranking unchanged.
    When every term is that common, all of them are kept.
    """
    if n_docs <= 0 or not terms:
        return terms
    # A per-connection temp table: readers never write to the index file.
    conn.exec_driver_sql("CREATE VIRTUAL TABLE IF NOT EXISTS temp.mitsuke_vocab "
                         "USING fts5vocab(main, 'chunk_terms', 'row')")
    df: dict[str, int] = {}
    for start in range(0, len(terms), 500):
        part = terms[start:start + 500]
        rows = conn.exec_driver_sql(
            f"SELECT term, doc FROM temp.mitsuke_vocab WHERE term IN ({','.join('?' * len(part))})", tuple(part))
        df.update((str(t), int(d)) for t, d in rows)
    kept = [t for t in terms if 2 * df.get(t, 0) < n_docs]
    return kept or terms


def bm25_search(conn: Connection, query: str, k: int, flt: Filter | None = None, *,
                n_docs: int | None = None) -> list[tuple[int, float]]:
    """(chunk id, BM25 score; higher is better), best first, at most ``k``.

    With a filter the MATCH is joined with the matching chunk ids in SQL, so
    the ``k`` best *matching* passages come back, however rare they are.
    ``n_docs`` (the number of passages, counted when not given) lets terms that
    cannot change the ranking be left out of the MATCH.
    """
    terms = query_terms(query)
    if not terms or k <= 0:
        return []
    if n_docs is None:
        n_docs = int(conn.exec_driver_sql("SELECT count(*) FROM chunks").scalar() or 0)
    # With a filter the few allowed passages may hold only the common terms: keep them all.
    informative = terms if flt is not None else _informative(conn, terms, n_docs)
    rows = _match(conn, informative, k, flt)
    if len(rows) < k and len(informative) < len(terms):
        # Fewer than k passages hold a rare term: the common ones decide the rest.
        rows = _match(conn, terms, k, flt)
    return rows


def _match(conn: Connection, terms: list[str], k: int, flt: Filter | None) -> list[tuple[int, float]]:
    params = {"match": " OR ".join(_quote(t) for t in terms), "k": int(k)}
    sql = "SELECT rowid, bm25(chunk_terms) FROM chunk_terms WHERE chunk_terms MATCH :match"
    if flt is not None:
        sql += f" AND rowid IN ({flt.chunk_ids_sql})"
        params.update(flt.params)
    # bm25() is lower-is-better (negative); ties broken by chunk id for a stable order.
    sql += " ORDER BY bm25(chunk_terms), rowid LIMIT :k"
    rows = conn.execute(text(sql), params).fetchall()
    return [(int(r[0]), -float(r[1])) for r in rows]
