"""Japanese BM25: two-character words, katakana words, width variants and numbers on a known corpus."""
from __future__ import annotations

import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mitsuke.indexer import IndexBuilder
from mitsuke.indexer.japanese import lexical_terms, passage_terms
from mitsuke.search import Searcher
from mitsuke.search.filters import compile_where
from mitsuke.search.lexical import MAX_QUERY_TERMS, bm25_search, fts_query

CORPUS = {
    "tokyo": ("東京", "東京は日本の首都で、人口は約千四百万人である。"),
    "kyoto": ("京都", "京都には千年の都の寺が多い。東の市場は古い。"),
    "kyoto-tower": ("塔", "京都タワーは駅前に立つ。"),
    "pc": ("計算機", "ｺﾝﾋﾟｭｰﾀｰは半角カナで書かれた。"),
    "pc-full": ("計算機2", "コンピューターの歴史を全角で書く。"),
    "abc": ("英字", "ＡＢＣ社は全角英字の会社名で、ＩＢＭとは違う。"),
    "nums": ("数字", "この駅の乗降客数は１２３４５人、開業は2019年。"),
    "live": ("住居", "彼は大阪に住んでいた。"),
    "soba": ("蕎麦", "更科蕎麦は白い。更級日記とは別物である。"),
    "quote": ("引用", "彼は「東京タワーに行こう」と言った。"),
}


@pytest.fixture(scope="module")
def lexical(tmp_path_factory):
    path = tmp_path_factory.mktemp("lex") / "idx"
    with IndexBuilder.open(path, model="none") as b:
        b.add_documents([{"id": k, "title": t, "text": x} for k, (t, x) in CORPUS.items()])
    with Searcher.open(path) as s:
        yield s


def keys(hits):
    return [h.doc_key for h in hits]


@pytest.mark.parametrize("query, must, must_not", [
    ("東京", {"tokyo", "quote"}, {"kyoto", "kyoto-tower"}),        # two-character word, not 東 + 京
    ("京都", {"kyoto", "kyoto-tower"}, {"tokyo"}),
    ("タワー", {"kyoto-tower", "quote"}, set()),                    # katakana word inside a compound
    ("コンピューター", {"pc", "pc-full"}, set()),                     # half-width text, full-width query
    ("ｺﾝﾋﾟｭｰﾀｰ", {"pc", "pc-full"}, set()),                          # and the other way round
    ("abc", {"abc"}, set()),                                        # full-width ＡＢＣ, ASCII query
    ("ＩＢＭ", {"abc"}, set()),
    ("12345", {"nums"}, set()),                                     # full-width digits
    ("２０１９年", {"nums"}, set()),
    ("住む", {"live"}, set()),                                      # inflected verb by its lemma
    ("更級", {"soba"}, set()),                                      # not conflated by reading (サラシナ)
])
def test_lexical_recall_on_a_known_corpus(lexical, query, must, must_not):
    got = set(keys(lexical.search(query, k=10, mode="lexical")))
    assert must <= got
    assert not (must_not & got)


def test_homophones_are_not_conflated(lexical):
    # 更科 and 更級 share the reading サラシナ; a lemma-based term would match both equally.
    hits = lexical.search("更科", k=10, mode="lexical")
    assert keys(hits) == ["soba"]
    assert "更科" in lexical_terms("更科蕎麦") and "サラシナ" not in lexical_terms("更科蕎麦")


def test_title_terms_reach_passages(lexical):
    hits = lexical.search("住居", k=3, mode="lexical")  # only in the title of "live"
    assert keys(hits) == ["live"]
    assert passage_terms("本文", "題名", ("見出し",)) == ["本文", "題名", "見出し"]


def test_bm25_ranks_more_matching_terms_first(lexical):
    hits = lexical.search("京都タワーは駅前", k=5, mode="lexical")
    assert hits[0].doc_key == "kyoto-tower"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.lexical_rank == r for r, h in enumerate(hits, 1))


def test_filtered_lexical_returns_k_when_k_match(tmp_path):
    # 60 documents all mention 東京; the 5 with group=rare are the weakest matches.
    docs = [{"id": f"d{i:02d}", "text": "東京" * (1 + i % 4) + "の話。" + "東京タワー。" * (i % 3),
             "group": "common"} for i in range(55)]
    docs += [{"id": f"r{i}", "text": "長い前置きの後、最後に一度だけ東京と書く。" + "他の話題。" * 20, "group": "rare"}
             for i in range(5)]
    with IndexBuilder.open(tmp_path / "idx", model="none") as b:
        b.add_documents(docs)
    with Searcher.open(tmp_path / "idx") as s:
        everything = s.search("東京", k=100, mode="lexical")
        assert len(everything) == 60
        want = [h.chunk_id for h in everything if h.metadata["group"] == "rare"]
        for k in (1, 3, 5, 9):
            got = s.search("東京", k=k, mode="lexical", where={"group": "rare"})
            assert [h.chunk_id for h in got] == want[:k]
        with s.store.snapshot() as snap:
            flt = compile_where({"doc_key": "r*"})
            assert [c for c, _ in bm25_search(snap, "東京", 2, flt)] == want[:2]


def test_queries_are_quoted_terms():
    assert fts_query("は、が、を") in (None, '"が"')
    assert fts_query("") is None and fts_query("   ") is None
    q = fts_query('東京 NEAR("a" b) terms:foo ^x -y z*')
    assert q is not None
    for part in q.split(" OR "):
        assert part.startswith('"') and part.endswith('"')
    many = " ".join(f"語{i}" for i in range(MAX_QUERY_TERMS * 2))
    assert fts_query(many).count(" OR ") <= MAX_QUERY_TERMS - 1


def _fullwidth(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_lexical_terms_are_normalised_words(text):
    terms = lexical_terms(text)
    for t in terms:
        assert t and not any(ch.isspace() for ch in t)
        assert t == unicodedata.normalize("NFKC", t)
    assert lexical_terms(unicodedata.normalize("NFKC", text)) == terms  # analysis is width-blind


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet="abcXYZ019-.@ 東京カタカナ", max_size=30))
def test_full_and_half_width_forms_give_the_same_terms(text):
    assert lexical_terms(_fullwidth(text)) == lexical_terms(text)


def test_common_terms_are_pruned_without_changing_the_ranking(tmp_path):
    # する/ある are in every passage: their BM25 idf is clamped to ~0, so leaving them out
    # of the MATCH must give the same passages in the same order.
    docs = [{"id": f"d{i:02d}", "text": f"これは{'東京' if i % 3 == 0 else '大阪'}にある。{'京都' * (i % 4)}を見物する。"}
            for i in range(40)]
    with IndexBuilder.open(tmp_path / "idx", model="none") as b:
        b.add_documents(docs)
    with Searcher.open(tmp_path / "idx") as s, s.store.snapshot() as snap:
        for q in ("東京にある店を見物する", "京都にする", "する", "ある東京", "大阪"):
            for k in (1, 5, 13, 40):
                pruned = bm25_search(snap, q, k)
                full = bm25_search(snap, q, k, n_docs=0)  # n_docs=0: no pruning
                assert [c for c, _ in pruned] == [c for c, _ in full]
                assert [sc for _, sc in pruned] == pytest.approx([sc for _, sc in full], abs=1e-4)
