"""Japanese corpora and question tables shared by the tests (one copy each).

- ``DATA`` / ``data_texts()``: the demo corpus in ``data/`` and its files' exact text;
- ``DEMO_QUESTIONS``: questions ``data/`` answers, with the document that answers each;
- ``HARD_QUESTIONS``: queries with the awkward characters (half-width katakana, 「」, emoji,
  full-width digits) that must not break any leg;
- ``SENTENCES``: sentences to build synthetic documents from (nested 「『』」, ｶﾀｶﾅ, １２３, 😀);
- ``EVAL_DOCS``: a two-document JSONL corpus for ``mitsuke eval``, with answer offsets that
  hold (``徳川吉宗`` is ``[15, 19]`` of 享保, ``小笠原諸島`` is ``[8, 13]`` of 梅雨).
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["DATA", "DEMO_QUESTIONS", "EVAL_DOCS", "HARD_QUESTIONS", "SENTENCES", "data_texts", "write_jsonl"]

DATA = Path(__file__).resolve().parent.parent / "data"

DEMO_QUESTIONS = [
    ("豊岡市の年間平均降雪量はどれくらい？", "豊岡市.md"),
    ("清水建設の創業者は誰ですか", "清水建設.txt"),
    ("ブッダガヤはどこの国にありますか", "ブッダガヤ.txt"),
    ("享保の時代の江戸幕府将軍は誰", "享保.txt"),
    ("電子基準点はどこが設置していますか", "電子基準点.txt"),
]

HARD_QUESTIONS = ["打楽器の種類", "ｶﾀｶﾅの「空港」😀", "１２３年"]

SENTENCES = [
    "東京は日本の首都であり、人口は約千四百万人である。",
    "大阪は「天下の台所」と呼ばれ、『食い倒れ』の街として知られる。",
    "更科蕎麦は蕎麦の実の中心部だけを挽いた白い蕎麦である。",
    "ｶﾀｶﾅの半角文字と全角の１２３が混じった文も正しく扱う😀。",
    "豊岡市の年間平均降雪量は３１２cmに達することがある。",
    "「彼は『行く』と言った」と彼女は書いた。",
    "電子基準点は国土地理院が全国に設置した連続観測点である。",
    "清水建設は江戸時代に創業した日本の総合建設会社である。",
]

EVAL_DOCS = [
    {"doc_id": "梅雨", "title": "梅雨", "text": "梅雨は、北海道と小笠原諸島を除く日本で見られる雨季の一種である。"},
    {"doc_id": "享保", "title": "享保", "text": "享保は日本の元号の一つ。将軍は徳川吉宗。「享保の改革」で知られる。"},
]


def data_texts() -> dict[str, str]:
    """``{file name: exact text}`` of the demo corpus's text and Markdown files."""
    return {p.name: p.read_text(encoding="utf-8") for p in DATA.iterdir() if p.suffix in (".txt", ".md")}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` as UTF-8 JSON Lines (Japanese unescaped) and return ``path``."""
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
