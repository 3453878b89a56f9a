"""The whole path, through the CLI and the library, on the demo corpus."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from corpus import DEMO_QUESTIONS, data_texts
from mitsuke.cli import cli
from mitsuke.indexer import IndexBuilder
from mitsuke.search import Searcher


def run(*args, input=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)
    return result


def test_lexical_cli_finds_the_document_a_question_is_about(tmp_path, data_dir):
    idx = tmp_path / "idx"
    r = run("index", data_dir, "--index", idx, "--model", "none", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["added"] == 16 and summary["failed"] == [] and summary["chunks_embedded"] == 0

    r = run("search", "豊岡市の年間平均降雪量はどれくらい？", "--index", idx, "--mode", "lexical", "-k", "3", "--json")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["doc_key"] == "豊岡市.md"
    assert "312cm" in hits[0]["text"]
    texts = data_texts()
    for h in hits:
        assert texts[h["doc_key"]][h["char_start"]:h["char_end"]] == h["text"]
        assert {"score", "title", "chunk_id", "metadata"} <= h.keys()


@pytest.mark.parametrize("question, expected", DEMO_QUESTIONS)
def test_lexical_questions_rank_their_document_first(index_factory, data_dir, question, expected):
    with Searcher.open(index_factory(paths=[data_dir])) as s:
        hits = s.search(question, k=3)
    assert hits[0].doc_key == expected


def test_reindex_skips_unchanged_documents(tmp_path, data_dir):
    idx = tmp_path / "idx"
    run("index", data_dir, "--index", idx, "--model", "none")
    r = run("index", data_dir, "--index", idx, "--json")  # the index remembers its model
    summary = json.loads(r.stdout)
    assert (summary["added"], summary["unchanged"]) == (0, 16)


def test_dense_cli_with_local_model_directory(tmp_path, data_dir, tiny_model):
    idx = tmp_path / "idx"
    r = run("index", data_dir, "--index", idx, "--model", tiny_model, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    info = json.loads(run("info", "--index", idx, "--json").stdout)
    assert summary["chunks_embedded"] == info["chunks"] > 16
    assert info["dim"] == 64 and info["ann"]["kind"] == "flat" and info["documents"] == 16
    assert info["model"]["pooling"] == "lasttoken"
    assert info["files"]["vectors.f16"] == info["chunks"] * 64 * 2

    r = run("search", "豊岡市の気候", "--index", idx, "--mode", "dense", "-k", "5", "--json")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    assert len(hits) == 5
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    texts = data_texts()
    for h in hits:
        assert texts[h["doc_key"]][h["char_start"]:h["char_end"]] == h["text"]

    r = run("search", "豊岡市の気候", "--index", idx, "-k", "5", "--json")  # hybrid by default
    assert r.exit_code == 0 and len(json.loads(r.stdout)) == 5


def test_dense_search_finds_a_passage_by_its_own_text(tmp_path, tiny_embedder):
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate([
        "東京は日本の首都である。人口は約千四百万人。",
        "大阪は西日本の中心都市で、食い倒れの街として知られる。",
        "更科蕎麦は蕎麦の実の中心部だけを挽いた白い蕎麦である。",
        "ｶﾀｶﾅと全角１２３が混じる文書😀。",
    ])]
    with IndexBuilder.open(tmp_path / "idx", model="tiny", embedder=tiny_embedder) as b:
        b.add_documents(docs)
    s = Searcher.open(tmp_path / "idx", embedder=tiny_embedder)
    for d in docs:
        hit = s.search(d["text"], k=1, mode="dense")[0]
        assert hit.doc_key == d["id"]
        assert hit.score == pytest.approx(1.0, abs=2e-3)  # float16 storage
    q = tiny_embedder.encode_queries(["蕎麦"])[0]
    allv = tiny_embedder.encode_documents([d["text"] for d in docs])
    expected = [docs[i]["id"] for i in np.argsort(-(allv @ q))]
    assert [h.doc_key for h in s.search("蕎麦", k=4, mode="dense")] == expected


def test_lexical_only_index_refuses_dense_search(tmp_path, data_dir):
    run("index", data_dir, "--index", tmp_path / "idx", "--model", "none")
    r = CliRunner().invoke(cli, ["search", "空港", "--index", str(tmp_path / "idx"), "--mode", "dense"])
    assert r.exit_code == 1
    assert "lexical-only" in r.output and "Traceback" not in r.output


def test_help_explains_every_command_with_an_example():
    for cmd in ([], ["index"], ["search"], ["info"], ["eval"], ["chunk"]):
        r = run(*cmd, "--help")
        assert r.exit_code == 0
        assert "Example" in r.output
    assert "--no-rerank" in run("search", "--help").output
    assert "--prune" in run("index", "--help").output


def test_overlap_is_checked_against_the_budget_in_use(tmp_path, data_dir):
    # Characters without a model: 300 of 1000 is fine even though it exceeds max_tokens.
    r = run("index", data_dir, "--index", tmp_path / "ok", "--model", "none", "--max-chars", "1000",
            "--overlap", "300", "--json")
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["index", str(data_dir), "--index", str(tmp_path / "bad"), "--model", "none",
                                 "--max-chars", "200", "--overlap", "300"])
    assert r.exit_code != 0
    assert "overlap (300) must be smaller than the chunk budget (200 characters)" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "bad" / "manifest.json").exists()
