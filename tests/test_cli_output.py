"""The human-readable output of `mitsuke index`, `info` and `eval`, exactly (as simonw/llm tests its CLI).

Only what changes from run to run or machine to machine is masked: seconds,
latencies and temporary paths. File sizes are not masked: they are checked
against the files themselves.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from corpus import DATA, EVAL_DOCS, write_jsonl
from mitsuke.cli import cli
from mitsuke.indexer.loaders import SUFFIXES


def run(*args, input=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)
    return result


def seconds_masked(text: str) -> str:
    return re.sub(r"in \d+\.\d s$", "in S s", text, flags=re.M)


def file_lines(index: Path) -> str:
    """The size table ``info`` must print, from the index directory's files themselves.

    ``info``'s own connection opens the SQLite write-ahead log, empty, while it
    looks; closing removes it again.
    """
    sizes = {n: (index / n).stat().st_size for n in ("manifest.json", "meta.sqlite") if (index / n).exists()}
    sizes["meta.sqlite-wal"] = 0
    sizes.update({n: (index / n).stat().st_size for n in ("vectors.f16", "ann.faiss") if (index / n).exists()})
    return "".join(f"  {n:<18}{size:>12,} bytes\n" for n, size in sizes.items())


def test_index_summary_is_one_line_and_failures_go_to_stderr(tmp_path):
    idx = tmp_path / "idx"
    r = run("index", DATA, "--index", idx, "--model", "none")
    assert r.exit_code == 0
    assert seconds_masked(r.stdout) == (
        "added 16, updated 0, unchanged 0, deleted 0, failed 0; 51 chunks indexed (lexical-only) in S s\n")
    assert r.stderr == ""

    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "東京.txt").write_text("東京は日本の首都である。", encoding="utf-8")
    (extra / "壊れた.txt").write_bytes(b"\x00\x01\x02binary")
    (extra / "ｼﾌﾄJIS.txt").write_bytes("半角ｶﾀｶﾅと「括弧」の文書。".encode("cp932"))
    (extra / "図.png").write_bytes(b"\x89PNG\r\n")
    r = run("index", extra, DATA, "--index", idx)
    assert r.exit_code == 3  # some inputs failed; the others are committed
    assert seconds_masked(r.stdout) == (
        "added 2, updated 0, unchanged 16, deleted 0, failed 1; 2 chunks indexed (lexical-only) in S s\n")
    reason = "contains NUL bytes: a binary file (or UTF-16 without a byte-order mark: force it with --encoding utf-16-le)"
    # each bad file once; files passed over for their suffix counted
    assert r.stderr == (
        f"mitsuke: ignored 1 file(s) by suffix (1 .png); readable: {' '.join(sorted(SUFFIXES))} "
        "(or name them with --include)\n"
        f"failed: {extra / '壊れた.txt'}: {reason}\n"
        "mitsuke: 1 input(s) failed; the other documents were committed (exit status 3)\n")

    r = run("index", extra, "--index", idx, "--prune")
    assert r.exit_code == 3
    assert seconds_masked(r.stdout) == (
        "added 0, updated 0, unchanged 2, deleted 16, failed 1; 0 chunks indexed (lexical-only) in S s\n")


def test_info_of_a_lexical_index(tmp_path):
    idx = tmp_path / "idx"
    assert run("index", DATA, "--index", idx, "--model", "none").exit_code == 0
    r = run("info", "--index", idx)
    assert r.exit_code == 0
    assert r.stdout == (
        f"index       {idx}\n"
        "documents   16\n"
        "chunks      51\n"
        "model       none (lexical-only)\n"
        "generation  1\n"
        + file_lines(idx))
    assert "meta.sqlite " in r.stdout


def test_info_of_a_dense_index(tmp_path, tiny_model):
    idx = tmp_path / "idx"
    r = run("index", DATA, "--index", idx, "--model", tiny_model, "--device", "cpu")
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    assert re.fullmatch(rf"embedding with {re.escape(str(tiny_model))} on cpu \(float32, \w+ attention, "
                        r"batches of up to [\d,]+ tokens\)", lines[0])
    assert re.fullmatch(r"to embed: ~[\d,]+ tokens in 16 documents at ~[\d,]+ tokens/s "
                        r"\(a guess for this model on cpu\) ≈ \d+s", lines[1])
    assert len(lines) == 2  # no third-party progress bar (CliRunner's stderr is not a terminal: no bar of ours)
    chunks = json.loads(run("info", "--index", idx, "--json").stdout)["chunks"]
    assert seconds_masked(r.stdout) == (
        f"added 16, updated 0, unchanged 0, deleted 0, failed 0; {chunks} chunks embedded in S s\n")
    r = run("info", "--index", idx)
    assert r.stdout == (
        f"index       {idx}\n"
        "documents   16\n"
        f"chunks      {chunks}\n"
        f"model       {tiny_model} (dim 64)\n"
        "ann         kind flat, nbits 8, nprobe 1\n"
        "generation  1\n"
        "search      mitsuke's defaults (convex tmm 0.2:0.8)\n"  # hybrid settings: none saved (mitsuke tune --save)
        + file_lines(idx))
    assert "vectors.f16" in r.stdout and "ann.faiss" in r.stdout


@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalout")
    idx = root / "idx"
    assert run("index", write_jsonl(root / "corpus.jsonl", EVAL_DOCS), "--index", idx, "--model", "none").exit_code == 0
    queries = write_jsonl(root / "q.jsonl", [
        {"qid": "1", "question": "梅雨はどこで見られない？", "answers": ["小笠原諸島"], "doc_id": "梅雨",
         "answer_spans": [[8, 13]]},
        {"qid": "2", "question": "享保の将軍は誰？", "answers": ["徳川吉宗"], "doc_id": "享保", "answer_spans": [[15, 19]]},
        {"qid": "3", "question": "ｶﾀｶﾅの雨季😀", "answers": ["雨季"], "doc_id": "梅雨"},
        {"qid": "4", "question": "享保とは何か", "answers": ["享保"], "doc_id": "享保", "answer_is_title": True},
    ])
    with open(queries, "a", encoding="utf-8") as fh:
        fh.write("{壊れた行\n")
    return idx, queries


def latency_masked(text: str) -> str:
    return re.sub(r"p50 \d+\.\d\d ms  p95 \d+\.\d\d ms", "p50 X ms  p95 X ms", text)


def test_eval_table(eval_setup):
    idx, queries = eval_setup
    r = run("eval", "--index", idx, "--queries", queries, "-k", "1,5")
    assert r.exit_code == 0, r.output
    assert latency_masked(r.stdout) == (
        f"index    {idx}  (lexical-only)\n"
        f"queries  {queries}: 5 lines, 3 scored, 1 answer_is_title scored apart\n"
        "mode     lexical  depth 10\n"
        "\n"
        "                   n       @1       @5\n"
        "span hit           2   1.0000   1.0000\n"
        "answer hit         3   1.0000   1.0000\n"
        "doc hit            3   1.0000   1.0000\n"
        "MRR@10             2   1.0000\n"
        "nDCG@10            2   1.0000\n"
        "title doc hit      1   1.0000   1.0000\n"
        "latency  p50 X ms  p95 X ms\n"
        "skipped  bad_json 1\n"
        "  line 5: invalid JSON: Expecting property name enclosed in double quotes at column 2\n")


def test_eval_table_with_a_limit_and_without_rerank(eval_setup):
    idx, queries = eval_setup
    r = run("eval", "--index", idx, "--queries", queries, "-k", "1", "--limit", "1", "--no-rerank")
    assert r.exit_code == 0, r.output
    lines = latency_masked(r.stdout).splitlines()
    assert lines[:5] == [
        f"index    {idx}  (lexical-only)",
        f"queries  {queries}: 5 lines, 1 scored",
        "mode     lexical  depth 10  limit 1",
        "",
        "                   n       @1",
    ]
