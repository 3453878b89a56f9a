"""Japanese text analysis with MeCab (fugashi + unidic-lite).

Three things, all with offsets into the original string:
- ``sentence_spans``: sentences that keep 「…。」 and （…） whole;
- ``morpheme_spans``: morpheme boundaries, for splitting over-long sentences;
- ``lexical_terms``: normalised content words for BM25, the same at index and query time.
"""
from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Iterator
from typing import Any

__all__ = [
    "get_tagger",
    "iter_morphemes",
    "morpheme_spans",
    "punctuation_pieces",
    "sentence_spans",
    "lexical_terms",
    "normalize",
    "match_text",
    "passage_terms",
    "LEXICAL_STOP_POS",
    "LEXICAL_INFLECTING_POS",
    "LEXICAL_ANALYSIS_VERSION",
    "OPEN_BRACKETS",
    "CLOSE_BRACKETS",
]

OPEN_BRACKETS = "「『（(【〔［[｛{〈《“‘｢"
CLOSE_BRACKETS = "」』）)】〕］]｝}〉》”’｣"
_CLOSERS = dict(zip(OPEN_BRACKETS, CLOSE_BRACKETS))
_TERMINATORS = frozenset("。．！？!?｡")
# Closing marks that stay with the sentence they end: …。」 …！） …?"
_TRAILERS = frozenset(CLOSE_BRACKETS) | _TERMINATORS | frozenset("\"'…‥")
# The only characters sentence_spans has to look at; everything else is skipped by the regex engine.
_SPECIAL_RE = re.compile("[" + re.escape(OPEN_BRACKETS + CLOSE_BRACKETS + "".join(sorted(_TERMINATORS))) + "\r\n]")
_NONSPACE_RE = re.compile(r"\S")
_LINE_SPACE = frozenset(" \t\u3000\f\v")

# MeCab's lattice grows with its input; a window keeps memory flat on a 50 MB line.
_WINDOW = 8192

_local = threading.local()


def get_tagger():
    """A fugashi Tagger for this thread (MeCab taggers are not thread-safe)."""
    tagger = getattr(_local, "tagger", None)
    if tagger is None:
        import fugashi

        tagger = fugashi.Tagger()
        _local.tagger = tagger
    return tagger


def normalize(text: str) -> str:
    """NFKC + lower case: the form used for matching, never for stored text."""
    return unicodedata.normalize("NFKC", text).lower()


def match_text(text: str) -> str:
    """``normalize(text)`` made storable: control characters as spaces, lone surrogates replaced.

    The text the trigram index holds for a passage, and the form a query is
    matched in, so ｶﾀｶﾅ/ＡＢＣ/ABC find each other as substrings too.
    """
    # Control characters become spaces: FTS5 reads a MATCH expression as a C string (a NUL ends it).
    norm = _NUL_RE.sub(" ", normalize(text))
    try:
        norm.encode("utf-8")
    except UnicodeEncodeError:
        norm = norm.encode("utf-8", "replace").decode("utf-8")
    return norm


def _words(text: str) -> Iterator[tuple[int, int, Any]]:
    """(start, end, word) for every MeCab morpheme of ``text``, windowed for long inputs."""
    tagger = get_tagger()
    n = len(text)
    base = 0
    while base < n:
        end = min(n, base + _WINDOW)
        window = text[base:end]
        words = tagger(window)
        pos = 0
        spans: list[tuple[int, int, object]] = []
        for w in words:
            surface = w.surface
            ws = w.white_space
            if window.startswith(ws + surface, pos):
                start = pos + len(ws)
            else:  # MeCab dropped or rewrote something: resynchronise on the surface
                found = window.find(surface, pos)
                if found < 0:
                    continue
                start = found
            pos = start + len(surface)
            spans.append((base + start, base + pos, w))
        if end < n and len(spans) > 1:
            # The last morpheme may be cut by the window edge: re-read from its start.
            spans.pop()
            next_base = spans[-1][1]
        else:
            next_base = end
        yield from spans
        if next_base <= base:
            next_base = end
        base = next_base


def punctuation_pieces(surface: str) -> list[tuple[int, int]]:
    """Split an unknown-word surface so that each punctuation mark stands alone.

    MeCab groups a run of characters of one class that its dictionary does not
    know into a single unknown word, so ``」〔？、〕」〔（。）〕！`` can come back
    as one "morpheme". Punctuation has no word to protect: treating each mark
    as its own morpheme lets sentences and brackets be cut where they end.
    Whitespace and control characters (``\r``) that end up inside such a word
    are left out. Other characters (emoji with their modifiers, letters) stay
    together.
    """
    pieces: list[tuple[int, int]] = []
    run = -1
    for k, ch in enumerate(surface):
        cat = unicodedata.category(ch)
        if cat[0] == "P" or cat in ("Cc", "Zs", "Zl", "Zp"):
            if run >= 0:
                pieces.append((run, k))
                run = -1
            if cat[0] == "P":
                pieces.append((k, k + 1))
        elif run < 0:
            run = k
    if run >= 0:
        pieces.append((run, len(surface)))
    return pieces


def iter_morphemes(text: str) -> Iterator[tuple[int, int, object | None]]:
    """``(start, end, word)`` for the morphemes of ``morpheme_spans(text)``, lazily, in order.

    ``word`` is the fugashi node (``None`` for a piece of a split unknown
    word); read what you need from it before taking the next item, since the
    next MeCab window may reuse the lattice it points into. Reading a long
    text lazily keeps memory flat, and a caller that needs morphemes of a
    stretch gets exactly those of the whole text (MeCab's choice at a place
    depends on the text around it: ``ＡＢＣＡＢＣ`` alone is two words, in
    ``「ＡＢＣＡＢＣ」`` one).
    """
    for s, e, w in _words(text):
        if w.is_unk and e - s > 1:
            for a, b in punctuation_pieces(text[s:e]):
                yield s + a, s + b, None
        elif not text[s:e].isspace():
            yield s, e, w


def morpheme_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of MeCab morphemes; whitespace between them belongs to none.

    Unknown words made of punctuation are split per mark (``punctuation_pieces``).
    """
    return [(s, e) for s, e, _ in iter_morphemes(text)]


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Sentences of ``text[start:end]`` as spans trimmed of surrounding whitespace.

    A sentence ends at 。．！？!?｡ (plus the closing quotes/brackets and marks
    that follow, so ``…。」`` stays whole) when no bracket is open (an ASCII
    ``!``/``?`` inside a Latin name such as ``Yahoo!ニュース`` ends nothing), or at a
    line break when no bracket is open. A blank line always ends a sentence
    and forgets unclosed brackets, so one stray 「 cannot swallow the rest of
    a document. Every non-whitespace character of the range lies in exactly
    one span.

    >>> t = "「はい。」と言った。\\n次の行"
    >>> [t[s:e] for s, e in sentence_spans(t)]
    ['「はい。」と言った。', '次の行']
    """
    end = len(text) if end is None else end
    spans: list[tuple[int, int]] = []
    stack: list[str] = []
    sent_start = -1
    pos = start  # characters before pos are accounted for
    nonspace = _NONSPACE_RE.search
    # Only brackets, terminators and line breaks matter; a regex finds them so the
    # Python loop runs per mark, not per character (a 50 MB line stays fast).
    for m in _SPECIAL_RE.finditer(text, start, end):
        i = m.start()
        if i < pos:
            continue  # swallowed as a trailer or a \r\n pair
        if sent_start < 0:
            ns = nonspace(text, pos, i + 1)
            if ns is None:  # a line break with no sentence open
                pos = i + 1
                continue
            sent_start = ns.start()
        ch = text[i]
        if ch == "\n" or ch == "\r":
            j = i + 1
            if ch == "\r" and j < end and text[j] == "\n":
                j += 1
            k = j
            while k < end and text[k] in _LINE_SPACE:
                k += 1
            blank = k < end and text[k] in "\r\n"
            if not stack or blank:
                stack.clear()
                spans.append((sent_start, _rstrip(text, sent_start, i)))
                sent_start = -1
            pos = j
            continue
        if ch in _CLOSERS:
            stack.append(_CLOSERS[ch])
        elif stack and ch == stack[-1]:
            stack.pop()
        elif stack and ch in CLOSE_BRACKETS and ch in stack:
            while stack and stack.pop() != ch:  # mismatched nesting: close up to it
                pass
        if ch in "!?" and _inside_name(text, i, start, end):
            pos = i + 1
            while pos < end and text[pos] in "!?":
                pos += 1  # Yahoo!!ニュース: the whole run is part of the name
            continue
        if ch in _TERMINATORS and not stack and not (ch == "．" and _decimal_point(text, i, end)):
            j = i + 1
            while j < end and text[j] in _TRAILERS:
                j += 1
            spans.append((sent_start, j))
            sent_start = -1
            pos = j
            continue
        pos = i + 1
    if sent_start < 0:
        ns = nonspace(text, pos, end)
        if ns is not None:
            sent_start = ns.start()
    if sent_start >= 0:
        spans.append((sent_start, _rstrip(text, sent_start, end)))
    return [(s, e) for s, e in spans if e > s]


def _inside_name(text: str, i: int, start: int, end: int) -> bool:
    """An ASCII ``!``/``?`` inside a Latin-script name or token, not a sentence end.

    ``Yahoo!ニュース``, ``Yahoo!の株価``, ``Yahoo!JAPAN``, ``Signalize!/``: the
    mark follows a Latin letter or digit and the text goes on with no space
    (and not with a closing bracket, quote or another sentence mark). After
    Japanese text (``本当に?それは``) or before a space (``Hello! How``) it
    ends a sentence as before.
    """
    if i <= start or not (text[i - 1].isascii() and text[i - 1].isalnum()):
        return False
    j = i + 1
    while j < end and text[j] in "!?":
        j += 1
    return j < end and not text[j].isspace() and text[j] not in _TRAILERS


def _decimal_point(text: str, i: int, end: int) -> bool:
    """``３．１４``: a full-width period between digits is a decimal point, not a sentence end."""
    return 0 < i and i + 1 < end and text[i - 1].isdigit() and text[i + 1].isdigit()


def _rstrip(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


# --------------------------------------------------------------------------- lexical terms
# Parts of speech (unidic pos1) that carry no search meaning on their own.
LEXICAL_STOP_POS = frozenset({"助詞", "助動詞", "補助記号", "空白", "記号"})
# Inflecting parts of speech: indexed by their lemma so 住む/住んだ/住まない match.
LEXICAL_INFLECTING_POS = frozenset({"動詞", "形容詞", "形状詞"})
# Bumped whenever lexical_terms changes its output: an index's FTS5 terms are
# only comparable with queries analysed by the same version.
LEXICAL_ANALYSIS_VERSION = 2
_STOP_POS = LEXICAL_STOP_POS  # the old private name, kept for callers outside this module
_PUNCT_RE = re.compile(r"^[\W_]+$")
_NUL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Tab-separated fields of unidic-lite's default output format (its dicrc's
# node-format-unidic): surface, pron, lForm, lemma, pos1-pos2-..., cType, cForm, aType.
_F_SURFACE, _F_LEMMA, _F_POS = 0, 3, 4
# MeCab's lattice grows with its input: long texts are analysed in windows cut at a
# space or punctuation, so memory stays flat and no word is cut in two.
_LEX_WINDOW = 4096
_CUT_RE = re.compile(r"[\s。、．，！？!?,.」』）)]")


def _lexical_windows(norm: str) -> Iterator[str]:
    n = len(norm)
    base = 0
    while base < n:
        end = min(n, base + _LEX_WINDOW)
        if end < n:
            # Cut after the last separator of the window's second half, if there is one.
            cut = -1
            for m in _CUT_RE.finditer(norm, base + _LEX_WINDOW // 2, end):
                cut = m.end()
            if cut > base:
                end = cut
        yield norm[base:end]
        base = end


def lexical_terms(text: str) -> list[str]:
    """Normalised content-word terms of ``text`` for BM25 (the same at index and query time).

    - NFKC + lower case *before* MeCab, so half-width ｶﾀｶﾅ, full-width ＡＢＣ/１２３
      and their ordinary forms are analysed (and cut into words) identically;
    - surfaces, not unidic lemmas, for non-inflecting words: unidic-lite's lemma
      of a proper noun is its katakana reading, which conflates homophones
      (更級 → サラシナ);
    - verbs, adjectives and 形状詞 by lemma (住んだ → 住む);
    - particles, auxiliaries, symbols and whitespace dropped;
    - numbers kept (``2019年`` → ``2019``, ``年``).

    Reads MeCab's formatted output in one call instead of touching
    ``node.feature`` per word, which is 2× faster (FACTS.md: feature access is
    the expensive part of fugashi).

    >>> lexical_terms("東京タワーに住んだ。ｶﾀｶﾅ１２３")
    ['東京', 'タワー', '住む', 'カタカナ', '123']
    """
    norm = unicodedata.normalize("NFKC", text).lower()
    # MeCab reads a C string (a NUL ends it) and cannot encode lone surrogates.
    norm = _NUL_RE.sub(" ", norm)
    try:
        norm.encode("utf-8")
    except UnicodeEncodeError:
        norm = norm.encode("utf-8", "replace").decode("utf-8")
    tagger = get_tagger()
    terms: list[str] = []
    for window in _lexical_windows(norm):
        for line in tagger.parse(window).split("\n"):
            fields = line.split("\t")
            if len(fields) <= _F_POS:
                continue  # EOS and blank lines
            pos1 = fields[_F_POS].split("-", 1)[0]
            if pos1 in LEXICAL_STOP_POS:
                continue
            term = fields[_F_SURFACE]
            if pos1 in LEXICAL_INFLECTING_POS and fields[_F_LEMMA]:
                # Loanword lemmas carry their origin (ハイ-high): keep the word only.
                term = fields[_F_LEMMA].split("-", 1)[0] or term
                term = term.lower()
            if not term or _PUNCT_RE.match(term):
                continue
            terms.append(term)
    return terms


def passage_terms(text: str, title: str = "", headings: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The terms a passage is indexed under: its own, then its document title's and headings'.

    Title terms let a question naming the article's subject (which the passage
    itself often leaves implicit: 「同市の人口は?」) reach the passage; on the
    pooled eval corpus they raise span hit@5 by about 0.01 (BENCHMARKS.md "Query engine").
    """
    terms = lexical_terms(text)
    for context in (title, *headings):
        if context:
            terms += lexical_terms(context)
    return terms
