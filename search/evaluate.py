"""Retrieval metrics on a QA set (the format of shared/eval/*/queries.jsonl).

- span hit@k: a top-k passage of the question's ``doc_id`` whose
  ``[char_start, char_end)`` contains one of ``answer_spans``;
- answer hit@k (lenient): a top-k passage containing an answer after NFKC;
- document hit@k: a top-k passage of ``doc_id``;
- MRR@10 and nDCG@10 (binary gains) on span hits;
- latency p50 / p95 of the whole search call.

Questions whose answer is the article title carry no passage evidence: they
are counted and left out (``skipped``), never silently scored.
"""
from __future__ import annotations

import json
import math
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from search.results import Passage

__all__ = ["EvalQuery", "load_queries", "span_hit", "score_ranking", "evaluate"]


@dataclass(frozen=True)
class EvalQuery:
    qid: str
    question: str
    doc_id: str | None
    answers: tuple[str, ...] = ()
    answer_spans: tuple[tuple[int, int], ...] = ()


def load_queries(path: str | Path) -> tuple[list[EvalQuery], dict[str, int]]:
    """Usable queries, and counts of what was skipped and why."""
    queries: list[EvalQuery] = []
    skipped: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            if not isinstance(obj.get("question"), str) or not obj["question"].strip():
                skipped["no_question"] = skipped.get("no_question", 0) + 1
                continue
            if obj.get("answer_is_title"):
                skipped["answer_is_title"] = skipped.get("answer_is_title", 0) + 1
                continue
            spans = tuple((int(a), int(b)) for a, b in obj.get("answer_spans") or ())
            answers = tuple(a for a in obj.get("answers") or () if isinstance(a, str))
            if obj.get("doc_id") is None or not (spans or answers):
                skipped["no_answer_fields"] = skipped.get("no_answer_fields", 0) + 1
                continue
            queries.append(EvalQuery(str(obj.get("qid", lineno)), obj["question"], str(obj["doc_id"]),
                                     answers, spans))
    return queries, skipped


def span_hit(p: Passage, q: EvalQuery) -> bool:
    return p.doc_key == q.doc_id and any(p.char_start <= s and e <= p.char_end for s, e in q.answer_spans)


def _nfkc(s: str) -> str:
    return unicodedata.normalize("NFKC", s)


def score_ranking(passages: Sequence[Passage], q: EvalQuery, ks: Sequence[int]) -> dict[str, float]:
    """Per-query metrics for one ranked list."""
    spans = [span_hit(p, q) for p in passages]
    answers_n = [_nfkc(a) for a in q.answers if a]
    ans = [any(a in _nfkc(p.text) for a in answers_n) for p in passages]
    docs = [p.doc_key == q.doc_id for p in passages]
    out: dict[str, float] = {}
    for k in ks:
        out[f"span_hit@{k}"] = float(any(spans[:k]))
        out[f"answer_hit@{k}"] = float(any(ans[:k]))
        out[f"doc_hit@{k}"] = float(any(docs[:k]))
    first = next((i for i, h in enumerate(spans[:10]) if h), None)
    out["mrr@10"] = 0.0 if first is None else 1.0 / (first + 1)
    dcg = sum(1.0 / math.log2(i + 2) for i, h in enumerate(spans[:10]) if h)
    ideal_n = min(10, max(1, sum(spans[:10])))
    idcg = sum(1.0 / math.log2(i + 2) for i in range(ideal_n))
    out["ndcg@10"] = dcg / idcg if dcg else 0.0
    return out


@dataclass
class EvalReport:
    metrics: dict[str, float]
    settings: dict[str, Any]
    n_queries: int
    skipped: dict[str, int]
    per_query: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "settings": self.settings, "queries": self.n_queries,
                "skipped": self.skipped}


def evaluate(searcher, queries: Iterable[EvalQuery], ks: Sequence[int] = (1, 5, 10, 20), *,
             skipped: dict[str, int] | None = None, per_query: bool = False, **search_kwargs: Any) -> EvalReport:
    ks = sorted(set(int(k) for k in ks))
    depth = max(max(ks), 10)
    totals: dict[str, float] = {}
    latencies: list[float] = []
    rows: list[dict[str, Any]] = []
    n = 0
    for q in queries:
        t0 = time.perf_counter()
        hits = searcher.search(q.question, k=depth, **search_kwargs)
        latencies.append((time.perf_counter() - t0) * 1000)
        m = score_ranking(hits, q, ks)
        for key, v in m.items():
            totals[key] = totals.get(key, 0.0) + v
        n += 1
        if per_query:
            rows.append({"qid": q.qid, "question": q.question, "doc_id": q.doc_id, **m,
                         "top": [{"doc_key": h.doc_key, "char_start": h.char_start, "char_end": h.char_end}
                                 for h in hits[:5]]})
    metrics = {key: v / n for key, v in totals.items()} if n else {}
    if latencies:
        metrics["latency_p50_ms"] = float(np.percentile(latencies, 50))
        metrics["latency_p95_ms"] = float(np.percentile(latencies, 95))
    settings = {"ks": ks, "depth": depth, **{k: v for k, v in search_kwargs.items() if v is not None}}
    return EvalReport(metrics, settings, n, dict(skipped or {}), rows)
