"""BM25 over the FTS5 table of MeCab terms.

Queries are analysed exactly like passages (``indexer.japanese.lexical_terms``)
and every term is quoted, so no user string is ever FTS5 or SQL syntax.
"""
from __future__ import annotations

from sqlalchemy import Connection

from indexer.japanese import lexical_terms

__all__ = ["fts_query", "bm25_search"]


def fts_query(query: str) -> str | None:
    """An FTS5 MATCH expression: quoted terms joined by OR; None when nothing is left."""
    seen: dict[str, None] = {}
    for term in lexical_terms(query):
        seen.setdefault(term, None)
    if not seen:
        return None
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in seen)


def bm25_search(conn: Connection, query: str, k: int, allowed_ids: set[int] | None = None) -> list[tuple[int, float]]:
    """(chunk id, BM25 score; higher is better), best first."""
    match = fts_query(query)
    if match is None or k <= 0:
        return []
    limit = k if allowed_ids is None else max(k * 20, 1000)
    rows = conn.exec_driver_sql(
        "SELECT rowid, bm25(chunk_terms) FROM chunk_terms WHERE chunk_terms MATCH ? "
        "ORDER BY bm25(chunk_terms) LIMIT ?",
        (match, limit),
    ).fetchall()
    out = [(int(r[0]), -float(r[1])) for r in rows]
    if allowed_ids is not None:
        out = [(i, s) for i, s in out if i in allowed_ids]
    return out[:k]
