"""Metadata filters -> bound SQL, checked on a real index against plain Python predicates."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mitsuke.indexer import IndexBuilder
from mitsuke.indexer.errors import QueryError
from mitsuke.search import Searcher
from mitsuke.search.filters import compile_where, parse_where

DOCS = [
    {"id": "news/2020/東京.txt", "title": "東京", "text": "東京の記事。", "year": 2020, "lang": "ja",
     "draft": False, "tags": ["政治", "都市"], "score": 1.5},
    {"id": "news/2021/大阪.txt", "title": "大阪", "text": "大阪の記事。", "year": 2021, "lang": "ja",
     "draft": True, "tags": ["都市"], "score": None},
    {"id": "blog/ｶﾀｶﾅ.md", "title": "ｶﾀｶﾅ", "text": "半角カナの記事。", "year": "2020", "lang": "en",
     "tags": [], "source_type": "markdown"},
    {"id": "blog/[draft]?.txt", "title": "記号", "text": "記号だらけの名前。", "lang": "ja", "nested": {"a": 1}},
]


@pytest.fixture(scope="module", params=["directory", "postgresql"])
def searcher(request, tmp_path_factory):
    """The same documents in a directory index and in a PostgreSQL index (its query node's cache)."""
    root = tmp_path_factory.mktemp("filters")
    where = root / "idx"
    if request.param == "postgresql":
        where = request.getfixturevalue("pg_server").url(schema="filters")
    with IndexBuilder.open(where, model="none") as b:
        b.add_documents(DOCS)
    with Searcher.open(where, cache=root / "cache") as s:
        yield s


def doc_keys(searcher, where):
    with searcher.store.snapshot() as snap:
        ids = snap.chunk_ids(compile_where(where))
        rows = snap.chunk_rows(ids)
    return sorted({r.doc_key for r in rows.values()})


@pytest.mark.parametrize("where, expected", [
    ({"doc_key": "news/*"}, ["news/2020/東京.txt", "news/2021/大阪.txt"]),
    ({"doc_key": "*/ｶﾀｶﾅ.md"}, ["blog/ｶﾀｶﾅ.md"]),
    ({"doc_key": "blog/[[]draft]?.txt"}, ["blog/[draft]?.txt"]),       # GLOB's own escape for [
    ({"title": "東京"}, ["news/2020/東京.txt"]),
    ({"source_type": "markdown"}, ["blog/ｶﾀｶﾅ.md"]),
    ({"year": 2020}, ["news/2020/東京.txt"]),                           # a number matches numbers only
    ({"year": "2020"}, ["blog/ｶﾀｶﾅ.md", "news/2020/東京.txt"]),          # a string matches both forms
    ({"draft": True}, ["news/2021/大阪.txt"]),
    ({"draft": "false"}, ["news/2020/東京.txt"]),
    ({"tags": "都市"}, ["news/2020/東京.txt", "news/2021/大阪.txt"]),     # list membership
    ({"tags": "政治", "year": 2020}, ["news/2020/東京.txt"]),
    ({"lang": ["en", "xx"]}, ["blog/ｶﾀｶﾅ.md"]),                           # any of
    ({"score": 1.5}, ["news/2020/東京.txt"]),
    ({"score": None}, ["news/2021/大阪.txt"]),
    ({"missing": "x"}, []),
    ({"nested": 1}, []),
    ({"year": 2020, "lang": "en"}, []),
])
def test_where_matches_like_python(searcher, where, expected):
    assert doc_keys(searcher, where) == expected


def test_filters_apply_to_search(searcher):
    hits = searcher.search("記事", k=10, where={"lang": "ja"})
    assert {h.doc_key for h in hits} == {"news/2020/東京.txt", "news/2021/大阪.txt"}
    assert searcher.search("記事", k=10, where={}) == searcher.search("記事", k=10)


def test_values_are_bound_parameters(searcher):
    flt = compile_where({"doc_key": "x'; DROP TABLE chunks; --", "lang": "ja"})
    sql, params = searcher.store.filter_sql(flt)
    assert "DROP" not in sql and "ja" not in sql
    assert "x'; DROP TABLE chunks; --" in params.values()


def test_parse_where():
    assert parse_where(["lang=ja", "doc_key=a=b*", "title="]) == {"lang": "ja", "doc_key": "a=b*", "title": ""}
    with pytest.raises(QueryError, match="KEY=VALUE"):
        parse_where(["lang"])
    with pytest.raises(QueryError, match="empty"):
        parse_where(["=ja"])


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from(["year", "lang", "draft", "tags", "doc_key", "title"]),
                       st.one_of(st.integers(2019, 2022), st.sampled_from(["ja", "en", "都市", "true", "2020", "*"]),
                                 st.booleans()), max_size=3))
def test_filtered_rows_are_a_subset_matching_every_condition_alone(searcher, where):
    with searcher.store.snapshot() as snap:
        flt = compile_where(where)
        got = {c for c, _ in snap.filtered_vectors(flt)} if flt else snap.chunk_ids()
        for key, value in where.items():
            assert got <= snap.chunk_ids(compile_where({key: value}))  # AND never widens
