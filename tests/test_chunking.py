"""Sentence segmentation, Markdown sections and chunking: exact offsets, budgets, brackets.

Real MeCab throughout; the model-token budget uses a real (tiny, locally trained)
BPE tokenizer. Property tests run on generated Japanese text and on slices of
the demo corpus and the shared evaluation corpora.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mitsuke.indexer.chunking import Chunk, Chunker, markdown_sections
from mitsuke.indexer.config import ChunkConfig
from mitsuke.indexer.japanese import morpheme_spans, sentence_spans

REPO = Path(__file__).resolve().parent.parent
EVAL = REPO.parent / "shared" / "eval"


# --------------------------------------------------------------------------- sentences

@pytest.mark.parametrize("text, expected", [
    ("今日は晴れ。明日は雨。", ["今日は晴れ。", "明日は雨。"]),
    ("「はい。」と彼は言った。次。", ["「はい。」と彼は言った。", "次。"]),
    ("彼は「行くぞ！」と叫んだ！？本当に。", ["彼は「行くぞ！」と叫んだ！？", "本当に。"]),
    ("終わり。」続き。", ["終わり。」", "続き。"]),
    ("注（詳細は後述。別項参照。）を見よ。", ["注（詳細は後述。別項参照。）を見よ。"]),
    ("一行目\r\n二行目\r三行目\n四行目", ["一行目", "二行目", "三行目", "四行目"]),
    ("「開いたまま\n続く」文。", ["「開いたまま\n続く」文。"]),
    ("「閉じない\n\n次の段落。", ["「閉じない", "次の段落。"]),
    ("ｶﾀｶﾅ｡｢ﾃｽﾄ｣です｡", ["ｶﾀｶﾅ｡", "｢ﾃｽﾄ｣です｡"]),
    ("絵文字😀です。👍🏽いいね！", ["絵文字😀です。", "👍🏽いいね！"]),
    ("  \u3000先頭に空白。  末尾にも  \n", ["先頭に空白。", "末尾にも"]),
    ("円周率は３．１４です．次の文．", ["円周率は３．１４です．", "次の文．"]),
    ("", []),
    ("\n\r\n \u3000", []),
    # An ASCII !/? inside a Latin-script name is no sentence end; after Japanese or before a space it is.
    ("ほぼ10か月経って、Yahoo!の株価（YHOO）は下がった。次。", ["ほぼ10か月経って、Yahoo!の株価（YHOO）は下がった。", "次。"]),
    ("Yahoo!ニュースで見た。Yahoo!!ニュース。", ["Yahoo!ニュースで見た。", "Yahoo!!ニュース。"]),
    ("番組をYahoo!JAPANで配信、Signalize!/カレンダーガール", ["番組をYahoo!JAPANで配信、Signalize!/カレンダーガール"]),
    ("本当に?それは嘘だ!次の文", ["本当に?", "それは嘘だ!", "次の文"]),
    ("Hello! How are you? 元気。Yahoo!", ["Hello!", "How are you?", "元気。", "Yahoo!"]),
    ("「Yahoo!」と叫んだ。", ["「Yahoo!」と叫んだ。"]),
])
def test_sentence_spans(text, expected):
    assert [text[s:e] for s, e in sentence_spans(text)] == expected


def test_a_name_with_an_exclamation_mark_stays_in_its_chunk():
    # The article: chunks ended after "Yahoo!" and began with "の株価".
    text = ("2000年1月にピークを迎えた後、ほぼ10か月経って、Yahoo!の株価（YHOO）は当時の最高値から"
            "約90％下落した。Yahoo!ニュースはその後も続いた。") * 3
    chunks = Chunker(ChunkConfig(max_chars=70)).chunk(text)
    assert [c.text for c in chunks] == [s + "。" for s in text.split("。") if s]
    assert not any(c.text.startswith(("の株価", "ニュース")) for c in chunks)


def test_sentence_spans_respects_the_range():
    text = "前。中の文。後。"
    assert [text[s:e] for s, e in sentence_spans(text, 2, 6)] == ["中の文。"]


# --------------------------------------------------------------------------- markdown

def test_heading_only_section_merges_into_its_subsection(data_dir):
    text = (data_dir / "豊岡市.md").read_text(encoding="utf-8")
    sections = markdown_sections(text)
    first_start, _, first_heads = sections[0]
    assert first_start == 0 and first_heads == ("豊岡市", "概要")
    chunks = Chunker(ChunkConfig(max_chars=200)).chunk(text, markdown=True)
    assert chunks[0].text.startswith("# 豊岡市\n## 概要\n")
    assert all(c.headings[0] == "豊岡市" for c in chunks)
    assert min(len(c.text) for c in chunks) > 20
    winter = [c for c in chunks if "312cm" in c.text]
    assert winter and winter[0].headings == ("豊岡市", "気候", "冬")


@pytest.mark.parametrize("text, expected", [
    ("# A\n本文。\n## B\nびー。", [("# A\n本文。\n", ("A",)), ("## B\nびー。", ("A", "B"))]),
    ("# A\n# B\n本文。", [("# A\n", ("A",)), ("# B\n本文。", ("B",))]),  # a sibling is not a child
    ("前書き。\n# A\n## B\n### C\n本文。", [("前書き。\n", ()), ("# A\n## B\n### C\n本文。", ("A", "B", "C"))]),
    ("# 題 #\n```\n# コメント\n```\n本文。", [("# 題 #\n```\n# コメント\n```\n本文。", ("題",))]),
    ("#タグ\n本文。", [("#タグ\n本文。", ())]),
])
def test_markdown_sections(text, expected):
    assert [(text[s:e], h) for s, e, h in markdown_sections(text)] == expected


# --------------------------------------------------------------------------- long sentences

LONG = ("彼は朝早く起きて駅まで歩いて行き、電車に乗って会社に向かったが、途中で「今日は会議があるので"
        "早めに行かなければならない。」と思い出したので、タクシーに乗り換えて急いだ")


def test_long_sentence_prefers_commas_and_keeps_quotes_whole():
    chunks = Chunker(ChunkConfig(max_chars=40)).chunk(LONG + "。")
    quote = "「今日は会議があるので早めに行かなければならない。」"
    assert any(quote in c.text for c in chunks)
    assert all(c.token_count <= 40 for c in chunks)
    assert sum(c.text.endswith("、") for c in chunks) >= 2
    assert "".join(c.text for c in chunks) == LONG + "。"


def test_quote_longer_than_the_budget_is_split_at_its_sentence_ends():
    quote = "「" + "。".join(["今日は会議があるので早めに行く"] * 4) + "。」"
    text = "彼は" + quote + "と言った。"
    chunks = Chunker(ChunkConfig(max_chars=30)).chunk(text)
    assert len(chunks) > 1 and all(c.token_count <= 30 for c in chunks)
    assert sum(c.text.endswith("。") for c in chunks) >= 3


def test_one_morpheme_over_the_budget_is_kept_whole():
    token = "x" * 25  # MeCab keeps an ASCII run as one unknown word
    text = f"これは{token}です。"
    assert morpheme_spans(token) == [(0, 25)]
    chunks = Chunker(ChunkConfig(max_chars=10)).chunk(text)
    assert any(c.text == token and c.token_count == 25 for c in chunks)
    assert all(c.token_count <= 10 for c in chunks if c.text != token)


def test_a_long_line_without_punctuation_is_windowed():
    text = "東京都の人口は多いが大阪府の人口も多い" * 2000  # 38k chars, no sentence end
    chunks = Chunker(ChunkConfig(max_chars=300)).chunk(text)
    assert all(c.token_count <= 300 for c in chunks)
    assert "".join(c.text for c in chunks) == text
    assert sum(c.token_count for c in chunks) / len(chunks) > 200  # pieces are well filled


def test_overlap_repeats_whole_sentences():
    text = "".join(f"これは{i}番目の文です。" for i in range(30))
    chunks = Chunker(ChunkConfig(max_chars=60, overlap=20)).chunk(text)
    spans = set(sentence_spans(text))
    for a, b in zip(chunks, chunks[1:]):
        assert b.char_start < a.char_end  # they overlap...
        assert a.char_end - b.char_start <= 20  # ...by at most the overlap
        assert any(s == b.char_start for s, _ in spans)  # at a sentence start
    assert chunks[-1].char_end == len(text)


def test_chunk_to_dict():
    c = Chunker(ChunkConfig(max_chars=50)).chunk("# 見出し\n本文です。", markdown=True)[0]
    assert c.to_dict() == {"chunk_index": 0, "char_start": 0, "char_end": 11, "token_count": 11,
                           "headings": ["見出し"], "text": "# 見出し\n本文です。"}


# --------------------------------------------------------------------------- model tokens

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from conftest import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def count_tokens(tokenizer):
    calls = []

    def count(texts):
        calls.append(len(texts))
        return [len(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    count.calls = calls
    return count


def test_model_budget_holds_and_counts_are_real(count_tokens, data_dir):
    chunker = Chunker(ChunkConfig(max_tokens=48), count_tokens)
    for path in sorted(data_dir.iterdir()):
        if path.suffix not in (".txt", ".md"):
            continue
        text = path.read_text(encoding="utf-8")
        chunks = chunker.chunk(text, markdown=path.suffix == ".md")
        real = count_tokens([c.text for c in chunks])
        assert [c.token_count for c in chunks] == real
        for c in chunks:
            assert text[c.char_start:c.char_end] == c.text
            assert c.token_count <= 48 or len(morpheme_spans(c.text)) == 1


def test_model_counting_is_batched(count_tokens):
    text = "".join(f"これは{i}番目の文です。" for i in range(200))
    count_tokens.calls.clear()
    chunks = Chunker(ChunkConfig(max_tokens=64), count_tokens).chunk(text)
    assert len(chunks) > 10
    assert len(count_tokens.calls) <= 4, count_tokens.calls  # not one call per chunk


# --------------------------------------------------------------------------- properties

WORDS = ["東京", "大阪", "豊岡市", "更科蕎麦", "は", "が", "を", "に", "で", "と", "の", "です", "ます", "した",
         "食べて", "行き", "ので", "から", "ｶﾀｶﾅ", "ﾃｽﾄ", "ﾊﾟﾋﾟﾌﾟﾍﾟ", "１２３", "2024年", "😀", "👍🏽", "abc",
         "Python", "時々", "ラーメン", "・", "円山川", "気候", "豪雪地帯", "ＡＢＣ", "x" * 12]
PUNCT = ["、", "。", "！", "？", "…", "，", "．"]
PAIRS = [("「", "」"), ("『", "』"), ("（", "）"), ("【", "】"), ("〔", "〕"), ("(", ")")]
SEPS = ["", "", "", " ", "\u3000", "\n", "\r\n", "\r", "\n\n", "\r\n\r\n"]

_leaf = st.one_of(st.sampled_from(WORDS), st.sampled_from(WORDS), st.sampled_from(PUNCT))
_node = st.recursive(
    _leaf,
    lambda inner: st.tuples(st.sampled_from(PAIRS), st.lists(inner, min_size=1, max_size=10)),
    max_leaves=30,
)


def _render(nodes, out: list[str], pos: int, brackets: list[tuple[int, int]]) -> int:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
            pos += len(node)
        else:
            (op, cl), inner = node
            start = pos
            out.append(op)
            pos = _render(inner, out, pos + 1, brackets)
            out.append(cl)
            pos += 1
            brackets.append((start, pos))
    return pos


@st.composite
def documents(draw, markdown: bool = False):
    """Japanese-ish text, and the spans of the balanced brackets it contains."""
    out: list[str] = []
    brackets: list[tuple[int, int]] = []
    pos = 0
    for _ in range(draw(st.integers(1, 15))):
        if markdown and draw(st.integers(0, 5)) == 0:
            heading = "#" * draw(st.integers(1, 3)) + " " + draw(st.sampled_from(WORDS[:8])) + "\n"
            sep = "\n" if not out or out[-1].endswith("\n") else "\n\n"
            out.append(sep + heading)
            pos += len(sep + heading)
        pos = _render(draw(st.lists(_node, min_size=1, max_size=12)), out, pos, brackets)
        sep = draw(st.sampled_from(SEPS))
        out.append(sep)
        pos += len(sep)
    text = "".join(out)
    assert len(text) == pos
    return text, brackets


def _real_texts() -> list[str]:
    texts = [p.read_text(encoding="utf-8") for p in sorted((REPO / "data").iterdir()) if p.suffix in (".txt", ".md")]
    for name in ("jsquad-dev", "jaquad-train-sample"):
        path = EVAL / name / "corpus.jsonl"
        if path.exists():
            with open(path, encoding="utf-8") as fh:
                for i, line in enumerate(fh):
                    if i % 10 == 0:
                        texts.append(json.loads(line)["text"])
    return texts


REAL = _real_texts()


@st.composite
def real_slices(draw):
    text = draw(st.sampled_from(REAL))
    start = draw(st.integers(0, max(0, len(text) - 1)))
    return text[start:start + draw(st.integers(1, 3000))]


def check_invariants(text: str, chunks: list[Chunk], budget: int, brackets=(), exact_chars: bool = True) -> None:
    covered = bytearray(len(text))
    for i, c in enumerate(chunks):
        assert c.index == i
        assert 0 <= c.char_start < c.char_end <= len(text)
        assert text[c.char_start:c.char_end] == c.text
        assert c.text == c.text.strip() or not c.text[0].isspace()
        if exact_chars:
            assert c.token_count == len(c.text)
        covered[c.char_start:c.char_end] = b"\1" * (c.char_end - c.char_start)
    missing = [i for i, ch in enumerate(text) if not covered[i] and not ch.isspace()]
    assert not missing, [text[i] for i in missing]
    # Chunk boundaries fall on MeCab morpheme boundaries of the whole text.
    morphs = morpheme_spans(text)
    starts = {s for s, _ in morphs}
    ends = {e for _, e in morphs}
    for c in chunks:
        assert c.char_start in starts, (c, text[max(0, c.char_start - 5):c.char_start + 5])
        assert c.char_end in ends, (c, text[max(0, c.char_end - 5):c.char_end + 5])
        if c.token_count > budget:
            # Only one morpheme (of the whole text: 「ＡＢＣＡＢＣ」 holds one, ＡＢＣＡＢＣ alone is two) goes over.
            assert sum(c.char_start <= s and e <= c.char_end for s, e in morphs) == 1, (budget, c)
    # No chunk boundary inside a bracketed span that fits the budget.
    bounds = {c.char_start for c in chunks} | {c.char_end for c in chunks}
    for s, e in brackets:
        if e - s <= budget:
            assert not any(s < b < e for b in bounds), (text[s:e], chunks)


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])


@PROPERTY
@given(doc=documents(), budget=st.integers(8, 120), overlap_share=st.sampled_from([0, 0, 0.25, 0.5]))
def test_properties_on_generated_text(doc, budget, overlap_share):
    text, brackets = doc
    config = ChunkConfig(max_chars=budget, overlap=int(budget * overlap_share))
    check_invariants(text, Chunker(config).chunk(text), budget, brackets)


@settings(PROPERTY, max_examples=35)
@given(doc=documents(markdown=True), budget=st.integers(8, 120))
def test_properties_on_generated_markdown(doc, budget):
    text, brackets = doc
    chunks = Chunker(ChunkConfig(max_chars=budget)).chunk(text, markdown=True)
    check_invariants(text, chunks, budget, brackets)
    for c in chunks:  # a chunk never spans two sections
        assert c.text.count("\n#") == 0 or all(
            line.startswith("#") for line in c.text.split("\n") if line.startswith("#"))


@PROPERTY
@given(text=real_slices(), budget=st.integers(16, 400), overlap_share=st.sampled_from([0, 0.2]))
def test_properties_on_real_text(text, budget, overlap_share):
    config = ChunkConfig(max_chars=budget, overlap=int(budget * overlap_share))
    check_invariants(text, Chunker(config).chunk(text), budget)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(doc=documents(), budget=st.integers(8, 64))
# MeCab reads ＡＢＣＡＢＣ as one word inside 「」 and as ＡＢＣ|ＡＢＣ alone: a piece re-tagged on
# its own was once cut at offset 4, which is no morpheme boundary of the whole text.
@example(doc=("「ＡＢＣＡＢＣ」", [(0, 8)]), budget=8)
def test_properties_with_model_tokens(count_tokens, doc, budget):
    text, brackets = doc
    chunks = Chunker(ChunkConfig(max_tokens=budget), count_tokens).chunk(text)
    check_invariants(text, chunks, budget, exact_chars=False)
    assert [c.token_count for c in chunks] == (count_tokens([c.text for c in chunks]) if chunks else [])


def test_every_eval_document_chunks_exactly():
    """The whole evaluation corpora (Wikipedia articles) under the default settings."""
    if not (EVAL / "jsquad-dev").exists():
        pytest.skip("shared/eval not present")
    chunker = Chunker(ChunkConfig())
    rng = random.Random(0)
    for name in ("jsquad-dev", "jaquad-train-sample"):
        with open(EVAL / name / "corpus.jsonl", encoding="utf-8") as fh:
            for line in fh:
                text = json.loads(line)["text"]
                chunks = chunker.chunk(text)
                covered = 0
                for c in chunks:
                    assert text[c.char_start:c.char_end] == c.text
                    assert c.token_count <= chunker.budget
                    covered = max(covered, c.char_end)
                assert not text[covered:].strip()
                if rng.random() < 0.02:
                    check_invariants(text, chunks, chunker.budget)


# --------------------------------------------------------------------------- the `chunk` command

def run_cli(*args, input=None):
    from click.testing import CliRunner

    from mitsuke.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)


def test_chunk_command_json_over_the_demo_corpus(data_dir):
    r = run_cli("chunk", data_dir, "--max-tokens", "200", "--overlap", "40", "--json")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert {"doc_key", "chunk_index", "char_start", "char_end", "token_count", "headings", "text"} == set(rows[0])
    texts = {p.name: p.read_text(encoding="utf-8") for p in data_dir.iterdir() if p.suffix in (".txt", ".md")}
    assert {row["doc_key"] for row in rows} == set(texts)
    for row in rows:
        assert texts[row["doc_key"]][row["char_start"]:row["char_end"]] == row["text"]
        assert row["token_count"] == len(row["text"]) <= 200
    assert any(row["headings"] == ["豊岡市", "気候", "冬"] for row in rows)


def test_chunk_command_over_a_wikipedia_corpus_on_stdin():
    path = EVAL / "jsquad-dev" / "corpus.jsonl"
    if not path.exists():
        pytest.skip("shared/eval not present")
    raw = path.read_bytes()
    r = run_cli("chunk", "-", "--json", input=raw)
    assert r.exit_code == 0, r.stderr
    docs = {str(json.loads(line)["doc_id"]): json.loads(line)["text"] for line in raw.decode("utf-8").splitlines()}
    covered = {k: bytearray(len(t)) for k, t in docs.items()}
    for line in r.stdout.splitlines():
        row = json.loads(line)
        text = docs[row["doc_key"]]
        assert text[row["char_start"]:row["char_end"]] == row["text"]
        assert row["token_count"] <= ChunkConfig().max_chars or len(morpheme_spans(row["text"])) == 1
        covered[row["doc_key"]][row["char_start"]:row["char_end"]] = b"\1" * (row["char_end"] - row["char_start"])
    for key, text in docs.items():
        assert all(covered[key][i] or ch.isspace() for i, ch in enumerate(text)), key


def test_chunk_command_globs_failures_and_usage_errors(tmp_path):
    (tmp_path / "a.md").write_text("# 題\n本文です。", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes("シフトジスの本文。".encode("cp932"))
    (tmp_path / "bad.txt").write_bytes(b"\x00\x01binary")
    r = run_cli("chunk", tmp_path, "--include", "*.md", "--json")
    assert r.exit_code == 0 and [json.loads(x)["doc_key"] for x in r.stdout.splitlines()] == ["a.md"]
    r = run_cli("chunk", tmp_path, "--exclude", "a.*")
    assert r.exit_code == 1
    assert "b.txt#0 [0:9] 9 シフトジスの本文。" in r.stdout
    assert "bad.txt" in r.stderr and "NUL" in r.stderr
    r = run_cli("chunk", tmp_path, "--max-tokens", "20", "--overlap", "20")
    assert r.exit_code == 2 and "overlap" in r.output
    r = run_cli("chunk", tmp_path, "--model", str(tmp_path), "--max-chars", "100")
    assert r.exit_code == 2 and "--max-chars" in r.output
    r = run_cli("chunk", tmp_path, "--encoding", "klingon")
    assert r.exit_code == 1 and "unknown encoding 'klingon'" in r.output


def test_chunk_command_counts_model_tokens(tokenizer, tmp_path, data_dir):
    model_dir = tmp_path / "tok"
    tokenizer.save_pretrained(model_dir)
    r = run_cli("chunk", data_dir / "豊岡市.md", "--model", model_dir, "--max-tokens", "40", "--json")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    real = [len(tokenizer(row["text"], add_special_tokens=False)["input_ids"]) for row in rows]
    assert [row["token_count"] for row in rows] == real
    assert all(n <= 40 for n in real)
