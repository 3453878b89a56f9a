"""Hostile queries and filters: each returns results or a clear QueryError, never an SQLite exception."""
from __future__ import annotations

import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mitsuke.indexer import IndexBuilder
from mitsuke.indexer.errors import QueryError
from mitsuke.search import Searcher
from mitsuke.search.lexical import bm25_search

HOSTILE = [
    '"',
    '"東京',
    '東京"タワー"',
    "'",
    "東京 NEAR タワー",
    "NEAR(東京 タワー, 2)",
    "東京*",
    "*",
    "^東京",
    "-東京",
    "東京 -タワー",
    "東京 AND OR NOT タワー",
    "terms:東京",
    "chunk_terms:東京",
    "{terms}: 東京",
    "rowid:1",
    "'; DROP TABLE chunks; --",
    "東京'); DELETE FROM documents; --",
    "1 OR 1=1",
    "😀",
    "東京😀👨‍👩‍👧‍👦タワー",
    "\x00東京\x00",
    "東京\ud800タワー",          # a lone surrogate
    "\u200b\u200d\ufeff",
    "　",                       # only an ideographic space
    "",
    "   \n\t",
    "はがをにへとでや",         # only particles
    "の",
    "、。「」『』（）",
    "東京" * 5000,              # 10,000 characters
    "".join(chr(0x4E00 + i) for i in range(10_000)),  # 10,000 distinct-ish characters
    "ｶﾀｶﾅ ＡＢＣ １２３",
    "((((((((",
    "a" * 300,
]

DOCS = [
    {"id": "tokyo", "text": "東京タワーは東京の名所。", "lang": "ja"},
    {"id": "osaka", "text": "大阪城は大阪の名所。NEAR という英単語もある。", "lang": "ja"},
    {"id": "emoji", "text": "絵文字😀を含む文書。ｶﾀｶﾅとＡＢＣと１２３。", "lang": "ja"},
    {"id": "sql", "text": "'; DROP TABLE chunks; -- という文字列の説明。", "lang": "en"},
]


@pytest.fixture(scope="module")
def lexical_searcher(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "lx"
    with IndexBuilder.open(path, model="none") as b:
        b.add_documents(DOCS)
    with Searcher.open(path) as s:
        yield s


@pytest.fixture(scope="module")
def dense_searcher(tmp_path_factory, tiny_embedder):
    path = tmp_path_factory.mktemp("hostile") / "dense"
    with IndexBuilder.open(path, model="tiny", embedder=tiny_embedder) as b:
        b.add_documents(DOCS)
    with Searcher.open(path, embedder=tiny_embedder) as s:
        yield s


def _check(hits):
    assert isinstance(hits, list)
    for h in hits:
        assert h.doc_key in {d["id"] for d in DOCS}


@pytest.mark.parametrize("query", HOSTILE, ids=[f"q{i}" for i in range(len(HOSTILE))])
def test_hostile_lexical_queries(lexical_searcher, query):
    _check(lexical_searcher.search(query, k=5))
    _check(lexical_searcher.search(query, k=5, where={"lang": "ja"}))


def test_hostile_queries_in_every_mode(dense_searcher):
    for mode in ("lexical", "dense", "hybrid"):
        results = dense_searcher.search_batch(HOSTILE, k=3, mode=mode)
        assert len(results) == len(HOSTILE)
        for hits in results:
            _check(hits)
    # Empty and blank queries give nothing rather than an arbitrary ranking.
    assert dense_searcher.search("", k=3) == [] and dense_searcher.search(" \n", k=3, mode="dense") == []


def test_operators_are_plain_text(lexical_searcher):
    # NEAR is a word in one document: quoted, it is searched as text, not as an operator.
    assert [h.doc_key for h in lexical_searcher.search("NEAR", k=5)] == ["osaka"]
    assert [h.doc_key for h in lexical_searcher.search("DROP TABLE chunks", k=5)] == ["sql"]
    # A prefix star would match 東京タワー etc. if it were FTS5 syntax; as text it only finds 東京.
    assert {h.doc_key for h in lexical_searcher.search("東京*", k=5)} == {"tokyo"}


def test_sql_in_queries_and_filters_changes_nothing(lexical_searcher):
    before = lexical_searcher.info()["chunks"]
    for where in ({"lang": "'; DROP TABLE chunks; --"}, {"doc_key": "*' OR '1'='1"},
                  {"title": "x' OR 1=1 --"}, {"lang": ["xx", "') OR 1=1 --"]}):
        assert lexical_searcher.search("東京", k=5, where=where) == []
    assert lexical_searcher.info()["chunks"] == before
    db = sqlite3.connect(lexical_searcher.path / "meta.sqlite")
    assert db.execute("SELECT count(*) FROM chunks").fetchone()[0] == before
    db.close()


@pytest.mark.parametrize("where", [
    {'a"b': 1}, {"a\\b": 1}, {"": 1}, {1: "x"}, {"lang": {"nested": 1}}, {"lang": []}, {"lang": object()},
    {"x\x00": 1},
])
def test_bad_filters_are_query_errors(lexical_searcher, where):
    with pytest.raises(QueryError):
        lexical_searcher.search("東京", where=where)


def test_odd_but_valid_filter_keys(lexical_searcher):
    for key in ("$.lang", "lang'", "言語", "a b", "[0]", "*"):
        assert lexical_searcher.search("東京", k=3, where={key: "ja"}) == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(st.text(max_size=60))
def test_any_text_is_a_safe_query(lexical_searcher, query):
    with lexical_searcher.store.snapshot() as snap:
        hits = bm25_search(snap, query, 5)
    assert all(isinstance(c, int) and s >= 0 or s < 0 for c, s in hits)
    _check(lexical_searcher.search(query, k=3))
