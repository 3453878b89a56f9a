"""One rule from a mapping to a Document: a JSONL line and IndexBuilder.add_documents agree.

Each row of CASES is a mapping and what it must become: a document (key,
title, source, source_type, metadata) or a failure (a phrase of the reason).
The JSONL loader, ``mitsuke index -`` and ``add_documents`` are each held to
the same row, so they cannot drift apart again. ``{prefix}`` and ``{source}``
stand for the stream's own name: ``<stdin>`` for JSONL on standard input,
``<documents>`` / ``""`` for ``add_documents``.
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mitsuke.cli import cli
from mitsuke.indexer import IndexBuilder
from mitsuke.indexer.documents import RESERVED_KEYS, Document, LoadFailure, document_from_mapping
from mitsuke.indexer.loaders import documents_from_jsonl
from mitsuke.search import Searcher

T = "東京は日本の首都である。"


def doc(key, *, title="", source="{source}", source_type="jsonl", metadata=None, text=T):
    return {"key": key, "title": title, "source": source, "source_type": source_type,
            "metadata": metadata or {}, "text": text}


# (case id, mapping, expected document fields or a phrase of the failure's reason)
CASES = [
    # The five inputs the two paths used to disagree on.
    ("empty id falls back to doc_id", {"id": "", "doc_id": "x", "text": T}, doc("x")),
    ("object id", {"id": {"a": 1}, "text": T}, "'id' must be a string or a number, got dict"),
    ("NUL in text", {"id": "nul", "text": "東京\0です。"}, "NUL"),
    ("source_type is a field", {"id": "md", "text": T, "source_type": "markdown"}, doc("md", source_type="markdown")),
    ("no id: the stream's position", {"text": T}, doc("{prefix}#5")),
    # Keys.
    ("number id", {"id": 7, "text": T}, doc("7")),
    ("float id", {"doc_id": 1.5, "text": T}, doc("1.5")),
    ("boolean id", {"id": True, "text": T}, "'id' must be a string or a number, got bool"),
    ("list id", {"id": ["a"], "text": T}, "got list"),
    ("object doc_id", {"doc_id": {"x": 1}, "text": T}, "'doc_id' must be a string or a number, got dict"),
    ("whitespace id falls back", {"id": " \u3000", "doc_id": "y", "text": T}, doc("y")),
    ("whitespace id alone: position", {"id": "  ", "text": T}, doc("{prefix}#12")),
    ("null id falls back", {"id": None, "doc_id": "z", "text": T}, doc("z")),
    ("id kept exactly", {"id": " ｶﾀｶﾅ/「鍵」😀 ", "text": T}, doc(" ｶﾀｶﾅ/「鍵」😀 ")),
    ("id wins over doc_id", {"id": "first", "doc_id": "second", "text": T}, doc("first")),
    # Text.
    ("non-string text", {"id": "t1", "text": 12}, "'text' must be a string, got int"),
    ("missing text", {"id": "t2"}, "missing or non-string 'text'"),
    ("blank text", {"id": "t3", "text": " \u3000\n"}, "empty"),
    ("binary-looking text", {"id": "t4", "text": "東京" + "\x01\x02\x03" * 20}, "looks binary"),
    ("awkward text kept", {"id": "t5", "text": "「東京『ｶﾀｶﾅ』」１２３😀\r\n" + "長い" * 100},
     doc("t5", text="「東京『ｶﾀｶﾅ』」１２３😀\r\n" + "長い" * 100)),
    # Titles.
    ("number title", {"id": "n1", "text": T, "title": 12}, doc("n1", title="12")),
    ("null title", {"id": "n2", "text": T, "title": None}, doc("n2")),
    ("object title", {"id": "n3", "text": T, "title": {"ja": "東京"}}, "'title' must be a string, got dict"),
    ("boolean title", {"id": "n4", "text": T, "title": False}, "'title' must be a string, got bool"),
    # Source and source_type.
    ("source is a field", {"id": "s1", "text": T, "source": "https://ja.wikipedia.org/wiki/東京"},
     doc("s1", source="https://ja.wikipedia.org/wiki/東京")),
    ("non-string source", {"id": "s2", "text": T, "source": 5}, "'source' must be a string, got int"),
    ("empty source_type", {"id": "s3", "text": T, "source_type": ""}, "'source_type' must be a non-empty string"),
    ("numeric source_type", {"id": "s4", "text": T, "source_type": 3}, "'source_type' must be a non-empty string"),
    # Metadata.
    ("nested metadata kept", {"id": "m1", "text": T, "meta": {"a": [1, {"b": "東京"}]}, "tags": ["旅行"], "n": None},
     doc("m1", metadata={"meta": {"a": [1, {"b": "東京"}]}, "tags": ["旅行"], "n": None})),
    ("loader words are metadata", {"id": "m2", "text": T, "encoding": "cp932", "metadata": {"x": 1}, "key": "k"},
     doc("m2", metadata={"encoding": "cp932", "metadata": {"x": 1}, "key": "k"})),
    ("NaN metadata", {"id": "m3", "text": T, "score": float("nan")}, "metadata must be JSON"),
]
IDS = [c[0] for c in CASES]


def check(got: Document | LoadFailure, expected, *, prefix: str, source: str) -> None:
    if isinstance(expected, str):
        assert isinstance(got, LoadFailure), got
        assert expected in got.reason
        return
    assert isinstance(got, Document), got
    want = {k: v.format(prefix=prefix, source=source) if isinstance(v, str) and k in ("key", "source") else v
            for k, v in expected.items()}
    assert {"key": got.key, "title": got.title, "source": got.source, "source_type": got.source_type,
            "metadata": got.metadata, "text": got.text} == want


def jsonl_lines() -> list[str]:
    return [json.dumps(m, ensure_ascii=False) for _, m, _ in CASES]


@pytest.mark.parametrize("position", range(len(CASES)), ids=IDS)
def test_a_jsonl_line_follows_the_rule(position):
    lines = [""] * position + [jsonl_lines()[position]]  # blank lines keep the line number = the case's position
    [got] = list(documents_from_jsonl(lines, "s"))
    check(got, CASES[position][2], prefix="s", source="s")
    if isinstance(got, LoadFailure):
        assert got.path == f"s:{position + 1}"


@pytest.mark.parametrize("position", range(len(CASES)), ids=IDS)
def test_the_function_follows_the_rule(position):
    _, mapping, expected = CASES[position]
    where = f"<documents>#{position + 1}"
    got = document_from_mapping(mapping, where=where, fallback_key=where)
    check(got, expected, prefix="<documents>", source="")


def stored(path) -> dict[str, dict]:
    """What an index holds for the CASES stream: documents by key (as CASES describes them)."""
    with Searcher.open(path) as s:
        hits = s.search("東京", k=200, mode="lexical")
        kinds = {key: st for st in ("jsonl", "markdown")
                 for key in {h.doc_key for h in s.search("東京", k=200, mode="lexical", where={"source_type": st})}}
    docs = {h.doc_key: {"key": h.doc_key, "title": h.title, "source": h.source, "source_type": kinds[h.doc_key],
                        "metadata": h.metadata, "text": h.text} for h in hits}
    return docs


@pytest.fixture(scope="module")
def both_paths(tmp_path_factory):
    """The CASES stream indexed through `mitsuke index -` (JSONL on stdin) and through add_documents."""
    root = tmp_path_factory.mktemp("parity")
    r = CliRunner().invoke(cli, ["index", "-", "--index", str(root / "jsonl"), "--model", "none", "--json"],
                           input="\n".join(jsonl_lines()) + "\n", catch_exceptions=False)
    jsonl_failed = {int(f["path"].rsplit(":", 1)[1]): f["reason"] for f in json.loads(r.stdout)["failed"]}
    with IndexBuilder.open(root / "python", model="none") as b:
        summary = b.add_documents([m for _, m, _ in CASES])
    python_failed = {int(f["path"].rsplit("#", 1)[1]): f["reason"] for f in summary.failed}
    return (stored(root / "jsonl"), jsonl_failed), (stored(root / "python"), python_failed)


@pytest.mark.parametrize("position", range(len(CASES)), ids=IDS)
def test_cli_jsonl_and_add_documents_store_the_same_document_or_fail_alike(both_paths, position):
    (jsonl_docs, jsonl_failed), (python_docs, python_failed) = both_paths
    expected = CASES[position][2]
    line = position + 1
    if isinstance(expected, str):
        assert expected in jsonl_failed[line] and jsonl_failed[line] == python_failed[line]
        return
    key_j = expected["key"].format(prefix="<stdin>")
    key_p = expected["key"].format(prefix="<documents>")
    check(Document(**jsonl_docs[key_j]), expected, prefix="<stdin>", source="<stdin>")
    check(Document(**python_docs[key_p]), expected, prefix="<documents>", source="")
    assert line not in jsonl_failed and line not in python_failed


def test_both_paths_hold_exactly_the_good_cases(both_paths):
    (jsonl_docs, jsonl_failed), (python_docs, python_failed) = both_paths
    good = sum(not isinstance(e, str) for _, _, e in CASES)
    assert len(jsonl_docs) == len(python_docs) == good
    assert jsonl_failed.keys() == python_failed.keys() == {i + 1 for i, c in enumerate(CASES) if isinstance(c[2], str)}


def test_a_repeated_key_fails_alike_on_both_paths(tmp_path):
    docs = [{"id": "同じ", "text": T}, {"doc_id": "同じ", "text": "大阪は西日本の都市である。"}]
    r = CliRunner().invoke(cli, ["index", "-", "--index", str(tmp_path / "j"), "--model", "none", "--json"],
                           input="".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    with IndexBuilder.open(tmp_path / "p", model="none") as b:
        summary = b.add_documents(docs)
    reasons = [f["reason"] for f in json.loads(r.stdout)["failed"]], [f["reason"] for f in summary.failed]
    assert reasons[0] == reasons[1] == ["duplicate document key '同じ' in this run; kept the first"]


def test_the_reserved_keys_are_documented():
    doc_ = document_from_mapping.__doc__
    assert all(f"``{k}``" in doc_ for k in RESERVED_KEYS)
