"""Substring (trigram) matching in the lexical leg: fragments, widths, old indexes, deletes, filters, CLI."""
from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mitsuke.cli import cli
from mitsuke.indexer import IndexBuilder
from mitsuke.indexer.store.sqlite import TRIGRAM_FORM, TRIGRAM_TABLE, fts5_match
from mitsuke.search import Searcher
from mitsuke.search.lexical import bm25_search
from mitsuke.search.trigram import combine, trigram_phrases

CORPUS = {
    "soccer": ("サッカー", "日本サッカー協会のサッカーシンボルマークは八咫烏である。"),
    "cast": ("放送", "ジョン・ウェイ・キャスティングが番組の配役を決めた。"),
    "elearn": ("教育", "大学はeラーニングサービスを2019年に始めた。"),
    "halfwidth": ("半角", "ｺﾝﾋﾟｭｰﾀｰｼｽﾃﾑの保守は外部に委託した。"),
    "tokyo": ("東京", "東京は日本の首都で、人口は約千四百万人である。"),
    "kyoto": ("京都", "京都には千年の都の寺が多い。東の市場は古い。"),
    "code": ("型番", "交換部品の型番はＡＢ－１２３４Ｘで、旧型はAB-1200だった。"),
    "yahoo": ("株価", "ほぼ10か月経って、Yahoo!の株価（YHOO）は下がった。"),
}


def _docs(corpus=CORPUS):
    return [{"id": k, "title": t, "text": x} for k, (t, x) in corpus.items()]


@pytest.fixture(scope="module")
def index_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tri") / "idx"
    with IndexBuilder.open(path, model="none") as b:
        b.add_documents(_docs())
    return path


@pytest.fixture(scope="module")
def searcher(index_path):
    with Searcher.open(index_path) as s:
        yield s


@pytest.mark.parametrize("fragment, doc", [
    ("ッカーシンボ", "soccer"),        # the examples: MeCab cuts them into foreign morphemes
    ("ェイ・キャス", "cast"),
    ("ラーニングサービ", "elearn"),
    ("ンピューターシス", "halfwidth"),    # full-width query, half-width text
    ("ﾋﾟｭｰﾀｰｼ", "halfwidth"),           # and half-width query
    ("b-1234x", "code"),               # full-width product code, ASCII lower-case query
    ("hoo!の株", "yahoo"),
])
def test_fragments_are_found_at_rank_one(searcher, fragment, doc):
    hits = searcher.search(fragment, k=5, mode="lexical")
    assert hits and hits[0].doc_key == doc
    assert hits[0].lexical_match in ("trigram", "both")
    assert hits[0].lexical_rank == 1 and hits[0].lexical_score > 0


def test_terms_alone_miss_the_katakana_fragments(searcher):
    # What the trigram leg is for: MeCab's pieces of these fragments are not the passages' words.
    for fragment, doc in (("ッカーシンボ", "soccer"), ("ェイ・キャス", "cast")):
        ids = {c for c, _ in bm25_search_on(searcher, fragment)}
        hit = searcher.search(fragment, k=1, mode="lexical")[0]
        assert hit.doc_key == doc and hit.chunk_id not in ids and hit.lexical_match == "trigram"


def bm25_search_on(searcher, query):
    with searcher.store.snapshot() as snap:
        return bm25_search(snap, query, 10)


def _same_ranking(hits, expected):
    assert [h.chunk_id for h in hits] == [c for c, _ in expected]
    assert [h.score for h in hits] == pytest.approx([s for _, s in expected])


@pytest.mark.parametrize("query", ["東京", "京", "都", "寺", "東の"])
def test_one_and_two_character_queries_are_answered_by_terms_as_before(searcher, query):
    assert trigram_phrases(query) == [] or len(query) >= 3
    hits = searcher.search(query, k=10, mode="lexical")
    _same_ranking(hits, bm25_search_on(searcher, query))
    assert all(h.lexical_match == "terms" for h in hits)


def test_a_word_matched_both_ways_says_both(searcher):
    hits = searcher.search("サッカー協会", k=3, mode="lexical")
    assert hits[0].doc_key == "soccer" and hits[0].lexical_match == "both"
    # A question no passage holds as a substring ranks exactly as the terms rank it.
    q = "京都の寺はどこに多いか"
    hits = searcher.search(q, k=5, mode="lexical")
    _same_ranking(hits, bm25_search_on(searcher, q)[:5])
    assert hits[0].doc_key == "kyoto" and hits[0].lexical_match == "terms"


def test_query_syntax_is_never_fts5_syntax(searcher):
    for q in ['"ッカー" OR NEAR(a b)', "シンボ*", "text:シンボル", '""""', "^サッカー -x", "a\x00bcd"]:
        searcher.search(q, k=3, mode="lexical")  # no error
    assert fts5_match(trigram_phrases('ab"cd ef')) == '"ab""cd"'
    assert trigram_phrases("ｯｶｰｼﾝﾎﾞ  東京 タワー") == ["ッカーシンボ", "タワー"]


def test_combine_keeps_term_scores_and_labels():
    hits = combine([(1, 8.0), (2, 4.0)], [(2, 3.0), (3, 1.5)], 1.0)
    assert hits.matches == {1: "terms", 2: "both", 3: "trigram"}
    assert dict(hits.ranked) == pytest.approx({1: 8.0, 2: 4.0 + 8.0, 3: 4.0})
    assert combine([], [(5, 2.0)], 1.0).ranked == [(5, 2.0)]


def test_filters_apply_to_the_trigram_leg(index_path):
    with Searcher.open(index_path) as s:
        assert s.search("ッカーシンボ", k=5, mode="lexical", where={"doc_key": "cast"}) == []
        got = s.search("ッカーシンボ", k=5, mode="lexical", where={"doc_key": "s*"})
        assert [h.doc_key for h in got] == ["soccer"]


def _integrity(path):
    con = sqlite3.connect(path / "meta.sqlite")
    try:
        con.execute(f"INSERT INTO {TRIGRAM_TABLE} ({TRIGRAM_TABLE}) VALUES ('integrity-check')")
        return con.execute(f"SELECT count(*) FROM {TRIGRAM_TABLE}_docsize").fetchone()[0]
    finally:
        con.close()


def test_updates_and_deletes_leave_no_stale_substrings(tmp_path):
    path = tmp_path / "idx"
    with IndexBuilder.open(path, model="none") as b:
        b.add_documents(_docs())
    changed = dict(CORPUS, soccer=("サッカー", "協会のマークは三本足の烏である。"))
    del changed["cast"]
    with IndexBuilder.open(path, model="none") as b:
        b.add_documents(_docs(changed))
        b.prune()
    with Searcher.open(path) as s:
        assert s.search("ッカーシンボ", k=5, mode="lexical") == []
        assert s.search("ェイ・キャス", k=5, mode="lexical") == []
        assert s.search("三本足の", k=1, mode="lexical")[0].doc_key == "soccer"
        n_chunks = s.info()["chunks"]
    assert _integrity(path) == n_chunks


def _make_old_index(path):
    """An index as mitsuke wrote it before migration 3: no trigram table."""
    with IndexBuilder.open(path, model="none") as b:
        b.add_documents(_docs())
    con = sqlite3.connect(path / "meta.sqlite")
    con.execute(f"DROP TABLE {TRIGRAM_TABLE}")
    con.execute("DELETE FROM schema_version WHERE version >= 3")
    con.execute("DELETE FROM state WHERE key = 'trigram_form'")
    con.commit()
    con.close()


def test_an_old_index_is_read_without_writing_and_upgraded_by_its_next_writer(tmp_path, caplog):
    path = tmp_path / "old"
    _make_old_index(path)
    before = (path / "meta.sqlite").read_bytes()
    with Searcher.open(path) as s:
        with caplog.at_level("WARNING", logger="mitsuke"):
            hits = s.search("サッカー", k=3, mode="lexical")
        assert hits[0].doc_key == "soccer" and hits[0].lexical_match == "terms"
        assert "mitsuke index - --index" in caplog.text
    with sqlite3.connect(path / "meta.sqlite") as con:
        assert con.execute("SELECT count(*) FROM sqlite_master WHERE name = ?", (TRIGRAM_TABLE,)).fetchone()[0] == 0
    assert (path / "meta.sqlite").read_bytes() == before  # the reader wrote nothing
    # The documented upgrade: an index run that adds nothing.
    res = CliRunner().invoke(cli, ["index", "-", "--index", str(path), "--json"], input="")
    assert res.exit_code == 0, res.output
    with Searcher.open(path) as s:
        hits = s.search("ッカーシンボ", k=3, mode="lexical")
        assert hits[0].doc_key == "soccer" and hits[0].lexical_match == "trigram"
        n_chunks = s.info()["chunks"]
    assert _integrity(path) == n_chunks


def test_another_normal_form_rebuilds_the_trigram_table(tmp_path):
    path = tmp_path / "idx"
    with IndexBuilder.open(path, model="none") as b:
        b.add_documents(_docs())
    with sqlite3.connect(path / "meta.sqlite") as con:  # as if written by a Python with another Unicode version
        con.execute("UPDATE state SET value = 'nfkc-lower-v1:unicode-0.0' WHERE key = 'trigram_form'")
        con.execute(f"INSERT INTO {TRIGRAM_TABLE} ({TRIGRAM_TABLE}) VALUES ('delete-all')")
    with IndexBuilder.open(path, model="none") as b:
        b.add_documents(_docs({k: v for k, v in CORPUS.items() if k != "soccer"}))
        b.prune()
    with sqlite3.connect(path / "meta.sqlite") as con:
        assert con.execute("SELECT value FROM state WHERE key = 'trigram_form'").fetchone()[0] == TRIGRAM_FORM
    with Searcher.open(path) as s:
        assert s.search("ェイ・キャス", k=1, mode="lexical")[0].doc_key == "cast"
        assert s.search("ッカーシンボ", k=1, mode="lexical") == []
        n_chunks = s.info()["chunks"]
    assert _integrity(path) == n_chunks


def test_cli_json_shows_the_lexical_match(index_path):
    res = CliRunner().invoke(cli, ["search", "ェイ・キャス", "--index", str(index_path), "--mode", "lexical",
                                   "-k", "2", "--json"])
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)
    assert hits[0]["doc_key"] == "cast" and hits[0]["lexical_match"] == "trigram"


WORDS = ["サッカーシンボル", "東京都庁舎", "ｶﾀｶﾅﾃｷｽﾄ", "ＡＢＣ－１２３", "更科蕎麦", "ラーニングサービス", "😀絵文字",
         "円山川", "豪雪地帯", "「引用」", "は", "の", "、", "。"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.sampled_from(WORDS), min_size=3, max_size=20), data=st.data())
def test_every_substring_of_a_passage_finds_it(searcher_factory, words, data):
    """Property: any 3-12-character substring (normalised) of a passage's text finds that passage."""
    s, texts = searcher_factory
    doc = data.draw(st.sampled_from(sorted(texts)))
    from mitsuke.indexer.japanese import match_text

    norm = match_text(texts[doc])
    start = data.draw(st.integers(0, max(0, len(norm) - 3)))
    frag = norm[start:start + data.draw(st.integers(3, 12))]
    if len(frag) < 3 or any(ch.isspace() for ch in frag):
        return
    hits = s.search(frag, k=50, mode="lexical")
    assert doc in [h.doc_key for h in hits if h.lexical_match in ("trigram", "both")]


@pytest.fixture(scope="module")
def searcher_factory(tmp_path_factory):
    import random

    rng = random.Random(0)
    texts = {f"g{i}": "".join(rng.choice(WORDS) for _ in range(rng.randint(3, 25))) for i in range(30)}
    path = tmp_path_factory.mktemp("prop") / "idx"
    with IndexBuilder.open(path, model="none") as b:
        b.add_documents([{"id": k, "text": v} for k, v in texts.items()])
    with Searcher.open(path) as s:
        yield s, texts


def test_hybrid_search_uses_the_trigram_leg(tmp_path, tiny_embedder):
    path = tmp_path / "hyb"
    with IndexBuilder.open(path, embedder=tiny_embedder) as b:
        b.add_documents(_docs())
    with Searcher.open(path, embedder=tiny_embedder) as s:
        hits = s.search("ッカーシンボ", k=3, mode="hybrid")
        soccer = [h for h in hits if h.doc_key == "soccer"]
        assert soccer and soccer[0].lexical_rank == 1 and soccer[0].lexical_match == "trigram"
        assert all(h.lexical_match is None for h in hits if h.lexical_rank is None)
        assert s.search("ッカーシンボ", k=1, mode="hybrid", fusion="weighted", weights=(0, 1))[0].doc_key == "soccer"
