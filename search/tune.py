"""``mitsuke tune``: choose the hybrid settings of an index on the user's own questions.

Each question's two legs are retrieved **once**, at the deepest candidate
depth of the grid (``hybrid_legs``); every setting of the grid (fusion
method, weights, RRF constant, normalisation, candidate depth, rerank) is then
fused from them with the engine's fusion formulas, vectorised over the
weights, and scored: span hit@1/5/10 and MRR@10 (a passage is relevant as in
``mitsuke eval``: it holds an answer span of the question's document; without
spans, it contains an answer string; without answers, it comes from the
question's document).

The objective is the mean of hit@1, hit@5, hit@10 and MRR@10. k-fold
cross-validation estimates how well *choosing* a setting this way generalises:
for each fold the best setting on the other folds is scored on it. The
winner (best on all questions) is recommended only if, cross-validated, it
beats the current defaults; otherwise the defaults stay.

>>> report = tune(Searcher.open("idx"), load_queries("qa.jsonl"))     # doctest: +SKIP
>>> report.chosen.describe()                                           # doctest: +SKIP
'convex tmm 0.2:0.8, candidates 100'
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mitsuke.indexer.durable import WriterLock
from mitsuke.indexer.layout import MANIFEST_FILE, IndexPaths, Manifest, SearchDefaults
from mitsuke.indexer.location import is_url
from mitsuke.search.dense import cosines
from mitsuke.search.evaluate import EvalError, EvalQuery, QuerySet, normalize_answer
from mitsuke.search.fusion import LEG_MIN, RRF_C, FusionSettings, check_settings

__all__ = ["default_grid", "hybrid_legs", "collect", "Collected", "first_ranks", "metrics_of", "tune", "TuneReport",
           "save_defaults", "KS", "DEPTH"]

log = logging.getLogger("mitsuke")

KS = (1, 5, 10)
DEPTH = 10  # ranks scored (hit@10, MRR@10)
ALPHAS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
RRF_KS = (5, 20, 60, 200)
RRF_DENSE = (0.1, 0.25, 0.5, 1.0)
WEIGHTED_DENSE = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
CANDIDATES = (20, 50, 100, 200)
_MISS = 0  # first rank of a question with no relevant passage in the top DEPTH

Hits = list[tuple[int, float]]


def default_grid(candidates: Sequence[int] = CANDIDATES, rerank: Sequence[bool] = (True,)) -> list[FusionSettings]:
    """Every setting ``tune`` tries: convex (both norms) over α, RRF over k and dense weight, weighted."""
    out: list[FusionSettings] = []
    for rr in rerank:
        for c in candidates:
            for norm in ("tmm", "minmax"):
                out += [FusionSettings("convex", (a, round(1 - a, 6)), RRF_C, norm, c, rr) for a in ALPHAS]
            out += [FusionSettings("rrf", (w, 1.0), k, "tmm", c, rr) for k in RRF_KS for w in RRF_DENSE]
            out += [FusionSettings("weighted", (w, 1.0), RRF_C, "tmm", c, rr) for w in WEIGHTED_DENSE]
    return out


def hybrid_legs(searcher, queries: Sequence[str], depth: int, *, rerank: bool = True, nprobe: int | None = None
            ) -> list[tuple[Hits, Hits, dict[int, float]]]:
    """Both legs of a hybrid search of each query at ``depth``, unfused (``mitsuke tune`` fuses them).

    Per query: the dense leg (chunk id, cosine), the lexical leg (chunk id,
    BM25), and the exact cosine of every lexical candidate missing from the
    dense leg (all empty for a blank query). Truncated to a smaller depth d,
    they are what a hybrid search with ``candidates=d`` fuses (exactly so on
    a flat index; with IVF-PQ the deeper search may find a few more true neighbours).
    """
    # Searcher internals on purpose: the same request, legs and snapshot as a hybrid search_batch.
    queries = searcher._check_queries(queries)
    req = searcher._request(depth, "hybrid", rerank, depth, nprobe, None, FusionSettings())
    live = [i for i, q in enumerate(queries) if q.strip()]
    qvecs = searcher._embed(queries, live)
    out: list[tuple[Hits, Hits, dict[int, float]]] = [([], [], {}) for _ in queries]
    with searcher.store.snapshot() as snap:
        assert searcher.vectors is not None  # hybrid mode was checked
        searcher.vectors.bind(snap.vectors_epoch())
        searcher.vectors.expect(searcher._block_sums(snap))
        dense_legs = searcher._dense_legs(snap, req, qvecs)
        for qi in live:
            dense, lexical = dense_legs.get(qi, []), searcher._lexical_leg(snap, req, queries[qi]).ranked
            have = {c for c, _ in dense}
            out[qi] = (dense, lexical, cosines(snap, searcher.vectors, qvecs[qi],
                                               [c for c, _ in lexical if c not in have],
                                               searcher._rowmaps.for_snapshot(snap)))
    return out


@dataclass
class _Q:
    """One question's candidates (union of both legs at the deepest depth), ordered by chunk id."""

    ids: np.ndarray
    cos: np.ndarray       # exact cosine of every candidate
    bm25: np.ndarray      # BM25, 0 where the lexical leg lacks it
    drank: np.ndarray     # 1-based rank in the dense leg, huge where absent
    lrank: np.ndarray
    rel: np.ndarray       # relevant?


@dataclass
class Collected:
    """Legs and relevance of the scored questions, per rerank setting."""

    questions: list[EvalQuery]
    legs: dict[bool, list[_Q]]
    depth: int
    counts: dict[str, int] = field(default_factory=dict)


def _relevance(q: EvalQuery, row) -> bool:
    if q.doc_id is not None and q.answer_spans:
        return row.doc_key == q.doc_id and any(row.char_start <= s and e <= row.char_end for s, e in q.answer_spans)
    if q.answers:
        text = normalize_answer(row.text)
        return any(normalize_answer(a) in text for a in q.answers)
    return row.doc_key == q.doc_id


def collect(searcher, queries: QuerySet | Iterable[EvalQuery], depth: int = max(CANDIDATES), *,
            rerank: Sequence[bool] = (True,), batch: int = 256) -> Collected:
    """Retrieve both legs of every usable question once, at ``depth``, and mark the relevant candidates."""
    from mitsuke.search.evaluate import _chunk_spans

    qs = list(queries.queries if isinstance(queries, QuerySet) else queries)
    present = _chunk_spans(searcher, (q.doc_id for q in qs if q.doc_id is not None))
    counts = {"questions": len(qs), "doc_not_in_index": 0, "span": 0, "answer": 0, "doc": 0}
    usable: list[EvalQuery] = []
    for q in qs:
        if q.doc_id is not None and q.doc_id not in present:
            counts["doc_not_in_index"] += 1
            if not q.answers:
                continue
            q = EvalQuery(q.qid, q.question, None, q.answers, (), q.answer_is_title, q.line)
        if q.answer_is_title and q.doc_id is not None:  # title evidence only: its document counts
            q = EvalQuery(q.qid, q.question, q.doc_id, (), (), True, q.line)
        kind = "span" if q.doc_id is not None and q.answer_spans else "answer" if q.answers else "doc"
        counts[kind] += 1
        usable.append(q)
    if not usable:
        raise EvalError("none of the questions can be scored on this index (their doc_id values are not "
                        "documents of it and they carry no answers)")
    out: dict[bool, list[_Q]] = {}
    for rr in rerank:
        rows_cache: dict[int, Any] = {}
        legs_all = []
        for start in range(0, len(usable), batch):
            part = usable[start:start + batch]
            legs_all += hybrid_legs(searcher, [q.question for q in part], depth, rerank=rr)
            log.info("tune: legs of %d / %d questions", min(start + batch, len(usable)), len(usable))
        wanted = {c for d, lx, ex in legs_all for c, _ in list(d) + list(lx)} - set(rows_cache)
        with searcher.store.snapshot() as snap:
            ids = sorted(wanted)
            for i in range(0, len(ids), 2000):
                rows_cache.update(snap.chunk_rows(ids[i:i + 2000]))
        qlist = []
        for q, (dense, lexical, extra) in zip(usable, legs_all):
            cos = dict(dense)
            cos.update(extra)
            bm = dict(lexical)
            dr = {c: r for r, (c, _) in enumerate(dense, 1)}
            lr = {c: r for r, (c, _) in enumerate(lexical, 1)}
            ids_q = sorted(c for c in set(cos) | set(bm) if c in rows_cache)
            big = 1 << 30
            qlist.append(_Q(
                ids=np.array(ids_q, dtype=np.int64),
                cos=np.array([cos.get(c, LEG_MIN[0]) for c in ids_q], dtype=np.float64),
                bm25=np.array([bm.get(c, 0.0) for c in ids_q], dtype=np.float64),
                drank=np.array([dr.get(c, big) for c in ids_q], dtype=np.int64),
                lrank=np.array([lr.get(c, big) for c in ids_q], dtype=np.int64),
                rel=np.array([_relevance(q, rows_cache[c]) for c in ids_q], dtype=bool)))
        out[rr] = qlist
    return Collected(usable, out, depth, counts)


def _norm(x: np.ndarray, lo: float) -> np.ndarray:
    if not len(x):
        return x
    hi = x.max()
    span = hi - lo
    return (x - lo) / span if span > 0 else np.ones_like(x)


def _first_rank_rows(scores: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Per row of ``scores`` (columns ordered by chunk id): 1-based rank of the first relevant column, ties by id."""
    order = np.argsort(-scores, axis=1, kind="stable")
    top = rel[order[:, :DEPTH]]
    hit = top.any(axis=1)
    return np.where(hit, top.argmax(axis=1) + 1, _MISS)


def _group_ranks(q: _Q, fusion: str, norm: str, rrf_k: int, cand: int, weights: np.ndarray) -> np.ndarray:
    """First relevant rank of ``q`` for each weight pair (rows of ``weights``) of one setting group."""
    in_d = q.drank <= cand
    in_l = q.lrank <= cand
    keep = in_d | in_l
    if not keep.any():
        return np.full(len(weights), _MISS)
    rel = q.rel[keep]
    wd, wl = weights[:, :1], weights[:, 1:]
    if fusion == "rrf":
        d = np.where(in_d, 1.0 / (rrf_k + q.drank), 0.0)[keep]
        lx = np.where(in_l, 1.0 / (rrf_k + q.lrank), 0.0)[keep]
        return _first_rank_rows(wd * d + wl * lx, rel)
    cos = q.cos[keep]
    bm = q.bm25[keep]
    lmask = in_l[keep]
    if fusion == "convex":
        lo_d = cos.min() if norm == "minmax" else min(LEG_MIN[0], cos.min())
        low = bm[lmask].min() if lmask.any() else 0.0
        lo_l = low if norm == "minmax" else min(0.0, low)
        total = wd + wl
        wd, wl = wd / total, wl / total
    else:  # weighted: min-max dense, max-normalised BM25
        lo_d, lo_l = cos.min(), 0.0
    d = _norm(cos, lo_d)
    lx = np.zeros_like(bm)
    if lmask.any():
        lx[lmask] = _norm(bm[lmask], lo_l)
    return _first_rank_rows(wd * d + wl * lx, rel)


def first_ranks(col: Collected, grid: Sequence[FusionSettings]) -> np.ndarray:
    """``(len(grid), n_questions)`` first relevant rank (0 = none in the top 10) of every setting."""
    out = np.zeros((len(grid), len(col.questions)), dtype=np.int64)
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(grid):
        groups.setdefault((s.fusion, s.norm, s.rrf_k, s.candidates, bool(s.rerank)), []).append(i)
    for (fusion, norm, rrf_k, cand, rr), idx in groups.items():
        w = np.array([grid[i].weights for i in idx], dtype=np.float64)
        for qi, q in enumerate(col.legs[rr]):
            out[idx, qi] = _group_ranks(q, fusion, norm, rrf_k, cand, w)
    return out


def leg_ranks(col: Collected, leg: str, rerank: bool = True) -> np.ndarray:
    """First relevant rank of each question in the dense or lexical leg alone (mode dense / lexical)."""
    out = np.zeros(len(col.questions), dtype=np.int64)
    for qi, q in enumerate(col.legs[rerank]):
        r = q.drank if leg == "dense" else q.lrank
        hits = r[q.rel & (r <= DEPTH)]
        out[qi] = hits.min() if len(hits) else _MISS
    return out


def metrics_of(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """hit@1/5/10, MRR@10 and the objective (their mean) from first relevant ranks (last axis: questions).

    One value per setting for 2-D ``ranks``; for 1-D ranks each value is a numpy scalar (``_floats`` them).
    """
    r = np.asarray(ranks)
    m = {f"hit@{k}": ((r >= 1) & (r <= k)).mean(axis=-1) for k in KS}
    m["mrr@10"] = np.where(r >= 1, 1.0 / np.maximum(r, 1), 0.0).mean(axis=-1)
    m["objective"] = (m["hit@1"] + m["hit@5"] + m["hit@10"] + m["mrr@10"]) / 4
    return m


@dataclass
class TuneReport:
    """What ``tune`` found: every setting's metrics, the cross-validated estimate and the recommendation."""

    grid: list[FusionSettings]
    metrics: dict[str, np.ndarray]          # per setting, all questions
    lexical: dict[str, float]
    dense: dict[str, float]
    default: FusionSettings
    default_metrics: dict[str, float]
    best: FusionSettings
    cv_tuned: dict[str, float]
    cv_default: dict[str, float]
    fold_choices: list[FusionSettings]
    chosen: FusionSettings
    counts: dict[str, int]
    folds: int
    improved: bool = False  # tuning beat the current defaults cross-validated: ``chosen`` is new

    def top(self, n: int = 15) -> list[tuple[FusionSettings, dict[str, float]]]:
        order = np.argsort(-self.metrics["objective"], kind="stable")[:n]
        return [(self.grid[i], {k: float(v[i]) for k, v in self.metrics.items()}) for i in order]

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts, "folds": self.folds, "lexical": self.lexical, "dense": self.dense,
                "default": {"settings": self.default.to_dict(), "metrics": self.default_metrics},
                "best": self.best.to_dict(), "cv_tuned": self.cv_tuned, "cv_default": self.cv_default,
                "fold_choices": [s.to_dict() for s in self.fold_choices], "chosen": self.chosen.to_dict(),
                "improved": self.improved,
                "top": [{"settings": s.to_dict(), "metrics": m} for s, m in self.top()]}


def _floats(m: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in m.items()}


def tune(searcher, queries: QuerySet | Iterable[EvalQuery], *, folds: int = 5, grid: Sequence[FusionSettings]
         | None = None, seed: int = 0, collected: Collected | None = None) -> TuneReport:
    """Search ``grid`` (default: ``default_grid``) on ``queries`` with ``folds``-fold cross-validation."""
    manifest = searcher.manifest
    if manifest.ann is not None:
        kind = manifest.ann.params.kind
    else:  # no saved ANN index yet: the one the reader builds
        with searcher.store.snapshot() as snap:
            kind = manifest.ann_params(int(snap.counts()["chunks"])).kind
    has_ivf = kind == "ivfpq"
    default = searcher.defaults
    if grid is None:
        grid = default_grid(rerank=(True, False) if has_ivf else (bool(default.rerank),))
    grid = [check_settings(s) for s in grid]
    default_full = FusionSettings(default.fusion, default.weights, default.rrf_k, default.norm,
                                  default.candidates or 10 * DEPTH, default.rerank)
    grid_all = list(grid) + [default_full]
    reranks = sorted({bool(s.rerank) for s in grid_all}, reverse=True)
    depth = max(s.candidates or 10 * DEPTH for s in grid_all)
    col = collected or collect(searcher, queries, depth, rerank=reranks)
    ranks = first_ranks(col, grid_all)
    n = ranks.shape[1]
    folds = max(2, min(int(folds), n))
    perm = np.random.default_rng(seed).permutation(n)
    fold_of = np.empty(n, dtype=np.int64)
    fold_of[perm] = np.arange(n) % folds
    held_tuned = np.zeros(n, dtype=np.int64)
    choices = []
    for f in range(folds):
        train = fold_of != f
        obj = metrics_of(ranks[:len(grid), train])["objective"]
        best = int(np.argmax(obj))  # first of the ties: the grid's order
        choices.append(grid[best])
        held_tuned[~train] = ranks[best, ~train]
    all_m = metrics_of(ranks)
    best_i = int(np.argmax(all_m["objective"][:len(grid)]))
    cv_tuned = _floats(metrics_of(held_tuned))
    cv_default = _floats(metrics_of(ranks[-1]))
    improved = cv_tuned["objective"] > cv_default["objective"]
    # Kept defaults are saved as they are: a depth left to k × 10 stays so (not pinned to 10 × DEPTH).
    chosen = grid[best_i] if improved else default
    return TuneReport(
        grid=list(grid), metrics={k: v[:len(grid)] for k, v in all_m.items()},
        lexical=_floats(metrics_of(leg_ranks(col, "lexical", reranks[0]))),
        dense=_floats(metrics_of(leg_ranks(col, "dense", reranks[0]))),
        default=default_full, default_metrics={k: float(v[-1]) for k, v in all_m.items()},
        best=grid[best_i], cv_tuned=cv_tuned, cv_default=cv_default, fold_choices=choices, chosen=chosen,
        counts={**col.counts, "scored": n}, folds=folds, improved=improved)


def save_defaults(index_dir: str | Path, settings: FusionSettings, provenance: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Store ``settings`` as the index's ``search_defaults`` (manifest.json), under the writer lock.

    For a PostgreSQL index (a URL) the stored manifest is updated under the
    index's lock; query nodes take the defaults up when they next open it.
    """
    record = SearchDefaults.from_dict({**check_settings(settings).to_dict(), "tuned": provenance or {}})
    if is_url(index_dir):
        from mitsuke.indexer.location import parse_location
        from mitsuke.indexer.store.postgres import PostgresStore

        store = PostgresStore(parse_location(index_dir))
        try:
            with store.begin() as conn:
                store.update_manifest(conn, "search_defaults", record.to_dict())
        finally:
            store.close()
        return record.to_dict()
    paths = IndexPaths(index_dir)
    manifest = Manifest.read(paths.root)  # before taking the lock: a plain directory gets no LOCK file
    if manifest is None:
        raise EvalError(f"{paths.root} is not a mitsuke index (no {MANIFEST_FILE})")
    lock = WriterLock(paths.lock)
    lock.acquire()
    try:
        manifest = Manifest.read(paths.root) or manifest  # as the last writer left it
        replace(manifest, search_defaults=record).write(paths.root)
        return record.to_dict()
    finally:
        lock.release()
