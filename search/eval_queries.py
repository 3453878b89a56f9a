"""Reading a QA set: question lines validated, bad lines counted and described (``search.evaluate`` scores them).

The line format and the skip reasons are described in :mod:`mitsuke.search.evaluate`
and :func:`load_queries`.
"""
from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mitsuke.indexer.errors import MitsukeError

__all__ = ["EvalError", "EvalQuery", "QuerySet", "load_queries", "normalize_answer", "MAX_PROBLEMS"]

log = logging.getLogger("mitsuke")

# Problem lines kept verbatim in the report; the counts cover all of them.
MAX_PROBLEMS = 20


class EvalError(MitsukeError):
    """A query set or cut-off list cannot be evaluated as given."""


@dataclass(frozen=True)
class EvalQuery:
    """One question of a QA set, validated."""

    qid: str
    question: str
    doc_id: str | None = None
    answers: tuple[str, ...] = ()
    answer_spans: tuple[tuple[int, int], ...] = ()
    answer_is_title: bool = False
    line: int = 0


@dataclass
class QuerySet:
    """Questions read from a file, and what was skipped while reading it."""

    queries: list[EvalQuery]
    skipped: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    lines: int = 0
    source: str = ""

    def __iter__(self) -> Iterator[EvalQuery]:
        return iter(self.queries)

    def __len__(self) -> int:
        return len(self.queries)


def _skip(qs: QuerySet, reason: str, lineno: int, detail: str) -> None:
    qs.skipped[reason] = qs.skipped.get(reason, 0) + 1
    if len(qs.problems) < MAX_PROBLEMS:
        qs.problems.append(f"line {lineno}: {detail}")


def _parse_spans(value: Any) -> tuple[tuple[int, int], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"answer_spans must be a list of [start, end] pairs, got {value!r}")
    spans = []
    for item in value:
        ok = (isinstance(item, (list, tuple)) and len(item) == 2
              and all(isinstance(x, int) and not isinstance(x, bool) for x in item) and 0 <= item[0] < item[1])
        if not ok:
            raise ValueError(f"answer_spans entry {item!r} is not a [start, end] pair with 0 <= start < end")
        spans.append((int(item[0]), int(item[1])))
    return tuple(spans)


def _parse_line(obj: Any, lineno: int) -> EvalQuery:
    """Raise ValueError naming the bad field; return the validated question."""
    if not isinstance(obj, dict):
        raise TypeError(f"expected a JSON object, got {type(obj).__name__}")
    question = obj.get("question")
    if not isinstance(question, str):
        raise ValueError(f"'question' must be a string, got {question!r}")
    answers = obj.get("answers")
    if answers is None:
        answers = []
    elif isinstance(answers, str):  # a single answer written without the list
        answers = [answers]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"'answers' must be a list of strings, got {answers!r}")
    doc_id = obj.get("doc_id")
    if doc_id is not None and (isinstance(doc_id, bool) or not isinstance(doc_id, (str, int))):
        raise ValueError(f"'doc_id' must be a string or an integer, got {doc_id!r}")
    spans = _parse_spans(obj.get("answer_spans"))
    qid = obj.get("qid", obj.get("id", lineno))
    return EvalQuery(
        qid=str(qid), question=question, doc_id=None if doc_id is None else str(doc_id),
        # An answer that normalises to nothing would be found in every passage.
        answers=tuple(a for a in answers if normalize_answer(a)),
        answer_spans=spans, answer_is_title=bool(obj.get("answer_is_title", False)), line=lineno)


def load_queries(path: str | Path) -> QuerySet:
    """Read a question file; bad lines are counted and described, never fatal.

    Skip reasons: ``bad_json`` (not JSON or not UTF-8), ``bad_fields`` (not an
    object, or a field of the wrong shape), ``no_question`` (empty question),
    ``no_answer_fields`` (none of answers / doc_id / answer_spans).
    """
    path = Path(path)
    try:
        raw_lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise EvalError(f"cannot read queries file {path}: {exc.strerror or exc}") from None
    qs = QuerySet([], source=str(path))
    for lineno, raw in enumerate(raw_lines, 1):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        qs.lines += 1
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            _skip(qs, "bad_json", lineno, f"not UTF-8 ({exc.reason} at byte {exc.start})")
            continue
        except json.JSONDecodeError as exc:
            _skip(qs, "bad_json", lineno, f"invalid JSON: {exc.msg} at column {exc.colno}")
            continue
        try:
            q = _parse_line(obj, lineno)
        except (TypeError, ValueError) as exc:
            _skip(qs, "bad_fields", lineno, str(exc))
            continue
        if not q.question.strip():
            _skip(qs, "no_question", lineno, "empty 'question'")
            continue
        if not (q.answers or q.doc_id is not None):
            _skip(qs, "no_answer_fields", lineno, "no 'answers', 'doc_id' or 'answer_spans' to score against")
            continue
        qs.queries.append(q)
    for problem in qs.problems:
        log.warning("%s: %s", path, problem)
    if qs.lines and not qs.queries:
        raise EvalError(f"{path}: none of its {qs.lines} lines is a usable question "
                        f"(skipped: {_fmt_counts(qs.skipped)}); each line needs a JSON object with 'question' "
                        "and at least one of 'answers', 'doc_id' + 'answer_spans'")
    return qs


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def normalize_answer(s: str) -> str:
    """NFKC, case-folded, whitespace removed: the lenient form both sides of answer hit use."""
    return "".join(unicodedata.normalize("NFKC", s).casefold().split())
