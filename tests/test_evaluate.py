"""`mitsuke eval` and search.evaluate: metric definitions, bad input, and agreement
with an independent scorer fed by `mitsuke search --json` on real JSQuAD data."""
from __future__ import annotations

import json
import math
import sqlite3
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from corpus import EVAL_DOCS, write_jsonl
from mitsuke.cli import cli
from mitsuke.search.evaluate import EvalQuery, load_queries, normalize_answer, score_ranking
from mitsuke.search.results import Passage

REPO = Path(__file__).resolve().parent.parent
JSQUAD = REPO.parent / "shared" / "eval" / "jsquad-dev"

# Articles of jsquad-dev small enough for a quick test, with answer_is_title
# questions among them: RKBラジオ, 天治, 享保, 打楽器, 位置エネルギー, アムハラ語, ブッダガヤ.
SLICE = ["jsquad-a111914", "jsquad-a151418", "jsquad-a17032", "jsquad-a17450", "jsquad-a18783",
         "jsquad-a1889068", "jsquad-a205453"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def passage(doc_key: str, start: int, end: int, text: str = "", cid: int = 0) -> Passage:
    return Passage(chunk_id=cid, doc_key=doc_key, title="", text=text or "あ" * (end - start), score=1.0,
                   char_start=start, char_end=end)


# --------------------------------------------------------------------------- metric definitions

def test_span_hit_needs_the_right_document_and_the_whole_span():
    q = EvalQuery("q", "豊岡市の年間降雪量は？", "豊岡市.md", ("312cm",), ((100, 105),))
    ranking = [
        passage("清水建設.txt", 0, 300),        # same offsets, other document: not a hit
        passage("豊岡市.md", 0, 103),           # cuts the span: not a hit
        passage("豊岡市.md", 100, 105),         # exactly the span: a hit at rank 3
    ]
    m = score_ranking(ranking, q, [1, 2, 3], relevant_in_index=1)
    assert (m["span_hit@1"], m["span_hit@2"], m["span_hit@3"]) == (0.0, 0.0, 1.0)
    assert m["first_span_rank"] == 3 and m["mrr@10"] == pytest.approx(1 / 3)
    assert m["ndcg@10"] == pytest.approx(1 / math.log2(4))
    assert m["doc_hit@1"] == 0.0 and m["doc_hit@2"] == 1.0


def test_ndcg_ideal_counts_every_relevant_chunk_of_the_index():
    """Two overlapping chunks hold the span; finding one at rank 1 is not a perfect ranking."""
    q = EvalQuery("q", "享保の改革を行った将軍は？", "享保.txt", ("徳川吉宗",), ((40, 44),))
    ranking = [passage("享保.txt", 0, 60), passage("空港.txt", 0, 60), passage("享保.txt", 30, 90)]
    both = score_ranking(ranking, q, [10], relevant_in_index=2)
    ideal = 1 + 1 / math.log2(3)
    assert both["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / ideal)
    one = score_ranking(ranking[:1], q, [10], relevant_in_index=2)
    assert one["ndcg@10"] == pytest.approx(1 / ideal) and one["mrr@10"] == 1.0
    # A span no chunk contains (cut at a chunk boundary) can never be hit: 0, not a division by zero.
    assert score_ranking(ranking, q, [10], relevant_in_index=0)["ndcg@10"] == 0.0


def test_mrr_ignores_hits_below_rank_10_but_hit_at_20_counts_them():
    q = EvalQuery("q", "電子基準点はどこが設置？", "電子基準点.txt", (), ((5, 8),))
    ranking = [passage("空港.txt", i, i + 10) for i in range(11)] + [passage("電子基準点.txt", 0, 20)]
    m = score_ranking(ranking, q, [10, 20], relevant_in_index=1)
    assert m["first_span_rank"] == 12 and m["span_hit@10"] == 0.0 and m["span_hit@20"] == 1.0
    assert m["mrr@10"] == 0.0 and m["ndcg@10"] == 0.0


@pytest.mark.parametrize("answer, text", [
    ("１２３", "人口は123人である"),            # full-width digits
    ("ｶﾀｶﾅ", "表記はカタカナで書く"),           # half-width katakana
    ("ＡＢＣ", "abc社が創業した"),               # full-width Latin, case
    ("北海道 と 小笠原", "北海道と小笠原諸島"),   # spaces in the answer
    ("小笠原諸島", "北海道と小笠原\u3000諸島"),   # an ideographic space in the text
])
def test_answer_hit_is_lenient(answer, text):
    q = EvalQuery("q", "何？", None, (answer,))
    m = score_ranking([passage("a", 0, len(text), text)], q, [1])
    assert m["answer_hit@1"] == 1.0


def test_blank_answers_are_dropped_rather_than_matching_everything(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text(json.dumps({"question": "梅雨とは？", "answers": ["\u3000", " "], "doc_id": "d"},
                            ensure_ascii=False) + "\n", encoding="utf-8")
    q = load_queries(f).queries[0]
    assert q.answers == ()
    assert "answer_hit@1" not in score_ranking([passage("x", 0, 5, "梅雨 とは")], q, [1])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), max_size=25), st.integers(min_value=0, max_value=30))
def test_metric_ranges_and_monotonicity(flags, extra_relevant):
    """Hit@k never decreases with k; MRR and nDCG stay in [0, 1] and agree on a miss."""
    q = EvalQuery("q", "「東京」の人口は？", "東京", (), ((10, 12),))
    ranking = [passage("東京" if f else "大阪", 0, 20, cid=i) for i, f in enumerate(flags)]
    relevant = sum(flags[:10]) + extra_relevant
    m = score_ranking(ranking, q, [1, 5, 10, 20], relevant_in_index=relevant)
    hits = [m[f"span_hit@{k}"] for k in (1, 5, 10, 20)]
    assert hits == sorted(hits)
    assert 0.0 <= m["mrr@10"] <= 1.0 and 0.0 <= m["ndcg@10"] <= 1.0
    assert (m["mrr@10"] == 0.0) == (m["ndcg@10"] == 0.0) == (not any(flags[:10]))
    if relevant and all(flags[:min(relevant, 10)]) and relevant <= len(flags):
        assert m["ndcg@10"] == pytest.approx(1.0)


def test_normalize_answer_is_nfkc_casefold_without_spaces():
    assert normalize_answer("Ｔｏｋｙｏ　タワー ") == "tokyoタワー"
    assert normalize_answer("\u3000 \t") == ""
    assert normalize_answer("ｶﾞ") == unicodedata.normalize("NFKC", "ｶﾞ") == "ガ"


# --------------------------------------------------------------------------- bad input

def test_bad_lines_are_counted_and_named_never_fatal(tmp_path):
    good = {"qid": "ok", "question": "梅雨とは何季の一種か?", "answers": ["雨季"], "doc_id": "d1",
            "answer_spans": [[3, 5]]}
    lines = [
        json.dumps(good, ensure_ascii=False).encode("utf-8"),                            # 1 ok
        b'{"question": "\xe6\xa2\x85\xe9\x9b\xa8", "answers": [',                       # 2 truncated JSON
        "[\"配列\"]".encode("utf-8"),                                                   # 3 not an object
        json.dumps({**good, "answer_spans": [[5, 3]]}).encode("utf-8"),                  # 4 end before start
        json.dumps({**good, "answer_spans": [["1", 2]]}).encode("utf-8"),                # 5 string offset
        json.dumps({**good, "question": "　"}, ensure_ascii=False).encode("utf-8"),      # 6 blank question
        json.dumps({"question": "答えのない質問"}, ensure_ascii=False).encode("utf-8"),  # 7 nothing to score
        '{"question": "ｶﾀｶﾅの質問", "answers": ["カナ"]}'.encode("cp932"),              # 8 CP932, not UTF-8
        b"",                                                                           # blank: ignored
        json.dumps({**good, "qid": "ok2", "answers": "雨季"}, ensure_ascii=False).encode("utf-8"),  # 10 bare str
        json.dumps({**good, "doc_id": {"x": 1}}).encode("utf-8"),                        # 11 doc_id object
    ]
    f = tmp_path / "q.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")  # BOM on the first line
    qs = load_queries(f)
    assert [q.qid for q in qs] == ["ok", "ok2"]
    assert qs.queries[1].answers == ("雨季",)
    assert qs.skipped == {"bad_json": 2, "bad_fields": 4, "no_question": 1, "no_answer_fields": 1}
    assert qs.lines == 10
    named = {p.split(":")[0] for p in qs.problems}
    assert named == {f"line {n}" for n in (2, 3, 4, 5, 6, 7, 8, 11)}


def _small_index(tmp_path) -> Path:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", EVAL_DOCS)
    idx = tmp_path / "idx"
    assert run("index", corpus, "--index", idx, "--model", "none").exit_code == 0
    return idx


def test_cli_reports_bad_lines_and_still_scores_the_good_ones(tmp_path):
    idx = _small_index(tmp_path)
    f = tmp_path / "q.jsonl"
    f.write_text("\n".join([
        json.dumps({"question": "梅雨はどこで見られない？", "answers": ["小笠原諸島"], "doc_id": "梅雨",
                    "answer_spans": [[8, 13]]}, ensure_ascii=False),
        "{not json",
        json.dumps({"question": "享保の将軍は？", "answers": ["徳川吉宗"], "doc_id": "存在しない文書",
                    "answer_spans": [[15, 19]]}, ensure_ascii=False),
        json.dumps({"question": "享保とは何か", "answers": ["享保"], "doc_id": "享保", "answer_is_title": True},
                   ensure_ascii=False),
    ]) + "\n", encoding="utf-8")
    r = run("eval", "--index", idx, "--queries", f, "-k", "1,5", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["skipped"] == {"bad_json": 1, "doc_not_in_index": 1}
    assert out["problems"] == ["line 2: invalid JSON: Expecting property name enclosed in double quotes at column 2"]
    # The missing document's question still has answers: answer hit counts it, span and doc hit do not.
    assert out["counts"] == {"lines": 4, "scored": 2, "span": 1, "answer": 2, "doc": 1, "title_questions": 1,
                             "span_unreachable": 0}
    assert out["metrics"]["span_hit@1"] == 1.0 and out["metrics"]["answer_hit@1"] == 1.0
    assert out["title_questions"] == {"n": 1, "doc_hit@1": 1.0, "doc_hit@5": 1.0}
    assert out["settings"]["mode"] == "lexical" and out["settings"]["ks"] == [1, 5]

    limited = json.loads(run("eval", "--index", idx, "--queries", f, "--limit", "1", "--json").stdout)
    assert limited["counts"]["scored"] == 1 and limited["settings"]["limit"] == 1

    table = run("eval", "--index", idx, "--queries", f, "-k", "1,5")
    assert table.exit_code == 0
    assert "span hit" in table.stdout and "bad_json 1" in table.stdout and "line 2: invalid JSON" in table.stdout


def test_questions_for_another_corpus_fail_with_a_clear_message(tmp_path):
    idx = _small_index(tmp_path)
    f = tmp_path / "q.jsonl"
    f.write_text(json.dumps({"question": "空港とは？", "answers": ["空港"], "doc_id": "空港.txt",
                             "answer_spans": [[0, 2]]}, ensure_ascii=False) + "\n", encoding="utf-8")
    r = run("eval", "--index", idx, "--queries", f)
    assert r.exit_code != 0
    assert "'空港.txt'" in r.output and "document key" in r.output


@pytest.mark.parametrize("ks", ["0,5", "1,x", ","])
def test_bad_cutoffs_are_usage_errors(tmp_path, ks):
    idx = _small_index(tmp_path)
    f = tmp_path / "q.jsonl"
    f.write_text(json.dumps({"question": "梅雨", "answers": ["雨季"]}, ensure_ascii=False) + "\n", encoding="utf-8")
    r = run("eval", "--index", idx, "--queries", f, "-k", ks)
    assert r.exit_code == 2 and "-k" in r.output


# --------------------------------------------------------------------------- the independent check

def _independent_scores(hits_by_q: list[tuple[dict, list[dict]]], chunks_by_doc: dict[str, list[tuple[int, int]]],
                        ks: list[int]) -> tuple[dict, dict, dict, dict]:
    """Score `mitsuke search --json` output from first principles (eval README definitions).

    Written separately from mitsuke.search.evaluate on purpose: only the JSON search
    output, the question file and the index's own chunk table go in.
    """
    def norm(s):
        return "".join(unicodedata.normalize("NFKC", s).casefold().split())

    span_rows, ans_rows, doc_rows, title_rows = [], [], [], []
    ranks = {}
    for q, hits in hits_by_q:
        doc, spans = q.get("doc_id"), [tuple(s) for s in q.get("answer_spans") or []]
        answers = [norm(a) for a in q.get("answers") or [] if norm(a)]
        def is_rel(h):
            return h["doc_key"] == doc and any(h["char_start"] <= a and b <= h["char_end"] for a, b in spans)
        span_rank = next((h["rank"] for h in hits if is_rel(h)), None)
        doc_rank = next((h["rank"] for h in hits if h["doc_key"] == doc), None)
        ans_rank = next((h["rank"] for h in hits if any(a in norm(h["text"]) for a in answers)), None)
        if q.get("answer_is_title"):  # scored apart, on the document only
            ranks[q["qid"]] = (None, None, doc_rank)
            title_rows.append(doc_rank)
            continue
        ranks[q["qid"]] = (span_rank if spans else None, ans_rank if answers else None, doc_rank)
        doc_rows.append(doc_rank)
        if answers:
            ans_rows.append(ans_rank)
        if spans:
            n_rel = sum(1 for a, b in chunks_by_doc[doc] if any(a <= s and e <= b for s, e in spans))
            gains = [1 if is_rel(h) else 0 for h in hits if h["rank"] <= 10]
            dcg = sum(g / math.log2(r + 1) for r, g in enumerate(gains, 1))
            idcg = sum(1 / math.log2(r + 1) for r in range(1, min(n_rel, 10) + 1))
            span_rows.append((span_rank, dcg / idcg if idcg else 0.0))

    def hit_rate(rows, k):
        return sum(1.0 if r is not None and r <= k else 0.0 for r in rows) / len(rows)

    metrics = {}
    for k in ks:
        metrics[f"span_hit@{k}"] = hit_rate([r for r, _ in span_rows], k)
    for k in ks:
        metrics[f"answer_hit@{k}"] = hit_rate(ans_rows, k)
    for k in ks:
        metrics[f"doc_hit@{k}"] = hit_rate(doc_rows, k)
    metrics["mrr@10"] = sum(1.0 / r if r is not None and r <= 10 else 0.0 for r, _ in span_rows) / len(span_rows)
    metrics["ndcg@10"] = sum(n for _, n in span_rows) / len(span_rows)
    title = {"n": len(title_rows), **{f"doc_hit@{k}": hit_rate(title_rows, k) for k in ks}}
    counts = {"span": len(span_rows), "answer": len(ans_rows), "doc": len(doc_rows), "title_questions": len(title_rows)}
    return metrics, title, counts, ranks


@pytest.mark.slow
def test_eval_agrees_exactly_with_an_independent_scorer_of_search_json(tmp_path):
    if not (JSQUAD / "queries.jsonl").exists():
        pytest.skip(f"{JSQUAD} is absent (the shared eval data lives beside the repository)")
    corpus = tmp_path / "corpus.jsonl"
    with open(JSQUAD / "corpus.jsonl", encoding="utf-8") as src, open(corpus, "w", encoding="utf-8") as dst:
        dst.writelines(line for line in src if json.loads(line)["doc_id"] in SLICE)
    questions = [json.loads(line) for line in open(JSQUAD / "queries.jsonl", encoding="utf-8")]
    questions = [q for q in questions if q["doc_id"] in SLICE]
    assert len(questions) > 100 and any(q["answer_is_title"] for q in questions)
    qfile = tmp_path / "queries.jsonl"
    qfile.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions), encoding="utf-8")

    idx = tmp_path / "idx"
    # Small overlapping chunks, so that some answer spans sit in two chunks (nDCG's R > 1).
    r = run("index", corpus, "--index", idx, "--model", "none", "--max-chars", "120", "--overlap", "40", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["added"] == len(SLICE), r.output

    ks = [1, 3, 5, 10, 20]
    per_query = tmp_path / "per_query.jsonl"
    r = run("eval", "--index", idx, "--queries", qfile, "-k", ",".join(map(str, ks)), "--mode", "lexical",
            "--per-query", per_query, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)

    with sqlite3.connect(idx / "meta.sqlite") as db:
        chunks_by_doc: dict[str, list[tuple[int, int]]] = {}
        for key, start, end in db.execute(
                "SELECT d.key, c.char_start, c.char_end FROM chunks c JOIN documents d ON c.doc_id = d.id"):
            chunks_by_doc.setdefault(key, []).append((start, end))
    hits_by_q = []
    for q in questions:
        out = run("search", q["question"], "--index", idx, "-k", "20", "--mode", "lexical", "--json")
        assert out.exit_code == 0, out.output
        hits_by_q.append((q, json.loads(out.stdout)))
    metrics, title, counts, ranks = _independent_scores(hits_by_q, chunks_by_doc, ks)

    got = {k: v for k, v in report["metrics"].items() if not k.startswith("latency")}
    assert got == metrics                      # exactly, not approximately
    assert report["title_questions"] == title
    assert {k: report["counts"][k] for k in counts} == counts
    assert report["counts"]["scored"] == counts["doc"] == len(questions) - title["n"]
    rows = [json.loads(line) for line in per_query.read_text(encoding="utf-8").splitlines()]
    assert {row["qid"]: (row.get("first_span_rank"), row.get("first_answer_rank"), row["first_doc_rank"])
            for row in rows} == ranks
    assert any((row["relevant_in_index"] or 0) > 1 for row in rows)
    # The data is hard enough somewhere: not every question is a hit at 1.
    assert 0.3 < metrics["span_hit@1"] < 1.0 and metrics["span_hit@20"] > metrics["span_hit@1"]
    assert report["counts"]["span_unreachable"] == sum(
        1 for q in questions if q["answer_spans"] and not q["answer_is_title"]
        and not any(a <= s and e <= b for a, b in chunks_by_doc[q["doc_id"]] for s, e in q["answer_spans"]))


@pytest.mark.parametrize("backend", ["directory", "postgresql"])
def test_eval_runs_dense_and_hybrid_on_a_model_index_and_records_the_settings(tmp_path, tiny_model, backend, request):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", EVAL_DOCS)
    idx = tmp_path / "idx"
    if backend == "postgresql":  # the same commands with --index URL (the query node caches under $MITSUKE_CACHE)
        idx = request.getfixturevalue("pg_server").url(schema="t_eval_" + tmp_path.name[-8:].lower().replace("-", "_"))
    assert run("index", corpus, "--index", idx, "--model", tiny_model, "--device", "cpu").exit_code == 0
    f = tmp_path / "q.jsonl"
    f.write_text(json.dumps({"qid": "1", "question": "享保の将軍は誰？", "answers": ["徳川吉宗"], "doc_id": "享保",
                             "answer_spans": [[15, 19]]}, ensure_ascii=False) + "\n", encoding="utf-8")
    hybrid = json.loads(run("eval", "--index", idx, "--queries", f, "-k", "1,2", "--json").stdout)
    assert hybrid["settings"]["mode"] == "hybrid" and hybrid["settings"]["rerank"] is True
    assert hybrid["settings"]["fusion"] == "convex" and hybrid["settings"]["model"] == str(tiny_model)
    assert hybrid["metrics"]["doc_hit@2"] == 1.0  # two documents, depth 10: it is always found
    dense = json.loads(run("eval", "--index", idx, "--queries", f, "--mode", "dense", "--no-rerank",
                           "--json").stdout)
    assert dense["settings"]["mode"] == "dense" and dense["settings"]["rerank"] is False
    assert "fusion" not in dense["settings"] and dense["counts"]["span"] == 1
