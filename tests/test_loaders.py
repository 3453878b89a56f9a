"""Loaders: Japanese encodings, HTML, JSONL, globs, and every kind of bad input as a LoadFailure."""
from __future__ import annotations

import codecs
import io
import json
import os

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mitsuke.indexer.errors import LoadError
from mitsuke.indexer.loaders import Document, LoadFailure, decode_bytes, documents_from_jsonl, html_to_text, iter_documents

SAMPLES = [
    "豊岡市は兵庫県の北部に位置する市である。",
    "ｶﾀｶﾅのﾃｷｽﾄです。",  # half-width katakana: the classic CP932/EUC-JP trap
    "「更科蕎麦」とは何ですか？（信州）",
    "表示・能力・ソフト",  # CP932 trail byte 0x5C ("\\") cases
    "日本語の文章。\r\n二行目\r三行目",
    "東京",
    "①②③ ㈱ ～ 髙橋",  # NEC/IBM extensions only CP932 has
]


def docs_and_failures(items):
    docs = [i for i in items if isinstance(i, Document)]
    failures = [i for i in items if isinstance(i, LoadFailure)]
    return docs, failures


# --------------------------------------------------------------------------- decoding

@pytest.mark.parametrize("text", SAMPLES)
@pytest.mark.parametrize("encoding, expected", [
    ("utf-8", "utf-8"), ("utf-8-sig", "utf-8-sig"), ("utf-16", "utf-16"), ("cp932", "cp932"), ("euc_jp", "euc_jp"),
])
def test_decode_detects_japanese_encodings(text, encoding, expected):
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError:
        pytest.skip(f"{text!r} has characters {encoding} lacks")
    decoded, used = decode_bytes(data, "x.txt")
    assert decoded == text
    if expected == "cp932" and text.isascii():
        return
    assert used == expected


def test_decode_utf16_without_bom_when_it_reads_as_japanese():
    data = "豊岡市の気候について説明します。".encode("utf-16-le")
    assert decode_bytes(data, "x.txt") == ("豊岡市の気候について説明します。", "utf-16-le")


def test_decode_forced_encoding_and_its_errors():
    data = "更科蕎麦".encode("cp932")
    assert decode_bytes(data, "x.txt", "shift_jis") == ("更科蕎麦", "shift_jis")
    with pytest.raises(LoadError, match="cannot decode as utf-8"):
        decode_bytes(data, "x.txt", "utf-8")
    with pytest.raises(LoadError, match="unknown encoding 'klingon'"):
        decode_bytes(data, "x.txt", "klingon")


@pytest.mark.parametrize("data, reason", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "NUL bytes"),
    (codecs.BOM_UTF8 + b"\xff\xfe\xfd", "byte-order mark"),
    (bytes([0x80, 0x81, 0xFF, 0xFE, 0x85]) * 40, "undecodable"),
])
def test_decode_rejects_binary_and_garbage(data, reason):
    with pytest.raises(LoadError, match=reason) as info:
        decode_bytes(data, "bad.txt")
    assert info.value.path == "bad.txt"


WORDS = ["豊岡市", "は", "兵庫県", "の", "北部", "に", "位置する", "市", "である", "、", "。", "「", "」", "（", "）",
         "ｶﾀｶﾅ", "ﾃｷｽﾄ", "です", "ます", "東京", "大阪", "を", "が", "１２３", "2024年", "表示", "能力", "ソフト", "ー"]


@settings(max_examples=60, deadline=None)
@given(words=st.lists(st.sampled_from(WORDS), min_size=3, max_size=60),
       encoding=st.sampled_from(["utf-8", "cp932", "euc_jp", "utf-16"]))
def test_decode_round_trips_generated_japanese(words, encoding):
    # Real Japanese prose always has hiragana; a few kana-less words alone
    # (EUC-JP "豊岡市ｶﾀｶﾅ" is also valid CP932 "ﾋｭｲｬｻﾔ叱実") can be told apart by no detector.
    text = "".join(words) + "について書いた文章です。"
    data = text.encode(encoding)
    if encoding != "utf-8":
        # Valid UTF-8 wins by design: a mostly-ASCII legacy string such as
        # EUC-JP "2024年" (…C7 AF) is also valid UTF-8 ("2024ǯ") and cannot be told apart.
        try:
            data.decode("utf-8")
            assume(False)
        except UnicodeDecodeError:
            pass
    decoded, used = decode_bytes(data, "x.txt")
    assert decoded == text, used


# --------------------------------------------------------------------------- HTML

def test_html_visible_text_and_title():
    html = """<!doctype html><html><head><meta charset="utf-8"><title> 豊岡市 &amp; 但馬 </title>
    <style>p { color: red }</style><script>var x = "隠す";</script></head>
    <body><h1>豊岡市</h1><p>円山川が<b>流れる</b>。<br>二行目</p><noscript>見えない</noscript>
    <svg><text>図</text></svg><ul><li>一</li><li>二</li></ul></body></html>"""
    text, title = html_to_text(html)
    assert title == "豊岡市 & 但馬"
    assert text == "豊岡市\n円山川が流れる。\n二行目\n一\n二"


def test_html_without_closing_head_still_shows_the_body():
    text, title = html_to_text("<html><head><title>題</title><body><p>本文です。</p>")
    assert (text, title) == ("本文です。", "題")


def test_html_file_declared_charset(tmp_path):
    page = '<html><head><meta charset="Shift_JIS"><title>ｶﾅ</title></head><body>ｶﾀｶﾅのﾍﾟｰｼﾞ</body></html>'
    (tmp_path / "page.html").write_bytes(page.encode("cp932"))
    [doc] = list(iter_documents([tmp_path]))
    assert (doc.text, doc.title, doc.encoding, doc.source_type) == ("ｶﾀｶﾅのﾍﾟｰｼﾞ", "ｶﾅ", "shift_jis", "html")


# --------------------------------------------------------------------------- JSONL

def test_jsonl_fields_metadata_and_bad_lines():
    lines = [
        "\ufeff" + json.dumps({"id": "a", "text": "東京の天気。", "title": "天気", "lang": "ja", "n": 3}),
        json.dumps({"doc_id": 7, "text": "大阪の天気。"}),
        json.dumps({"text": "名前のない文書。"}),
        "{not json",
        json.dumps(["a list"]),
        json.dumps({"id": "b"}),
        json.dumps({"id": "c", "text": 12}),
        json.dumps({"id": "d", "text": "  \u3000\n"}),
        "",
        json.dumps({"id": "e", "text": "ｶﾀｶﾅ😀"}, ensure_ascii=False),
    ]
    docs, failures = docs_and_failures(list(documents_from_jsonl([ln.encode("utf-8") for ln in lines], "in.jsonl")))
    assert [(d.key, d.text, d.title) for d in docs] == [
        ("a", "東京の天気。", "天気"), ("7", "大阪の天気。", ""), ("in.jsonl#3", "名前のない文書。", ""), ("e", "ｶﾀｶﾅ😀", "")]
    assert docs[0].metadata == {"lang": "ja", "n": 3} and docs[1].metadata == {}
    assert all(d.source_type == "jsonl" for d in docs)
    reasons = {f.path: f.reason for f in failures}
    assert set(reasons) == {"in.jsonl:4", "in.jsonl:5", "in.jsonl:6", "in.jsonl:7", "in.jsonl:8"}
    assert "invalid JSON" in reasons["in.jsonl:4"]
    assert "object" in reasons["in.jsonl:5"]
    assert "missing" in reasons["in.jsonl:6"] and "string" in reasons["in.jsonl:7"]
    assert "empty" in reasons["in.jsonl:8"]


def test_jsonl_line_in_another_encoding_is_detected():
    line = json.dumps({"id": "s", "text": "シフトJISの行です。"}, ensure_ascii=False).encode("cp932")
    [doc] = list(documents_from_jsonl([line], "x.jsonl"))
    assert (doc.text, doc.encoding) == ("シフトJISの行です。", "cp932")


def test_stdin_jsonl():
    data = (json.dumps({"id": "x", "text": "標準入力から。"}, ensure_ascii=False) + "\n").encode("utf-8")
    [doc] = list(iter_documents(["-"], stdin=io.BytesIO(data)))
    assert (doc.key, doc.source) == ("x", "<stdin>")


# --------------------------------------------------------------------------- files and folders

def write(path, content, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
    return path


def test_keys_are_relative_paths_and_encodings_are_recorded(tmp_path):
    write(tmp_path / "a.txt", "ユーティーエフ。")
    write(tmp_path / "sub" / "b.txt", "シフトジス。", "cp932")
    write(tmp_path / "sub" / "deeper" / "c.md", "# 見出し\nイーユーシー。", "euc_jp")
    write(tmp_path / "sub" / "d.jsonl", json.dumps({"text": "ジェイソン。"}, ensure_ascii=False))
    write(tmp_path / "notes.log", "無視される。")  # an unknown suffix
    docs, failures = docs_and_failures(list(iter_documents([tmp_path])))
    assert not failures
    assert {d.key: d.encoding for d in docs} == {
        "a.txt": "utf-8", "sub/b.txt": "cp932", "sub/deeper/c.md": "euc_jp", "sub/d.jsonl#1": "utf-8"}
    assert {d.key: d.source_type for d in docs}["sub/deeper/c.md"] == "markdown"
    [single] = list(iter_documents([tmp_path / "sub" / "b.txt"]))
    assert single.key == "b.txt" and single.title == "b"


def test_include_and_exclude_globs(tmp_path):
    for name in ("a.txt", "b.md", "keep/c.txt", "drop/d.txt", "drop/e.md", "x.log"):
        write(tmp_path / name, f"{name}の本文。")
    keys = lambda **kw: sorted(d.key for d in iter_documents([tmp_path], **kw))  # noqa: E731
    assert keys() == ["a.txt", "b.md", "drop/d.txt", "drop/e.md", "keep/c.txt"]
    assert keys(include=("*.md",)) == ["b.md", "drop/e.md"]
    assert keys(exclude=("drop/*",)) == ["a.txt", "b.md", "keep/c.txt"]
    assert keys(exclude=("drop",)) == ["a.txt", "b.md", "keep/c.txt"]
    assert keys(include=("*.log", "*.txt"), exclude=("keep/*",)) == ["a.txt", "drop/d.txt", "x.log"]


def test_forced_encoding_applies_to_every_file(tmp_path):
    write(tmp_path / "a.txt", "シフトジス。", "cp932")
    write(tmp_path / "b.txt", "ユーティーエフ。")
    docs, failures = docs_and_failures(list(iter_documents([tmp_path], encoding="cp932")))
    assert [d.key for d in docs] == ["a.txt"] and docs[0].encoding == "cp932"
    assert [f.path for f in failures] == [str(tmp_path / "b.txt")] and "cp932" in failures[0].reason
    with pytest.raises(LoadError, match="unknown encoding"):
        list(iter_documents([tmp_path], encoding="nope"))


def test_symlinks_loops_and_missing_paths(tmp_path):
    write(tmp_path / "real" / "a.txt", "本物の文書。")
    os.symlink(tmp_path / "real", tmp_path / "real" / "loop")  # a directory linking to itself
    os.symlink(tmp_path / "nowhere.txt", tmp_path / "real" / "broken.txt")
    os.symlink("self.txt", tmp_path / "real" / "self.txt")  # a link to itself
    os.symlink(tmp_path / "real" / "a.txt", tmp_path / "real" / "alias.txt")
    docs, failures = docs_and_failures(list(iter_documents([tmp_path / "real", tmp_path / "missing"])))
    assert sorted(d.key for d in docs) == ["a.txt", "alias.txt"]
    reasons = {os.path.basename(f.path): f.reason for f in failures}
    assert "symlink loop" in reasons["loop"]
    assert "broken symlink" in reasons["broken.txt"]
    assert "symlink loop" in reasons["self.txt"]
    assert "no such file" in reasons["missing"]


@pytest.mark.skipif(os.name != "posix", reason="FIFOs are POSIX")
def test_fifo_is_reported_not_read(tmp_path):
    os.mkfifo(tmp_path / "pipe.txt")  # opening it would block forever
    write(tmp_path / "ok.txt", "大丈夫。")
    docs, failures = docs_and_failures(list(iter_documents([tmp_path])))
    assert [d.key for d in docs] == ["ok.txt"]
    assert [os.path.basename(f.path) for f in failures] == ["pipe.txt"] and "FIFO" in failures[0].reason


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read a chmod 000 file")
def test_unreadable_file_by_permissions(tmp_path):
    p = write(tmp_path / "secret.txt", "読めない。")
    p.chmod(0)
    try:
        [failure] = list(iter_documents([tmp_path]))
        assert isinstance(failure, LoadFailure) and "cannot read" in failure.reason
    finally:
        p.chmod(0o644)


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux /proc")
def test_unreadable_file_even_for_root(tmp_path):
    # Reading /proc/self/mem at offset 0 fails with EIO for every user, root included.
    os.symlink("/proc/self/mem", tmp_path / "io-error.txt")
    write(tmp_path / "ok.txt", "読める。")
    docs, failures = docs_and_failures(list(iter_documents([tmp_path])))
    assert [d.key for d in docs] == ["ok.txt"]
    assert len(failures) == 1 and failures[0].reason.startswith("cannot read")
