"""A folder of hostile files indexes: every bad file reported with its reason, every good one searchable.

Runs through the real IndexBuilder (lexical-only, ``model="none"``) and the real
Searcher in lexical mode: real SQLite, FTS5 and MeCab.
"""
from __future__ import annotations

import codecs
import json
import os
from pathlib import Path

import pytest

from mitsuke.indexer import IndexBuilder
from mitsuke.indexer.chunking import Chunker
from mitsuke.indexer.config import ChunkConfig
from mitsuke.indexer.loaders import Document, LoadFailure, iter_documents
from mitsuke.search import Searcher

# name -> (bytes, a query that only this document answers)
GOOD: dict[str, tuple[bytes, str]] = {
    "utf8.txt": ("豊岡市はコウノトリの郷として知られる。".encode("utf-8"), "コウノトリの郷"),
    "sjis.txt": ("更科蕎麦は信州の名物である。\r\nそば粉を使う。".encode("cp932"), "更科蕎麦"),
    "eucjp.txt": ("円山川は但馬地方を流れる一級河川である。".encode("euc_jp"), "一級河川"),
    "bom.md": (codecs.BOM_UTF8 + "# 清水建設\n\n清水建設はスーパーゼネコンの一つである。".encode("utf-8"), "スーパーゼネコン"),
    "utf16.txt": ("電子基準点は国土地理院が設置している。".encode("utf-16"), "国土地理院"),
    "cr-only.txt": ("一行目の文章。\r天体暦は天体の位置を記す。\r三行目。".encode("cp932"), "天体暦"),
    "hankaku.txt": ("ﾊﾝｶｸｶﾀｶﾅのﾃｷｽﾄで打楽器を説明する。".encode("cp932"), "打楽器"),
    "emoji.txt": ("核酸塩基の話😀👍🏽。🧬を使うと楽しい！".encode("utf-8"), "核酸塩基"),
    "page.html": ('<html><head><meta charset="euc-jp"><title>ブッダガヤ</title><script>var s="隠れた文字";</script>'
                  "</head><body><p>ブッダガヤは仏教の聖地である。</p></body></html>".encode("euc_jp"), "仏教の聖地"),
    "long-line.txt": (("享保の改革は徳川吉宗が行った。" * 20000).encode("utf-8"), "徳川吉宗"),  # 300k chars, one line
}


def build_hostile(root: Path) -> dict[str, str]:
    """Writes the folder; returns bad file name -> expected word in its reason."""
    root.mkdir()
    for name, (data, _) in GOOD.items():
        (root / name).write_bytes(data)
    lines = [json.dumps({"id": "jl-1", "text": "空港は航空機が離着陸する場所である。", "kind": "施設"}, ensure_ascii=False),
             "{broken json",
             json.dumps({"id": "jl-3", "title": "本文なし"}, ensure_ascii=False)]
    (root / "docs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    (root / "nul.txt").write_bytes("途中にNULがある。".encode("utf-8") + b"\x00" + "続き。".encode("utf-8"))
    (root / "empty.txt").write_bytes(b"")
    (root / "blank.md").write_bytes(" \n\t\r\n\u3000\n".encode("utf-8"))
    (root / "undecodable.txt").write_bytes(bytes([0x80, 0x81, 0xFF, 0xFE, 0x85]) * 40)
    (root / "bad-bom.txt").write_bytes(codecs.BOM_UTF8 + b"\xff\xfe\xfd\xfc")
    os.symlink(root / "does-not-exist.txt", root / "broken.txt")
    os.symlink("self-loop.txt", root / "self-loop.txt")
    sub = root / "sub"
    sub.mkdir()
    (sub / "nested.txt").write_text("北史は中国の歴史書である。", encoding="utf-8")
    os.symlink(root, sub / "loop")  # a directory link back to the root
    bad = {"binary.txt": "NUL", "nul.txt": "NUL", "empty.txt": "empty", "blank.md": "empty",
           "undecodable.txt": "undecodable", "bad-bom.txt": "byte-order mark", "broken.txt": "broken symlink",
           "self-loop.txt": "symlink loop", "loop": "symlink loop", "docs.jsonl:2": "invalid JSON",
           "docs.jsonl:3": "text"}
    if os.path.exists("/proc/self/mem"):  # unreadable even for root (tests may run as root)
        os.symlink("/proc/self/mem", root / "io-error.txt")
        bad["io-error.txt"] = "cannot read"
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "pipe.txt")  # opening it for reading would hang the run
        bad["pipe.txt"] = "FIFO"
    return bad


def test_hostile_folder_indexes_every_good_file_and_reports_every_bad_one(tmp_path):
    root = tmp_path / "hostile"
    bad = build_hostile(root)
    idx = tmp_path / "idx"
    with IndexBuilder.open(idx, "none") as b:
        summary = b.add_paths([root])
    reported = {Path(f["path"]).name: f["reason"] for f in summary.failed}
    assert set(reported) == set(bad), summary.failed
    for name, word in bad.items():
        assert word in reported[name], (name, reported[name])
    assert summary.added == len(GOOD) + 2  # + docs.jsonl line 1 + sub/nested.txt

    originals = {d.key: d.text for d in iter_documents([root]) if isinstance(d, Document)}
    assert "ﾊﾝｶｸｶﾀｶﾅのﾃｷｽﾄ" in originals["hankaku.txt"] and "\r" in originals["cr-only.txt"]
    with Searcher.open(idx) as s:
        for name, (_, query) in GOOD.items():
            hits = s.search(query, k=3, mode="lexical")
            assert hits and hits[0].doc_key == name, (name, query, [h.doc_key for h in hits])
            assert query in hits[0].text
            # The stored passage is the original text at its offsets (never normalised).
            assert hits[0].text == originals[name][hits[0].char_start:hits[0].char_end]
        assert s.search("航空機", k=1, mode="lexical")[0].doc_key == "jl-1"
        assert s.search("中国の歴史書", k=1, mode="lexical")[0].doc_key == "sub/nested.txt"
        assert not s.search("隠れた文字", k=3, mode="lexical")  # script text is not visible text

    # Encodings were detected and recorded per document.
    docs = {d.key: d for d in iter_documents([root]) if isinstance(d, Document)}
    assert {k: docs[k].encoding for k in ("utf8.txt", "sjis.txt", "eucjp.txt", "bom.md", "utf16.txt", "page.html")} \
        == {"utf8.txt": "utf-8", "sjis.txt": "cp932", "eucjp.txt": "euc_jp", "bom.md": "utf-8-sig",
            "utf16.txt": "utf-16", "page.html": "euc_jp"}
    assert docs["page.html"].title == "ブッダガヤ"
    # Re-running finds everything unchanged and reports the same failures again.
    with IndexBuilder.open(idx, "none") as b:
        again = b.add_paths([root])
    assert again.unchanged == summary.added and again.added == 0
    assert len(again.failed) == len(bad)


def test_fifty_megabyte_single_line_loads_and_chunks_exactly(tmp_path):
    unit = "豊岡市は兵庫県の北部に位置する市で、円山川が流れる「コウノトリの郷」として知られる。"
    n = 50_000_000 // len(unit.encode("utf-8")) + 1
    (tmp_path / "big.txt").write_bytes((unit * n).encode("utf-8"))
    [doc] = list(iter_documents([tmp_path]))
    assert isinstance(doc, Document) and len(doc.text) == len(unit) * n and "\n" not in doc.text
    chunks = Chunker(ChunkConfig()).chunk(doc.text)
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(doc.text)
    for a, b in zip(chunks, chunks[1:]):
        assert a.char_end == b.char_start  # no overlap configured, no whitespace: contiguous
        assert a.token_count <= ChunkConfig().max_chars
    for c in chunks[:: max(1, len(chunks) // 200)]:
        assert doc.text[c.char_start:c.char_end] == c.text and c.text.endswith("。")


def test_bad_inputs_never_raise(tmp_path):
    """Each path given directly (not through a folder) also yields failures, never exceptions."""
    root = tmp_path / "hostile"
    build_hostile(root)
    items = []
    for p in sorted(root.iterdir()):
        items += list(iter_documents([p]))
    failures = [i for i in items if isinstance(i, LoadFailure)]
    assert {Path(f.path).name for f in failures} >= {"binary.txt", "nul.txt", "empty.txt", "broken.txt",
                                                      "self-loop.txt", "undecodable.txt"}
    assert all(f.reason for f in failures)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_fifo_given_directly_is_reported(tmp_path):
    os.mkfifo(tmp_path / "p.txt")
    [f] = list(iter_documents([tmp_path / "p.txt"]))
    assert isinstance(f, LoadFailure) and "not a regular file" in f.reason
