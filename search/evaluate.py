"""Retrieval metrics on a QA set (JSONL questions; README "Measure it on your data").

A question line is a JSON object: ``question`` (required), ``answers``
(strings), ``doc_id`` (the key the answer's document was indexed with: a JSONL
corpus ``doc_id``/``id``, or a file's path relative to the indexed root) and
``answer_spans`` (``[start, end)`` character offsets into that document's
text). ``qid`` and ``answer_is_title`` are optional.

Each metric is averaged over the questions that carry what it needs, and each
family reports its own ``n``:

- **span** (``span_hit@k``, ``mrr@10``, ``ndcg@10``) needs ``doc_id`` and
  ``answer_spans``. A passage is *relevant* when it comes from ``doc_id`` and
  its ``[char_start, char_end)`` contains one of the spans. ``mrr@10`` is the
  reciprocal rank of the first relevant passage in the top 10. ``ndcg@10`` uses
  binary gains ``1/log2(rank+1)`` and an ideal DCG over ``min(R, 10)`` ranks,
  where R is the number of the index's chunks that are relevant (found in the
  index itself, so a question no chunk can answer scores 0 and is counted as
  ``span_unreachable``).
- **answer** (``answer_hit@k``, lenient) needs ``answers``: a top-k passage, of
  any document, contains an answer once both are NFKC-normalised, case-folded
  and stripped of whitespace.
- **doc** (``doc_hit@k``) needs ``doc_id``: a top-k passage comes from it.

Nothing is silently scored. Lines that are not JSON, not objects, or whose
fields have the wrong shape are counted under ``skipped`` with their line
numbers in ``problems``; questions without any answer field are counted as
``no_answer_fields``; questions whose ``doc_id`` is not in the index are left
out of the span and doc families (``doc_not_in_index``), and when none of the
``doc_id``s is in the index the run stops with an error naming the mismatch.
``answer_is_title`` questions carry no passage evidence (their only evidence
is the article title): they are scored apart, document hit only, under
``title_questions``.

>>> from mitsuke.search import Searcher                                   # doctest: +SKIP
>>> qs = load_queries("questions.jsonl")                          # doctest: +SKIP
>>> report = evaluate(Searcher.open("idx"), qs, (1, 5, 10), mode="lexical")   # doctest: +SKIP
>>> report.metrics["span_hit@5"]                                  # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
import math
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mitsuke.indexer.errors import MitsukeError
from mitsuke.search.results import Passage

__all__ = [
    "EvalError",
    "EvalQuery",
    "QuerySet",
    "EvalReport",
    "load_queries",
    "normalize_answer",
    "score_ranking",
    "evaluate",
    "MRR_DEPTH",
    "NDCG_DEPTH",
]

log = logging.getLogger("mitsuke")

MRR_DEPTH = 10
NDCG_DEPTH = 10
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

    def __iter__(self):
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


def _contains_span(p: Passage, spans: Sequence[tuple[int, int]]) -> bool:
    return any(p.char_start <= s and e <= p.char_end for s, e in spans)


def _first_rank(flags: Sequence[bool], depth: int | None = None) -> int | None:
    for i, f in enumerate(flags[:depth] if depth else flags):
        if f:
            return i + 1
    return None


def score_ranking(passages: Sequence[Passage], q: EvalQuery, ks: Sequence[int],
                  relevant_in_index: int | None = None) -> dict[str, Any]:
    """Per-question metrics for one ranked list.

    Returns the metrics of each family the question belongs to, plus
    ``first_*_rank`` (1-based, None for a miss). ``relevant_in_index`` is R of
    the nDCG ideal; left None it is the number of relevant passages retrieved
    (only right when the ranking holds every relevant chunk).
    """
    out: dict[str, Any] = {}
    if q.doc_id is not None and q.answer_spans:
        rel = [p.doc_key == q.doc_id and _contains_span(p, q.answer_spans) for p in passages]
        first = _first_rank(rel)
        out["first_span_rank"] = first
        for k in ks:
            out[f"span_hit@{k}"] = 1.0 if first is not None and first <= k else 0.0
        out[f"mrr@{MRR_DEPTH}"] = 1.0 / first if first is not None and first <= MRR_DEPTH else 0.0
        r = sum(rel) if relevant_in_index is None else relevant_in_index
        dcg = sum(1.0 / math.log2(i + 2) for i, h in enumerate(rel[:NDCG_DEPTH]) if h)
        idcg = sum(1.0 / math.log2(i + 2) for i in range(min(r, NDCG_DEPTH)))
        out[f"ndcg@{NDCG_DEPTH}"] = dcg / idcg if idcg > 0 else 0.0
    if q.answers:
        wanted = [normalize_answer(a) for a in q.answers]
        first = _first_rank([any(a in normalize_answer(p.text) for a in wanted) for p in passages])
        out["first_answer_rank"] = first
        for k in ks:
            out[f"answer_hit@{k}"] = 1.0 if first is not None and first <= k else 0.0
    if q.doc_id is not None:
        first = _first_rank([p.doc_key == q.doc_id for p in passages])
        out["first_doc_rank"] = first
        for k in ks:
            out[f"doc_hit@{k}"] = 1.0 if first is not None and first <= k else 0.0
    return out


@dataclass
class EvalReport:
    """Averaged metrics, how many questions each family averaged over, and the settings."""

    metrics: dict[str, float]
    counts: dict[str, int]
    settings: dict[str, Any]
    skipped: dict[str, int]
    problems: list[str] = field(default_factory=list)
    title_questions: dict[str, Any] = field(default_factory=dict)
    per_query: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n_queries(self) -> int:
        return self.counts.get("scored", 0)

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "counts": self.counts, "title_questions": self.title_questions,
                "skipped": self.skipped, "problems": self.problems, "settings": self.settings}


def _chunk_spans(searcher, keys: Iterable[str]) -> dict[str, list[tuple[int, int]]]:
    """``doc_key -> [(char_start, char_end), ...]`` of the index's live chunks, for the given keys."""
    with searcher.store.snapshot() as snap:
        return snap.document_spans(keys)


def _percentiles(latencies: Sequence[float]) -> dict[str, float]:
    if not latencies:
        return {}
    return {"latency_p50_ms": float(np.percentile(latencies, 50)),
            "latency_p95_ms": float(np.percentile(latencies, 95))}


def _check_ks(ks: Sequence[int]) -> list[int]:
    try:
        out = sorted({int(k) for k in ks})
    except (TypeError, ValueError):
        raise EvalError(f"cut-offs must be integers such as 1,5,10, got {list(ks)!r}") from None
    if not out or out[0] < 1:
        raise EvalError(f"cut-offs must be integers of at least 1, got {list(ks)!r}")
    return out


def evaluate(searcher, queries: QuerySet | Iterable[EvalQuery], ks: Sequence[int] = (1, 5, 10, 20), *,
             mode: str | None = None, rerank: bool | None = None, per_query: bool = False, limit: int | None = None,
             warmup: bool = True, **search_kwargs: Any) -> EvalReport:
    """Run every question through ``searcher.search`` and average the metrics.

    Each question is one timed ``search`` call (the latency a user sees, query
    embedding included) at depth ``max(max(ks), 10)``; one untimed call first
    loads the model and ANN index so that p95 is not the first query's load.
    ``rerank`` and the fusion keywords (``fusion``, ``weights``, ``rrf_k``,
    ``norm``, ``candidates``) left None take the searcher's defaults; the
    settings actually used are recorded in ``EvalReport.settings``.
    """
    ks = _check_ks(ks)
    depth = max(ks[-1], MRR_DEPTH, NDCG_DEPTH)
    qset = queries if isinstance(queries, QuerySet) else QuerySet(list(queries))
    qs = qset.queries[:limit] if limit else list(qset.queries)
    skipped = dict(qset.skipped)
    mode = mode or ("hybrid" if searcher.has_dense else "lexical")

    spans_by_doc = _chunk_spans(searcher, (q.doc_id for q in qs if q.doc_id is not None))
    with_doc = [q for q in qs if q.doc_id is not None]
    if with_doc and not spans_by_doc:
        sample = ", ".join(repr(q.doc_id) for q in with_doc[:3])
        raise EvalError(
            f"none of the {len(with_doc)} questions' doc_id values (e.g. {sample}) is a document key of index "
            f"{searcher.path}; documents are keyed by their JSONL 'id'/'doc_id' or by their path relative to the "
            "indexed directory: index the corpus the questions were written for (e.g. `mitsuke index "
            "corpus.jsonl --index DIR`)")

    if warmup and qs:
        searcher.search(qs[0].question, k=depth, mode=mode, rerank=rerank, **search_kwargs)

    sums: dict[str, float] = {}
    counts = {"span": 0, "answer": 0, "doc": 0}
    title = {"n": 0, "sums": {}}
    extra = {"doc_not_in_index": 0, "answer_is_title": 0, "span_unreachable": 0}
    latencies: list[float] = []
    rows: list[dict[str, Any]] = []
    scored = 0
    for q in qs:
        missing_doc = q.doc_id is not None and q.doc_id not in spans_by_doc
        if missing_doc:
            extra["doc_not_in_index"] += 1
            # The target cannot be found: keep only what does not depend on it.
            q = EvalQuery(q.qid, q.question, None, q.answers, (), q.answer_is_title, q.line)
            if not q.answers:
                continue
        relevant = None
        if q.doc_id is not None and q.answer_spans:
            relevant = sum(1 for s, e in spans_by_doc[q.doc_id] if any(s <= a and b <= e for a, b in q.answer_spans))
            if relevant == 0:
                extra["span_unreachable"] += 1
        if q.answer_is_title:
            extra["answer_is_title"] += 1
            if q.doc_id is None:
                continue
            q = EvalQuery(q.qid, q.question, q.doc_id, (), (), True, q.line)

        t0 = time.perf_counter()
        hits = searcher.search(q.question, k=depth, mode=mode, rerank=rerank, **search_kwargs)
        elapsed = (time.perf_counter() - t0) * 1000.0
        latencies.append(elapsed)
        m = score_ranking(hits, q, ks, relevant)
        metric_items = {key: v for key, v in m.items() if not key.startswith("first_")}
        if q.answer_is_title:
            title["n"] += 1
            for key, v in metric_items.items():
                title["sums"][key] = title["sums"].get(key, 0.0) + v
        else:
            scored += 1
            for key, v in metric_items.items():
                sums[key] = sums.get(key, 0.0) + v
            counts["span"] += "first_span_rank" in m
            counts["answer"] += "first_answer_rank" in m
            counts["doc"] += "first_doc_rank" in m
        if per_query:
            rows.append({"qid": q.qid, "line": q.line, "question": q.question, "doc_id": q.doc_id,
                         "answer_is_title": q.answer_is_title, "relevant_in_index": relevant,
                         "latency_ms": elapsed, **m,
                         "top": [{"rank": i, "doc_key": h.doc_key, "chunk_id": h.chunk_id, "score": h.score,
                                  "char_start": h.char_start, "char_end": h.char_end}
                                 for i, h in enumerate(hits[:10], 1)]})

    metrics: dict[str, float] = {}
    family_of = {"span": "span", "mrr": "span", "ndcg": "span", "answer": "answer", "doc": "doc"}
    for key in _metric_order(ks):
        family = family_of[key.split("_")[0].split("@")[0]]
        if key in sums and counts[family]:
            metrics[key] = sums[key] / counts[family]
    metrics.update(_percentiles(latencies))
    title_out: dict[str, Any] = {}
    if title["n"]:
        title_out = {"n": title["n"], **{key: v / title["n"] for key, v in title["sums"].items()}}
    # answer_is_title questions are scored apart (title_questions) and
    # unreachable spans are real misses: only missing documents are skipped.
    for key, v in extra.items():
        if v and key == "doc_not_in_index":
            skipped[key] = v
    if extra["doc_not_in_index"]:
        log.warning("%d questions name a doc_id that is not in %s: left out of span and doc metrics",
                    extra["doc_not_in_index"], searcher.path)
    settings = {
        "index": searcher.index_name, "queries": qset.source or None,
        "model": searcher.model_name, "mode": mode,
        "rerank": (bool(searcher.defaults.rerank if rerank is None else rerank)) if mode != "lexical" else None,
        "ks": ks, "depth": depth, "limit": limit, "warmup": warmup,
        "chunking": asdict(searcher.manifest.chunking),
        # Settings that did not shape this run (fusion outside hybrid mode) are left out.
        **{k: v for k, v in search_kwargs.items() if v is not None and k not in _FUSION_KEYS},
        # The fusion actually used (arguments over the index's and mitsuke's defaults), hybrid mode only.
        **(_fusion_used(searcher, search_kwargs) if mode == "hybrid" else {}),
    }
    try:
        from mitsuke import __version__

        settings["mitsuke"] = __version__
    except ImportError:  # pragma: no cover - the package always has it
        pass
    out_counts = {"lines": qset.lines or len(qset.queries), "scored": scored, **counts,
                  "title_questions": title["n"], "span_unreachable": extra["span_unreachable"]}
    return EvalReport(metrics, out_counts, settings, skipped, list(qset.problems), title_out, rows)


_FUSION_KEYS = ("fusion", "weights", "rrf_k", "norm", "candidates")


def _fusion_used(searcher, kwargs: dict[str, Any]) -> dict[str, Any]:
    from mitsuke.search.fusion import FusionSettings, resolve

    w = kwargs.get("weights")
    given = FusionSettings(kwargs.get("fusion"), None if w is None else tuple(w), kwargs.get("rrf_k"),
                           kwargs.get("norm"), kwargs.get("candidates"))
    used = resolve(given, searcher.defaults).to_dict()
    used.pop("rerank", None)
    return used


def _metric_order(ks: Sequence[int]) -> list[str]:
    return ([f"span_hit@{k}" for k in ks] + [f"answer_hit@{k}" for k in ks] + [f"doc_hit@{k}" for k in ks]
            + [f"mrr@{MRR_DEPTH}", f"ndcg@{NDCG_DEPTH}"])
