"""Decoding bytes of unknown encoding, Japanese first: BOMs, UTF-8, CP932 vs EUC-JP, UTF-16.

Split from ``loaders`` (which re-exports ``decode_bytes``): one concern, one module.
"""
from __future__ import annotations

import codecs

from mitsuke.indexer.errors import LoadError

__all__ = ["BOMS", "decode_bytes", "normal_encoding_name"]

BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _japanese_score(text: str) -> float:
    """How much ``text`` looks like real Japanese (or ASCII), from 0 to 1.

    Telling CP932 from EUC-JP: EUC-JP read as CP932 turns every kana into
    pairs of half-width katakana (``の`` A4 CE → ``､ﾎ``); CP932 read as EUC-JP
    fails outright on its kana (lead byte 0x82) or turns into runs of kanji
    with no kana at all. Real text is rich in hiragana and punctuation, so
    kana count fully, kanji partly and half-width katakana little.
    """
    if not text:
        return 0.0
    sample = text[:20000]
    good = 0.0
    for ch in sample:
        o = ord(ch)
        if 0x20 <= o < 0x7F or ch in "\t\n\r" or 0x3000 <= o <= 0x30FF or 0xFF01 <= o <= 0xFF5E:
            good += 1
        elif 0x4E00 <= o <= 0x9FFF:
            good += 0.6
        elif 0xFF61 <= o <= 0xFF9F:  # half-width katakana: legal, but the mark of a mis-decode
            good += 0.25
    return good / len(sample)


def normal_encoding_name(encoding: str) -> str:
    """Python's canonical name for ``encoding`` (``"Shift_JIS"`` → ``"shift_jis"``); ``LoadError`` if unknown."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise LoadError("--encoding", f"unknown encoding {encoding!r}: use a Python codec name such as "
                                      "utf-8, cp932, euc_jp or utf-16") from None


def decode_bytes(data: bytes, path: str, encoding: str | None = None) -> tuple[str, str]:
    """Decode ``data`` and return ``(text, encoding)``; raise ``LoadError`` naming ``path``.

    Order: forced encoding, byte-order mark, NUL bytes (binary, unless the
    whole thing is BOM-less UTF-16 Japanese), strict UTF-8, the more
    Japanese-looking of strict CP932 / EUC-JP, then charset-normalizer's guess.

    >>> decode_bytes("豊岡市の気候".encode("cp932"), "a.txt")
    ('豊岡市の気候', 'cp932')
    >>> decode_bytes("豊岡市の気候".encode("euc_jp"), "a.txt")
    ('豊岡市の気候', 'euc_jp')
    """
    if encoding:
        name = normal_encoding_name(encoding)
        try:
            return data.decode(name), name
        except UnicodeDecodeError as exc:
            raise LoadError(path, f"cannot decode as {name}: {exc.reason} at byte {exc.start}") from None
    for bom, name in BOMS:
        if data.startswith(bom):
            try:
                return data.decode(name), name
            except UnicodeDecodeError as exc:
                raise LoadError(path, f"has a {name} byte-order mark but does not decode: {exc.reason} "
                                      f"at byte {exc.start}") from None
    if b"\0" in data:
        utf16 = _bomless_utf16(data)
        if utf16 is not None:
            return utf16
        raise LoadError(path, "contains NUL bytes: a binary file (or UTF-16 without a byte-order mark: "
                              "force it with --encoding utf-16-le)")
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    candidates: list[tuple[float, str, str]] = []
    for name in ("cp932", "euc_jp"):
        try:
            text = data.decode(name)
        except UnicodeDecodeError:
            continue
        candidates.append((_japanese_score(text), name, text))
    if candidates:
        score, name, text = max(candidates)
        # A strict CP932/EUC-JP decode that reads like Japanese is trusted; a
        # poor one is only kept if charset-normalizer has nothing better.
        if score >= 0.3:
            return text, name
    from charset_normalizer import from_bytes

    utf16 = _bomless_utf16(data)
    if utf16 is not None:
        return utf16
    # Last resort for text in some other encoding; random high bytes also
    # "decode" in single-byte code pages, so demand a recognisable language.
    best = from_bytes(data).best()
    if best is not None and best.encoding and best.chaos < 0.2 and best.coherence >= 0.1:
        try:
            name = codecs.lookup(best.encoding).name
        except LookupError:
            name = best.encoding
        return str(best), name
    if candidates:
        score, name, text = max(candidates)
        return text, name
    raise LoadError(path, "undecodable bytes: not UTF-8, CP932 or EUC-JP (force an encoding with --encoding)")


def _bomless_utf16(data: bytes) -> tuple[str, str] | None:
    """UTF-16 text without a byte-order mark, recognised only when it reads as Japanese."""
    if len(data) % 2:
        return None
    for name in ("utf-16-le", "utf-16-be"):
        try:
            text = data.decode(name)
        except UnicodeDecodeError:
            continue
        # Random bytes read as UTF-16 land all over the code space (score ~0.2);
        # Japanese lands on kana and kanji.
        if "\0" not in text and _japanese_score(text) >= 0.7:
            return text, name
    return None
