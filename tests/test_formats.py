"""PDF (with page numbers), Word and CSV/TSV inputs, written here with reportlab and python-docx.

Runs through the real loaders, IndexBuilder (lexical-only), SQLite/FTS5, MeCab
and Searcher. Every hostile file is reported by name and the rest indexed.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from jadocs import jis_text, write_image_pdf, write_many_pages_pdf, write_pdf
from mitsuke.cli import cli
from mitsuke.indexer import IndexBuilder
from mitsuke.indexer.chunking import Chunker
from mitsuke.indexer.config import ChunkConfig
from mitsuke.indexer.formats import FormatOptions
from mitsuke.indexer.formats.pdf import extract_pdf, join_cjk_lines
from mitsuke.indexer.loaders import Document, LoadFailure, iter_documents
from mitsuke.indexer.pages import pages_of
from mitsuke.indexer.store import MetadataStore
from mitsuke.search import Searcher

REPO = Path(__file__).resolve().parent.parent
ANSWER = "コウノトリの人工巣塔は円山川の河口近くの湿地に立っている。"
HEADER = "令和8年度 豊岡市広報 第12号"


def _page_bodies() -> list[str]:
    texts = [jis_text(p.read_text(encoding="utf-8")) for p in sorted((REPO / "data").glob("*.txt"))]
    bodies = [t[:520] for t in texts[:5]]
    bodies[0] = "ﾊﾝｶｸｶﾀｶﾅの見出しとＡＢＣ１２３の全角英数字、「括弧」と（丸括弧）。\n" + bodies[0]
    bodies[2] = bodies[2][:300] + "\n" + ANSWER + "\n" + bodies[2][300:]
    return bodies


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, list[list[str]]]:
    root = tmp_path_factory.mktemp("formats")
    drawn = write_pdf(root / "広報.pdf", _page_bodies(), header=HEADER, footer="- {page} -")
    _write_docx(root / "議事録.docx")
    data = (root / "広報.pdf").read_bytes()
    (root / "truncated.pdf").write_bytes(data[:len(data) // 2])
    return root, drawn


def _write_docx(path: Path) -> None:
    import docx

    d = docx.Document()
    d.add_paragraph("市議会議事録", style="Title")
    d.add_heading("豊岡市議会", level=1)
    d.add_heading("気候対策", level=2)
    d.add_paragraph("冬季の積雪に備えて除雪車を三台追加することが決まった。")
    table = d.add_table(rows=2, cols=3)
    for i, cells in enumerate((("地区", "除雪車", "予算"), ("日高町", "２台", "１２００万円"))):
        for j, value in enumerate(cells):
            table.cell(i, j).text = value
    d.add_heading("交通", level=2)
    d.add_paragraph("# で始まる本文は見出しではない。")
    d.add_paragraph("但馬空港と伊丹空港を結ぶ便は一日二往復である。")
    d.save(str(path))


@pytest.fixture(scope="module")
def index(folder, tmp_path_factory):
    root, _ = folder
    idx = tmp_path_factory.mktemp("idx") / "index"
    with IndexBuilder.open(idx, model="none") as b:
        summary = b.add_paths([str(root)])
    return idx, summary


def _loaded(root: Path) -> dict[str, Document]:
    return {d.key: d for d in iter_documents([str(root)]) if isinstance(d, Document)}


# --------------------------------------------------------------------------- PDF

def test_folder_indexes_pdf_and_docx_and_reports_the_truncated_pdf(index, folder):
    _, summary = index
    assert summary.added == 2
    assert [f["path"] for f in summary.failed] == [str(folder[0] / "truncated.pdf")]
    assert "truncated" in summary.failed[0]["reason"]


def test_answer_on_page_3_is_cited_as_page_3_with_exact_text(index, folder):
    idx, _ = index
    doc = _loaded(folder[0])["広報.pdf"]
    with Searcher.open(idx) as s:
        hits = s.search("コウノトリの人工巣塔はどこにある", k=3, mode="lexical")
        ctx = s.retrieve_context("コウノトリの人工巣塔はどこにある", k=1, mode="lexical", neighbors=1)
    top = hits[0]
    assert top.doc_key == "広報.pdf" and top.pages == (3, 3)
    assert ANSWER in top.text
    assert top.text == doc.text[top.char_start:top.char_end]
    assert top.to_dict()["pages"] == [3, 3]
    c = ctx[0].citation  # grown by a neighbour on either side: pages 2-4
    assert c.pages is not None and c.pages[0] <= 3 <= c.pages[1] and c.pages != (3, 3)
    assert c.pages == pages_of(doc.page_starts, c.char_start, c.char_end)
    assert "p" in ctx.render() and ctx.render().startswith("[1] ")


def test_retrievers_carry_the_page_in_metadata(index):
    from mitsuke.search.langchain import MitsukeRetriever as LangChainRetriever
    from mitsuke.search.llamaindex import MitsukeRetriever as LlamaRetriever

    with Searcher.open(index[0]) as s:
        doc = LangChainRetriever(searcher=s, k=1, mode="lexical").invoke("コウノトリの人工巣塔")[0]
        node = LlamaRetriever(s, k=1, mode="lexical").retrieve("コウノトリの人工巣塔")[0]
    assert doc.metadata["pages"] == [3, 3] and node.node.metadata["pages"] == [3, 3]
    assert "pages" in node.node.excluded_llm_metadata_keys  # for the program, not the prompt


def test_cli_search_line_and_json_show_the_page(index):
    idx, _ = index
    runner = CliRunner()
    out = runner.invoke(cli, ["search", "コウノトリの人工巣塔", "--index", str(idx), "--mode", "lexical", "-k", "1"])
    assert out.exit_code == 0, out.output
    assert "[広報.pdf " in out.output and " p.3]" in out.output
    out = runner.invoke(cli, ["search", "コウノトリの人工巣塔", "--index", str(idx), "--mode", "lexical", "-k", "1",
                              "--json"])
    assert json.loads(out.stdout)[0]["pages"] == [3, 3]


def test_extracted_pages_equal_the_drawn_text_without_headers_and_footers(folder):
    root, drawn = folder
    pdf = extract_pdf(root / "広報.pdf")
    assert len(pdf.pages) == 5 and pdf.dropped_lines == 10
    for n, (page, lines) in enumerate(zip(pdf.pages, drawn), 1):
        assert "".join(page.split()) == "".join("".join(lines).split())
        assert HEADER not in page and f"- {n} -" not in page
    # Lines cut mid-word are joined: no line break between two Japanese characters.
    for page, lines in zip(pdf.pages, drawn):
        for a, b in zip(lines, lines[1:]):
            if a[-1] not in "。" and not a[-1].isascii() and not b[0].isascii():
                assert a[-3:] + b[:3] in page


def test_every_passage_is_exact_against_the_extracted_documents(folder):
    docs = _loaded(folder[0])
    chunker = Chunker(ChunkConfig(max_chars=120))
    for doc in docs.values():
        for c in chunker.chunk(doc.text, markdown=doc.has_headings, breaks=doc.page_starts):
            assert doc.text[c.char_start:c.char_end] == c.text
            if doc.page_starts:  # a passage never spans two pages
                first, last = pages_of(doc.page_starts, c.char_start, c.char_end)
                assert 1 <= first == last <= len(doc.page_starts)


def test_join_cjk_lines_keeps_sentence_ends_and_latin_breaks():
    assert join_cjk_lines("円山\n川が流れる。\n次の文。") == "円山川が流れる。\n次の文。"
    assert join_cjk_lines("全長は\n68km") == "全長は68km"
    assert join_cjk_lines("Amartya\nSen") == "Amartya\nSen"


def test_two_column_page_in_column_order_is_read_in_order(tmp_path):
    body = _page_bodies()[1]
    drawn = write_pdf(tmp_path / "two.pdf", [body], layouts=["two-column"])
    page = extract_pdf(tmp_path / "two.pdf").pages[0]
    assert "".join(page.split()) == "".join("".join(drawn[0]).split())


def test_vertical_page_is_read_column_by_column(tmp_path):
    body = _page_bodies()[3]
    drawn = write_pdf(tmp_path / "tate.pdf", [body, _page_bodies()[4]], layouts=["vertical", "lines"])
    pages = extract_pdf(tmp_path / "tate.pdf").pages
    for page, lines in zip(pages, drawn):
        assert "".join(page.split()) == "".join("".join(lines).split())


def test_owner_password_only_pdf_loads_and_user_password_pdf_is_reported(tmp_path):
    from reportlab.lib.pdfencrypt import StandardEncryption

    write_pdf(tmp_path / "locked.pdf", ["秘密の会議資料です。"], encrypt="secret")
    write_pdf(tmp_path / "print-protected.pdf", ["印刷だけ禁止された公開資料です。"],
              encrypt=StandardEncryption("", ownerPassword="owner", canPrint=0))
    items = list(iter_documents([str(tmp_path)]))
    failures = {Path(i.path).name: i.reason for i in items if isinstance(i, LoadFailure)}
    docs = {i.key: i for i in items if isinstance(i, Document)}
    assert list(failures) == ["locked.pdf"] and "password" in failures["locked.pdf"]
    assert "".join(docs["print-protected.pdf"].text.split()) == "印刷だけ禁止された公開資料です。"


def test_image_only_and_damaged_pdfs_are_reported(tmp_path):
    write_image_pdf(tmp_path / "scan.pdf")
    (tmp_path / "garbage.pdf").write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\n")
    (tmp_path / "notpdf.pdf").write_text("これはPDFではない。", encoding="utf-8")
    failures = {Path(i.path).name: i.reason for i in iter_documents([str(tmp_path)])}
    assert "no text layer" in failures["scan.pdf"] and "OCR" in failures["scan.pdf"]
    assert "damaged" in failures["garbage.pdf"]
    assert "not a PDF" in failures["notpdf.pdf"]


def test_ten_thousand_page_pdf_is_refused_quickly_by_the_page_limit(tmp_path):
    path = tmp_path / "huge.pdf"
    write_many_pages_pdf(path, 10_000)
    tracemalloc.start()
    t0 = time.perf_counter()
    items = list(iter_documents([str(path)]))
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(items) == 1 and isinstance(items[0], LoadFailure)
    assert "10,000 pages" in items[0].reason and "--pdf-max-pages" in items[0].reason
    assert seconds < 5 and peak < 20 * 2**20


def test_large_pdf_is_read_a_page_at_a_time(tmp_path):
    """2,000 pages under a raised limit: extracted in full, peak memory far from the file's scale."""
    path = tmp_path / "big.pdf"
    write_many_pages_pdf(path, 2_000)
    code = ("import resource, sys; from mitsuke.indexer.formats.pdf import extract_pdf; "
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "r = extract_pdf(sys.argv[1], max_pages=2000); "
            "print(len(r.pages), sum(map(len, r.pages)), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    pages, chars, grown_kib = map(int, out.stdout.split())
    assert pages == 2000 and chars == 2000 * len("第一頁から最終頁まで同じ本文です。")
    assert grown_kib < 150 * 1024


# --------------------------------------------------------------------------- DOCX

def test_docx_headings_become_heading_paths_and_tables_rows(index, folder):
    doc = _loaded(folder[0])["議事録.docx"]
    assert doc.title == "市議会議事録" and doc.source_type == "docx"
    assert "# 豊岡市議会\n## 気候対策\n" in doc.text
    assert "地区 | 除雪車 | 予算\n日高町 | ２台 | １２００万円" in doc.text
    assert "\\# で始まる本文は見出しではない。" in doc.text  # escaped: not a heading
    chunks = Chunker(ChunkConfig(max_chars=60)).chunk(doc.text, markdown=doc.has_headings)
    by_text = {c.text: c.headings for c in chunks}
    assert any("日高町" in t and h == ("豊岡市議会", "気候対策") for t, h in by_text.items())
    assert any("但馬空港" in t and h == ("豊岡市議会", "交通") for t, h in by_text.items())
    with Searcher.open(index[0]) as s:
        hit = s.search("除雪車の予算", k=1, mode="lexical")[0]
    assert hit.doc_key == "議事録.docx" and hit.pages is None and hit.headings[0] == "豊岡市議会"


def test_zip_bomb_docx_is_refused_within_bounded_memory(tmp_path):
    path = tmp_path / "bomb.docx"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        with zf.open("word/document.xml", "w") as fh:
            block = b"\0" * 2**20
            for _ in range(64):
                fh.write(block)
    assert path.stat().st_size < 2**20
    tracemalloc.start()
    items = list(iter_documents([str(path)]))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(items) == 1 and isinstance(items[0], LoadFailure) and "zip bomb" in items[0].reason
    assert peak < 8 * 2**20


def test_not_a_docx_is_reported(tmp_path):
    (tmp_path / "old.docx").write_bytes(b"\xd0\xcf\x11\xe0" + b"\0" * 500)  # an OLE .doc renamed
    with zipfile.ZipFile(tmp_path / "other.docx", "w") as zf:
        zf.writestr("hello.txt", "こんにちは")
    failures = {Path(i.path).name: i.reason for i in iter_documents([str(tmp_path)])}
    assert "zip" in failures["old.docx"] and "word/document.xml" in failures["other.docx"]


# --------------------------------------------------------------------------- CSV / TSV

CSV_ROWS = [
    "id,title,text,分類",
    "q1,ｺｳﾉﾄﾘ,ｺｳﾉﾄﾘは豊岡市の鳥である。,動物",
    'q2,更科蕎麦,"更科蕎麦は白い蕎麦である。\n二行目もある。",食品',
    "q3,壊れた行,列が多すぎる,食品,余分",
    ",番号なし,番号のない行は行番号で呼ばれる。,",
    "q5,空,,食品",
]


def test_cp932_csv_rows_become_documents_and_bad_rows_are_reported_by_line(tmp_path):
    path = tmp_path / "台帳.csv"
    path.write_bytes("\r\n".join(CSV_ROWS).encode("cp932") + b"\r\n")
    items = list(iter_documents([str(tmp_path)]))
    docs = {i.key: i for i in items if isinstance(i, Document)}
    failures = {i.path: i.reason for i in items if isinstance(i, LoadFailure)}
    assert set(docs) == {"q1", "q2", "台帳.csv#6"}
    assert docs["q1"].text == "ｺｳﾉﾄﾘは豊岡市の鳥である。" and docs["q1"].title == "ｺｳﾉﾄﾘ"
    assert docs["q1"].metadata == {"分類": "動物"} and docs["q1"].encoding == "cp932"
    assert docs["q2"].text == "更科蕎麦は白い蕎麦である。\n二行目もある。"
    assert docs["台帳.csv#6"].metadata == {}
    assert set(failures) == {f"{path}:5", f"{path}:7"}
    assert "5 fields" in failures[f"{path}:5"] and "empty" in failures[f"{path}:7"]


def test_tsv_with_named_columns_and_file_mode(tmp_path):
    path = tmp_path / "窓口.tsv"
    path.write_text("番号\t件名\t本文\n1\t転入\t転入届は十四日以内に出す。\n2\t印鑑\t印鑑登録は本人が行う。\n",
                    encoding="utf-8")
    opts = FormatOptions(csv_columns={"text": "本文", "id": "番号", "title": "件名"})
    docs = [d for d in iter_documents([str(path)], formats=opts)]
    assert [(d.key, d.title, d.text, d.source_type) for d in docs] == [
        ("1", "転入", "転入届は十四日以内に出す。", "tsv"), ("2", "印鑑", "印鑑登録は本人が行う。", "tsv")]
    missing = list(iter_documents([str(path)]))
    assert len(missing) == 1 and "--csv-column text=NAME" in missing[0].reason
    whole = list(iter_documents([str(path)], formats=FormatOptions(csv_mode="file")))
    assert len(whole) == 1 and whole[0].key == "窓口.tsv"
    assert whole[0].text.splitlines() == ["番号 | 件名 | 本文", "1 | 転入 | 転入届は十四日以内に出す。",
                                          "2 | 印鑑 | 印鑑登録は本人が行う。"]


def test_cli_csv_options(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("本文\n駅前の駐輪場は無料である。\n", encoding="utf-8")
    runner = CliRunner()
    out = runner.invoke(cli, ["chunk", str(path), "--csv-column", "text=本文", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output.splitlines()[0])["text"] == "駅前の駐輪場は無料である。"
    bad = runner.invoke(cli, ["chunk", str(path), "--csv-column", "body=本文"])
    assert bad.exit_code == 2 and "unknown role" in bad.output


# --------------------------------------------------------------------------- store

def test_migration_2_adds_page_starts_to_an_older_index(tmp_path):
    db = tmp_path / "meta.sqlite"
    MetadataStore(db).close()
    with sqlite3.connect(db) as raw:  # make it what an index of before migration 2 (and 3) holds
        raw.execute("ALTER TABLE documents DROP COLUMN page_starts")
        raw.execute("DROP TABLE chunk_trigrams")
        raw.execute("DELETE FROM state WHERE key = 'trigram_form'")
        raw.execute("DELETE FROM schema_version WHERE version >= 2")
    raw.close()
    reader = MetadataStore(db, readonly=True)  # an old index opened read-only: no pages, no error
    with reader.snapshot() as snap:
        assert reader.page_starts(snap.conn, [1]) == {}
    reader.close()
    MetadataStore(db).close()
    with sqlite3.connect(db) as raw:
        cols = {r[1] for r in raw.execute("PRAGMA table_info(documents)")}
        versions = [r[0] for r in raw.execute("SELECT version FROM schema_version ORDER BY version")]
    raw.close()
    assert "page_starts" in cols and versions == [1, 2, 3, 4]


# --------------------------------------------------------------------------- properties

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mitsuke.indexer.pages import join_pages  # noqa: E402

_page_text = st.text(alphabet="あいう漢字。、「」ｶﾀ ABC\n", max_size=80)


@settings(max_examples=60, deadline=None)
@given(st.lists(_page_text, min_size=1, max_size=6), st.integers(min_value=8, max_value=40))
def test_paged_chunks_are_exact_and_never_span_a_page(pages, budget):
    text, starts = join_pages(pages)
    for n, s in enumerate(starts):
        assert text[s:s + len(pages[n])] == pages[n]
    for c in Chunker(ChunkConfig(max_chars=budget)).chunk(text, breaks=starts):
        assert text[c.char_start:c.char_end] == c.text
        first, last = pages_of(starts, c.char_start, c.char_end)
        assert first == last and c.text.strip() in pages[first - 1]
