"""Hybrid fusion: convex-combination math, defaults (built-in, saved, given), `mitsuke tune --save`,
`mitsuke eval --weights`, and the embedder protocol."""
from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import mitsuke
from mitsuke import Embedder, IndexBuilder, Searcher
from mitsuke.cli import cli
from mitsuke.cli.options import EXIT_ERROR, EXIT_USAGE
from mitsuke.indexer.errors import IndexFormatError, ModelError, QueryError
from mitsuke.search import fusion
from mitsuke.search.evaluate import load_queries, score_ranking
from mitsuke.search.fusion import DEFAULT_SETTINGS, FusionSettings, convex, fuse
from mitsuke.search.tune import collect, first_ranks, save_defaults

REPO = Path(__file__).resolve().parent.parent
JSQUAD = REPO.parent / "shared" / "eval" / "jsquad-dev"
# Small jsquad-dev articles (RKBラジオ, 天治, 享保, 打楽器, 位置エネルギー, アムハラ語, ブッダガヤ).
SLICE = ["jsquad-a111914", "jsquad-a151418", "jsquad-a17032", "jsquad-a17450", "jsquad-a18783",
         "jsquad-a1889068", "jsquad-a205453"]


def read_manifest(idx):
    """manifest.json as written on disk."""
    return json.loads((Path(idx) / "manifest.json").read_text(encoding="utf-8"))


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


# --------------------------------------------------------------------------- convex fusion math

def legs_strategy():
    ids = st.lists(st.integers(0, 40), min_size=0, max_size=12, unique=True)
    cos = st.floats(-1, 1, allow_nan=False)
    bm = st.floats(0.01, 50, allow_nan=False)  # a BM25 match scores > 0
    return st.tuples(ids, ids).flatmap(lambda p: st.tuples(
        st.lists(cos, min_size=len(p[0]), max_size=len(p[0])).map(
            lambda s, i=p[0]: sorted(zip(i, s), key=lambda x: (-x[1], x[0]))),
        st.lists(bm, min_size=len(p[1]), max_size=len(p[1])).map(
            lambda s, i=p[1]: sorted(zip(i, s), key=lambda x: (-x[1], x[0])))))


weights_strategy = st.tuples(st.floats(0, 10), st.floats(0, 10)).filter(lambda w: w[0] + w[1] > 1e-3)


@settings(max_examples=50, deadline=None)
@given(legs_strategy(), weights_strategy, st.sampled_from(["tmm", "minmax"]))
def test_convex_scores_lie_in_0_1_cover_the_union_and_are_sorted(legs, w, norm):
    dense, lexical = legs
    out = convex([dense, lexical], w, norm)
    assert {c for c, _ in out} == {c for c, _ in dense} | {c for c, _ in lexical}
    assert all(-1e-12 <= s <= 1 + 1e-12 for _, s in out)
    assert out == sorted(out, key=lambda x: (-x[1], x[0]))


@settings(max_examples=50, deadline=None)
@given(legs_strategy(), weights_strategy, st.floats(0.01, 100), st.sampled_from(["tmm", "minmax"]))
def test_convex_ranking_ignores_the_scale_of_the_weights(legs, w, scale, norm):
    dense, lexical = legs
    a = convex([dense, lexical], w, norm)
    b = convex([dense, lexical], (w[0] * scale, w[1] * scale), norm)
    assert [s for _, s in a] == pytest.approx([s for _, s in b], abs=1e-9)


@settings(max_examples=50, deadline=None)
@given(legs_strategy(), st.sampled_from(["tmm", "minmax"]))
def test_a_leg_with_all_the_weight_decides_the_order(legs, norm):
    dense, lexical = legs
    only_lex = convex([dense, lexical], (0, 1), norm)
    lex_scores = dict(lexical)
    got = [lex_scores[c] for c, _ in only_lex if c in lex_scores]
    assert got == sorted(got, reverse=True)
    if norm == "tmm":  # BM25 > 0 keeps every lexical candidate above those it lacks (min-max maps its last to 0)
        assert sorted(c for c, _ in only_lex[:len(lexical)]) == sorted(lex_scores)
    only_dense = convex([dense, lexical], (1, 0), norm)
    dense_scores = dict(dense)
    got = [dense_scores[c] for c, _ in only_dense if c in dense_scores]
    assert all(a >= b - 1e-12 for a, b in zip(got, got[1:]))


@settings(max_examples=50, deadline=None)
@given(legs_strategy(), weights_strategy, st.floats(0.1, 20), st.floats(-5, 5))
def test_minmax_is_blind_to_affine_rescaling_and_tmm_to_scaling_bm25(legs, w, a, b):
    dense, lexical = legs
    lex_affine = [(c, a * s + b) for c, s in lexical]
    base = convex([dense, lexical], w, "minmax")
    assert [s for _, s in convex([dense, lex_affine], w, "minmax")] == pytest.approx([s for _, s in base], abs=1e-9)
    lex_scaled = [(c, a * s) for c, s in lexical]
    base = convex([dense, lexical], w, "tmm")
    assert [s for _, s in convex([dense, lex_scaled], w, "tmm")] == pytest.approx([s for _, s in base], abs=1e-9)


@settings(max_examples=50, deadline=None)
@given(legs_strategy(), weights_strategy, st.sampled_from(["tmm", "minmax"]), st.floats(0, 1))
def test_raising_a_passage_lexical_score_never_lowers_its_fused_score(legs, w, norm, bump):
    dense, lexical = legs
    if not lexical:
        return
    target = lexical[-1][0]
    hi = lexical[0][1]
    raised = sorted([(c, min(hi, s + bump) if c == target else s) for c, s in lexical], key=lambda x: (-x[1], x[0]))
    before = dict(convex([dense, lexical], w, norm))[target]
    after = dict(convex([dense, raised], w, norm))[target]
    assert after >= before - 1e-12


def test_convex_by_hand_and_the_module_doctests():
    dense = [(1, 0.5), (2, -0.25)]
    lexical = [(2, 8.0), (3, 2.0)]
    got = dict(convex([dense, lexical], (0.25, 0.75), "tmm"))
    # tmm: dense (s + 1) / 1.5, lexical s / 8
    assert got[1] == pytest.approx(0.25 * 1.0)
    assert got[2] == pytest.approx(0.25 * (0.75 / 1.5) + 0.75 * 1.0)
    assert got[3] == pytest.approx(0.75 * 0.25)
    got = dict(convex([dense, lexical], (0.25, 0.75), "minmax"))
    assert (got[1], got[2], got[3]) == pytest.approx((0.25, 0.75, 0.0))
    assert fuse(dense, lexical, "rrf", (1, 1), rrf_k=0)[0] == (2, pytest.approx(1 / 2 + 1 / 1))
    assert doctest.testmod(fusion).failed == 0


def test_settings_are_checked_with_messages_naming_the_field():
    for bad, word in [({"fusion": "max"}, "fusion"), ({"norm": "z"}, "norm"), ({"rrf_k": -1}, "rrf_k"),
                      ({"candidates": 0}, "candidates"), ({"weights": (0, 0)}, "all zero"),
                      ({"rerank": "yes"}, "rerank")]:
        with pytest.raises(QueryError, match=word):
            FusionSettings.from_dict(bad)
    s = FusionSettings.from_dict({"fusion": "rrf", "weights": [0.5, 1], "rrf_k": 10, "tuned": {"x": 1}})
    assert s.weights == (0.5, 1.0) and s.over(DEFAULT_SETTINGS).norm == DEFAULT_SETTINGS.norm


# --------------------------------------------------------------------------- a small real index

@pytest.fixture(scope="module")
def jsq(tmp_path_factory, tiny_model):
    """Seven jsquad-dev articles indexed with the tiny model, and their questions (answer spans)."""
    if not (JSQUAD / "queries.jsonl").exists():
        pytest.skip(f"{JSQUAD} is absent (the shared eval data lives beside the repository)")
    tmp = tmp_path_factory.mktemp("fusion")
    corpus = tmp / "corpus.jsonl"
    with open(JSQUAD / "corpus.jsonl", encoding="utf-8") as src, open(corpus, "w", encoding="utf-8") as dst:
        dst.writelines(line for line in src if json.loads(line)["doc_id"] in SLICE)
    questions = tmp / "questions.jsonl"
    with open(JSQUAD / "queries.jsonl", encoding="utf-8") as src, open(questions, "w", encoding="utf-8") as dst:
        lines = [line for line in src
                 if json.loads(line)["doc_id"] in SLICE and not json.loads(line)["answer_is_title"]]
        dst.writelines(lines[::4])  # ~30 questions, all seven articles: enough to tune, quick to search
    idx = tmp / "idx"
    r = run("index", corpus, "--index", idx, "--model", tiny_model, "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    return idx, questions


def _ranks(hits_per_q, qs):
    out = []
    for hits, q in zip(hits_per_q, qs):
        r = score_ranking(hits, q, (1,)).get("first_span_rank") or 0
        out.append(r if r <= 10 else 0)
    return np.array(out)


def test_tune_scores_each_setting_exactly_as_search_ranks(jsq, tiny_embedder):
    idx, questions = jsq
    qs = load_queries(questions).queries
    grid = [FusionSettings("convex", (0.3, 0.7), 60, "tmm", 20, True),
            FusionSettings("convex", (0.6, 0.4), 60, "minmax", 50, True),
            FusionSettings("rrf", (1.0, 1.0), 60, "tmm", 50, True),
            FusionSettings("rrf", (0.25, 1.0), 5, "tmm", 20, True),
            FusionSettings("weighted", (0.2, 1.0), 60, "tmm", 50, True)]
    with Searcher.open(idx, embedder=tiny_embedder) as s:
        ranks = first_ranks(collect(s, qs, 50), grid)
        for g, row in zip(grid, ranks):
            hits = s.search_batch([q.question for q in qs], k=10, fusion=g.fusion, weights=g.weights,
                                  rrf_k=g.rrf_k, norm=g.norm, candidates=g.candidates)
            assert (_ranks(hits, qs) == row).all(), g.describe()


def test_defaults_come_from_arguments_then_the_index_then_mitsuke(jsq, tiny_embedder, tmp_path):
    idx, _ = jsq
    q = "享保の改革を行った将軍は誰？"
    with Searcher.open(idx, embedder=tiny_embedder) as s:
        assert s.defaults == DEFAULT_SETTINGS
        lexical = [h.chunk_id for h in s.search(q, 5, mode="lexical")]
        dense = [h.chunk_id for h in s.search(q, 5, mode="dense")]
        builtin = [(h.chunk_id, h.score) for h in s.search(q, 5)]
        assert builtin == [(h.chunk_id, h.score) for h in s.search(q, 5, **{
            k: getattr(DEFAULT_SETTINGS, k) for k in ("fusion", "weights", "rrf_k", "norm")})]
    copy = tmp_path / "idx"
    import shutil

    shutil.copytree(idx, copy)
    save_defaults(copy, FusionSettings(fusion="convex", weights=(0.0, 1.0), rrf_k=7))
    with Searcher.open(copy, embedder=tiny_embedder) as s:
        assert s.defaults.weights == (0.0, 1.0) and s.defaults.rrf_k == 7
        assert s.defaults.norm == DEFAULT_SETTINGS.norm  # unsaved fields: mitsuke's
        assert [h.chunk_id for h in s.search(q, 5)][:len(lexical)] == lexical
        assert [h.chunk_id for h in s.search(q, 5, weights=(1, 0))] == dense       # a call overrides the index
    with Searcher.open(copy, embedder=tiny_embedder, weights=(1, 0)) as s:         # and so does open()
        assert [h.chunk_id for h in s.search(q, 5)] == dense
    with Searcher.open(copy, embedder=tiny_embedder, fusion="rrf", rrf_k=0, weights=(1, 1)) as s:
        hits = s.search(q, 5, candidates=30)
        assert hits[0].score == pytest.approx(sum(1 / r for r in (hits[0].dense_rank, hits[0].lexical_rank) if r))
    m = read_manifest(copy)
    m["search_defaults"] = {"fusion": "nope"}
    (copy / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    with pytest.raises(QueryError, match="search_defaults.*fusion"):
        Searcher.open(copy, embedder=tiny_embedder)
    m["search_defaults"] = {"weights": "重み"}  # not two numbers: a damaged manifest
    (copy / "manifest.json").write_text(json.dumps(m, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(IndexFormatError, match="search_defaults"):
        Searcher.open(copy, embedder=tiny_embedder)


def test_tune_save_round_trip_through_the_cli(jsq, tmp_path):
    idx, questions = jsq
    import shutil

    copy = tmp_path / "idx"
    shutil.copytree(idx, copy)
    before = run("info", "--index", copy)
    assert "search      mitsuke's defaults (convex tmm 0.2:0.8)" in before.output
    r = run("tune", "--index", copy, "--queries", questions, "--folds", "3", "--top", "5", "--save")
    assert r.exit_code == 0, r.output
    assert "3-fold cross-validation" in r.output and "lexical only" in r.output and "saved as" in r.output
    saved = read_manifest(copy)["search_defaults"]
    chosen = FusionSettings.from_dict(saved)
    assert saved["tuned"]["questions"] >= 25 and saved["tuned"]["folds"] == 3
    assert f": {chosen.describe()}" in r.output
    # A new setting is recommended only when it won cross-validated.
    if chosen != DEFAULT_SETTINGS:
        assert saved["tuned"]["cv_objective"] > saved["tuned"]["cv_objective_before"]
    else:  # kept: saved as they were, the leg depth still k × 10
        assert "candidates" not in saved and "kept (tuning did not win" in r.output
    info = run("info", "--index", copy)
    assert f"search      {chosen.describe()}" in info.output and "tuned on" in info.output
    assert json.loads(run("info", "--index", copy, "--json").stdout)["search_defaults"] == saved
    # eval now runs with the saved settings, and the same as passing them explicitly.
    ev = json.loads(run("eval", "--index", copy, "--queries", questions, "-k", "1,5,10", "--limit", 12,
                        "--json").stdout)
    assert ev["settings"]["fusion"] == chosen.fusion and ev["settings"]["weights"] == list(chosen.weights)
    explicit = json.loads(run("eval", "--index", idx, "--queries", questions, "-k", "1,5,10", "--limit", 12, "--json",
                              "--fusion", chosen.fusion, "--weights", ",".join(map(str, chosen.weights)),
                              "--rrf-k", chosen.rrf_k, "--norm", chosen.norm,
                              *(["--candidates", chosen.candidates] if chosen.candidates else [])).stdout)
    strip = lambda m: {k: v for k, v in m.items() if not k.startswith("latency")}  # noqa: E731
    assert strip(ev["metrics"]) == strip(explicit["metrics"])


def test_eval_weights_and_fusion_options(jsq):
    idx, questions = jsq
    base = ("eval", "--index", idx, "--queries", questions, "-k", "1,5", "--limit", 12)
    lexical = json.loads(run(*base, "--mode", "lexical", "--json").stdout)
    only_lex = json.loads(run(*base, "--json", "--fusion", "convex", "--weights", "0,1").stdout)
    assert only_lex["settings"]["weights"] == [0.0, 1.0] and only_lex["settings"]["fusion"] == "convex"
    assert only_lex["metrics"]["span_hit@1"] == lexical["metrics"]["span_hit@1"]
    assert only_lex["metrics"]["mrr@10"] == lexical["metrics"]["mrr@10"]
    rrf = json.loads(run(*base, "--json", "--fusion", "rrf", "--weights", "1,1", "--rrf-k", "5").stdout)
    assert rrf["settings"]["rrf_k"] == 5 and rrf["settings"]["fusion"] == "rrf"
    text = run(*base, "--fusion", "rrf", "--rrf-k", "5")
    assert "fusion   rrf k=5 1:1" in text.output
    bad = CliRunner().invoke(cli, ["eval", "--index", str(idx), "--queries", str(questions), "--weights", "1"])
    assert bad.exit_code == 2 and "--weights" in bad.output


# --------------------------------------------------------------------------- the embedder protocol

class HashEmbedder:
    """A custom embedder as the README shows one: character-bigram hashing, unit vectors."""

    class info:  # noqa: N801 - an attribute holding the model description
        name = "ハッシュ-bigram-64"

        @staticmethod
        def to_dict():
            return {"name": "ハッシュ-bigram-64"}  # dim left out: mitsuke fills it in

    dim = 64

    def count_tokens(self, texts):
        return [len(t) for t in texts]

    def encode_documents(self, texts, progress=None):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for a, b in zip(t, t[1:]):
                out[i, hash(a + b) % self.dim] += 1.0
            out[i, 0] += 1e-3
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    encode_queries = encode_documents


def test_a_custom_embedder_through_the_protocol(tmp_path, tiny_embedder):
    assert isinstance(tiny_embedder, Embedder) and isinstance(HashEmbedder(), Embedder)
    assert "Embedder" in mitsuke.__all__ and mitsuke.Embedder is Embedder
    emb = HashEmbedder()
    docs = [{"id": "享保", "text": "享保は日本の元号の一つ。将軍は徳川吉宗。「享保の改革」で知られる。"},
            {"id": "梅雨", "text": "梅雨は、北海道と小笠原諸島を除く日本で見られる雨季の一種である。ｶﾀｶﾅも😀も。"}]
    with IndexBuilder.open(tmp_path / "idx", embedder=emb) as b:
        b.add_documents(docs)
    m = read_manifest(tmp_path / "idx")["model"]
    assert m == {"name": "ハッシュ-bigram-64", "dim": 64, "revision": None, "pooling": "custom", "normalize": True,
                 "max_length": 0, "prompts": {}, "path": None}
    with Searcher.open(tmp_path / "idx", embedder=emb) as s:
        hits = s.search("享保の改革", k=1, mode="dense")
        assert hits[0].doc_key == "享保"
        assert s.search("梅雨", k=2)[0].doc_key == "梅雨"

    class NoQueries:
        info = HashEmbedder.info
        dim = 64

        def count_tokens(self, texts):
            return [len(t) for t in texts]

        def encode_documents(self, texts, progress=None):
            return np.zeros((len(texts), 64), np.float32)

    assert not isinstance(NoQueries(), Embedder)
    with pytest.raises(ModelError, match="lacks encode_queries"):
        IndexBuilder.open(tmp_path / "other", embedder=NoQueries())
    with pytest.raises(ModelError, match="lacks encode_queries"):
        Searcher.open(tmp_path / "idx", embedder=NoQueries())


# --------------------------------------------------------------------------- bad input: one line, no traceback

def _bad(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.output
    return r


def test_tune_and_fusion_options_refuse_bad_input_with_one_line(jsq, tmp_path):
    idx, questions = jsq
    r = _bad("tune", "--index", idx, "--queries", tmp_path / "無い.jsonl")
    assert r.exit_code == EXIT_USAGE and "無い.jsonl" in r.output and "does not exist" in r.output
    bad = tmp_path / "質問.jsonl"
    good = questions.read_text(encoding="utf-8").splitlines()
    bad.write_text("\n".join(good[:3] + ['{"question": "「壊れた」行', "{}"]) + "\n", encoding="utf-8")
    before = (idx / "manifest.json").read_bytes()
    r = _bad("tune", "--index", idx, "--queries", bad, "--save")
    assert r.exit_code == EXIT_ERROR
    assert r.output.strip().count("\n") == 0, r.output  # one line
    assert "質問.jsonl: line 4: invalid JSON" in r.output and "and 1 more bad line" in r.output
    assert (idx / "manifest.json").read_bytes() == before  # nothing saved
    for args in (["--weights", "1"], ["--weights", "a,b"], ["--weights", "-1,1"], ["--weights", "0,0"]):
        r = _bad("eval", "--index", idx, "--queries", questions, *args)
        assert r.exit_code == EXIT_USAGE and f"--weights {args[1]!r}" in r.output, r.output
        r = _bad("search", "享保", "--index", idx, *args)
        assert r.exit_code == EXIT_USAGE and f"--weights {args[1]!r}" in r.output, r.output
    r = _bad("tune", "--index", tmp_path / "no-index", "--queries", questions)
    assert r.exit_code == EXIT_ERROR and "not a mitsuke index" in r.output


def test_tune_json_and_a_lexical_only_index(jsq, tmp_path):
    idx, questions = jsq
    r = run("tune", "--index", idx, "--queries", questions, "--folds", "2", "--json")
    data = json.loads(r.stdout)
    assert data["saved"] is None and data["folds"] == 2 and data["counts"]["scored"] >= 25
    assert {"lexical", "dense", "default", "best", "chosen", "cv_tuned", "cv_default", "top"} <= set(data)
    assert data["default"]["settings"]["fusion"] == "convex" and data["default"]["settings"]["weights"] == [0.2, 0.8]
    lex = tmp_path / "lex"
    with IndexBuilder.open(lex, model="none") as b:
        b.add_documents([{"id": "享保", "text": "享保は日本の元号の一つ。「享保の改革」で知られる。"}])
    r = _bad("tune", "--index", lex, "--queries", questions)
    assert r.exit_code == EXIT_ERROR and "lexical-only" in r.output and r.output.strip().count("\n") == 0
