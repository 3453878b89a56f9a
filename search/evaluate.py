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

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mitsuke.search.eval_queries import EvalError, EvalQuery, QuerySet, load_queries, normalize_answer
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
    title_n = 0  # answer_is_title questions, scored apart
    title_sums: dict[str, float] = {}
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
            title_n += 1
            for key, v in metric_items.items():
                title_sums[key] = title_sums.get(key, 0.0) + v
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
    if title_n:
        title_out = {"n": title_n, **{key: v / title_n for key, v in title_sums.items()}}
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
                  "title_questions": title_n, "span_unreachable": extra["span_unreachable"]}
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
