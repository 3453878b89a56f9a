"""Lexical (BM25 over MeCab terms) retrieval quality on the pooled eval corpus.

Both corpora of ../shared/eval (JSQuAD dev + the JaQuAD sample, 459 articles)
go into one lexical-only index; the JSQuAD questions (answer_is_title ones
left out, as ../shared/eval/README.md asks) are scored by span hit@k and
MRR@10 with ``search.evaluate``.

Two kinds of rows:
- ``shipped``: the real pipeline (IndexBuilder + Searcher, mode="lexical")
  at several chunk sizes (``ChunkConfig(max_chars=...)``);
- ``variant``: the same chunks re-analysed with another term choice (surface
  vs orthBase vs lemma, which parts of speech are dropped, title terms added)
  in an in-memory FTS5 table, so the effect of the term choice alone shows.

    PYTHONPATH=$PWD /work/venv/bin/python bench/lexical_quality.py [--sizes 200,320,400] [--variants]

Indexes are cached under bench/results/lexq/ (delete it to rebuild).
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
import unicodedata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mitsuke.indexer import IndexBuilder  # noqa: E402
from mitsuke.indexer.config import ChunkConfig  # noqa: E402
from mitsuke.search import Searcher  # noqa: E402
from bench.common import eval_corpus, write_results  # noqa: E402
from mitsuke.search.evaluate import EvalQuery, load_queries, score_ranking  # noqa: E402
from mitsuke.search.results import Passage  # noqa: E402

EVAL = REPO.parent / "shared" / "eval"
CORPORA = ("jsquad-dev", "jaquad-train-sample")
OUT = REPO / "bench" / "results" / "lexq"
KS = (1, 5, 10)



def build(max_chars: int, docs: list[dict]) -> tuple[Path, float]:
    path = OUT / f"idx-{max_chars}"
    stamp = path / "built.json"
    if stamp.exists():
        return path, json.loads(stamp.read_text())["seconds"]
    t0 = time.perf_counter()
    with IndexBuilder.open(path, model="none", chunking=ChunkConfig(max_chars=max_chars)) as b:
        b.add_documents(docs)
    seconds = time.perf_counter() - t0
    stamp.write_text(json.dumps({"seconds": seconds}))
    return path, seconds


def score(rankings: list[list[Passage]], queries: list[EvalQuery]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for hits, q in zip(rankings, queries):
        for key, v in score_ranking(hits, q, KS).items():
            totals[key] = totals.get(key, 0.0) + v
    return {k: v / len(queries) for k, v in totals.items()}


def shipped(path: Path, queries: list[EvalQuery]) -> tuple[dict[str, float], float, int]:
    with Searcher.open(path) as s:
        chunks = s.info()["chunks"]
        t0 = time.perf_counter()
        rankings = [s.search(q.question, k=10, mode="lexical") for q in queries]
        ms = (time.perf_counter() - t0) * 1000 / len(queries)
    return score(rankings, queries), ms, chunks


# --------------------------------------------------------------------------- term variants

def analyse(text: str):
    """(surface, pos1, pos2, lemma, orthBase) per morpheme of NFKC + lower-cased ``text``."""
    from mitsuke.indexer.japanese import get_tagger

    norm = unicodedata.normalize("NFKC", text).lower()
    out = []
    for w in get_tagger()(norm):
        f = w.feature
        out.append((w.surface, f.pos1, f.pos2, getattr(f, "lemma", None) or w.surface,
                    getattr(f, "orthBase", None) or w.surface))
    return out


STOP = {"助詞", "助動詞", "補助記号", "空白", "記号"}
INFLECTING = {"動詞", "形容詞", "形状詞"}


def v_surface(ms):
    return [s for s, p1, p2, lemma, ob in ms if p1 not in STOP]


def v_lemma_inflecting(ms):
    return [lemma.split("-")[0] if p1 in INFLECTING else s for s, p1, p2, lemma, ob in ms if p1 not in STOP]


def v_orthbase_inflecting(ms):
    return [ob if p1 in INFLECTING else s for s, p1, p2, lemma, ob in ms if p1 not in STOP]


def v_orthbase_all(ms):
    return [ob for s, p1, p2, lemma, ob in ms if p1 not in STOP]


def v_lemma_all(ms):
    return [lemma.split("-")[0] for s, p1, p2, lemma, ob in ms if p1 not in STOP]


def v_keep_all(ms):
    return [s for s, *_ in ms if s.strip()]


def v_drop_more(ms):
    drop = STOP | {"接尾辞", "接頭辞", "代名詞", "連体詞", "接続詞", "感動詞"}
    return [ob if p1 in INFLECTING else s for s, p1, p2, lemma, ob in ms if p1 not in drop]


def v_drop_light_verbs(ms):
    # する/ある/いる/なる and friends (非自立可能) match almost every passage.
    return [ob if p1 in INFLECTING else s for s, p1, p2, lemma, ob in ms
            if p1 not in STOP and p2 != "非自立可能"]


VARIANTS = {
    "surface, drop particles/aux/symbols": v_surface,
    "lemma for verbs/adj (shipped)": v_lemma_inflecting,
    "orthBase for verbs/adj": v_orthbase_inflecting,
    "orthBase for all": v_orthbase_all,
    "lemma for all": v_lemma_all,
    "all morphemes, no POS drop": v_keep_all,
    "also drop affixes/pronouns/conj": v_drop_more,
    "also drop 非自立可能 (する, ある)": v_drop_light_verbs,
}


def variant_rows(path: Path, queries: list[EvalQuery], titles: bool) -> list[tuple[str, dict[str, float]]]:
    src = sqlite3.connect(path / "meta.sqlite")
    rows = src.execute("SELECT c.id, c.text, c.char_start, c.char_end, d.key, d.title FROM chunks c "
                       "JOIN documents d ON d.id = c.doc_id").fetchall()
    src.close()
    chunk_ms = {r[0]: analyse(r[1]) for r in rows}
    title_ms = {t: analyse(t) for t in {r[5] for r in rows}}
    meta = {r[0]: r for r in rows}
    q_ms = [analyse(q.question) for q in queries]
    out = []
    for name, fn in VARIANTS.items():
        for with_title in ((False, True) if titles else (False,)):
            db = sqlite3.connect(":memory:")
            db.execute("CREATE VIRTUAL TABLE t USING fts5(terms, tokenize='unicode61 remove_diacritics 0')")
            db.executemany("INSERT INTO t (rowid, terms) VALUES (?, ?)",
                           [(cid, " ".join(fn(ms) + (fn(title_ms[meta[cid][5]]) if with_title else [])))
                            for cid, ms in chunk_ms.items()])
            rankings = []
            for qm in q_ms:
                terms = dict.fromkeys(fn(qm))
                if not terms:
                    rankings.append([])
                    continue
                match = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
                hits = db.execute("SELECT rowid FROM t WHERE t MATCH ? ORDER BY bm25(t) LIMIT 10",
                                  (match,)).fetchall()
                rankings.append([_passage(meta[h[0]]) for h in hits])
            out.append((name + (" + title terms" if with_title else ""), score(rankings, queries)))
            db.close()
    return out


def _passage(r) -> Passage:
    return Passage(chunk_id=r[0], doc_key=r[4], title=r[5], text=r[1], score=0.0, char_start=r[2], char_end=r[3])


def term_speed(docs: list[dict]) -> None:
    """Characters per second of lexical_terms vs per-node feature access (the old path)."""
    from mitsuke.indexer.japanese import get_tagger, lexical_terms

    texts = [d["text"] for d in docs]
    chars = sum(len(t) for t in texts)
    tagger = get_tagger()

    def feature_path(text: str) -> list[str]:
        out = []
        for w in tagger(unicodedata.normalize("NFKC", text).lower()):
            f = w.feature
            if f.pos1 in STOP:
                continue
            out.append(f.orthBase if f.pos1 in INFLECTING and f.orthBase else w.surface)
        return out

    print()
    print(f"Term extraction speed over the pooled corpus ({chars:,} characters, one core, median of 3):")
    print()
    print("| path | Mchar/s |")
    print("|---|---:|")
    for name, fn in (("node.feature per word", feature_path), ("tagger.parse() output (shipped)", lexical_terms)):
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            for t in texts:
                fn(t)
            runs.append(time.perf_counter() - t0)
        print(f"| {name} | {chars / sorted(runs)[1] / 1e6:.2f} |", flush=True)


def latency(path: Path, queries: list[EvalQuery]) -> None:
    """Median / p95 ms per query: the BM25 SQL with and without common-term pruning, and a whole search."""
    import numpy as np

    from mitsuke.search.lexical import bm25_search

    with Searcher.open(path) as s:
        n = s.info()["chunks"]
        rows = []
        with s.store.snapshot() as snap:
            for name, kwargs in (("bm25_search, all query terms", {"n_docs": 0}),
                                 ("bm25_search, terms in >= half the passages left out (shipped)", {"n_docs": n})):
                times = []
                for q in queries:
                    t0 = time.perf_counter()
                    bm25_search(snap, q.question, 10, **kwargs)
                    times.append((time.perf_counter() - t0) * 1000)
                rows.append((name, times))
        times = []
        for q in queries:
            t0 = time.perf_counter()
            s.search(q.question, k=10, mode="lexical")
            times.append((time.perf_counter() - t0) * 1000)
        rows.append(("Searcher.search(mode='lexical', k=10), passages included", times))
    print()
    print(f"Lexical latency, {len(queries)} questions, {n} passages ({path.name}):")
    print()
    print("| what | p50 ms | p95 ms |")
    print("|---|---:|---:|")
    for name, t in rows:
        print(f"| {name} | {np.percentile(t, 50):.2f} | {np.percentile(t, 95):.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="200,320,400,600", help="chunk max_chars values, comma-separated")
    ap.add_argument("--variants", action="store_true", help="also compare term choices (at the first size)")
    ap.add_argument("--titles", action="store_true", help="with --variants: also try title terms in every chunk")
    ap.add_argument("--speed", action="store_true", help="only time term extraction (two paths)")
    ap.add_argument("--latency", action="store_true", help="only time lexical queries (first size)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N questions")
    args = ap.parse_args()
    if not EVAL.exists():
        sys.exit(f"{EVAL} is missing: the pooled eval corpus is needed")
    queries, skipped = load_queries(EVAL / "jsquad-dev" / "queries.jsonl")
    queries = queries[:args.limit] if args.limit else queries
    docs = eval_corpus()
    if args.speed:
        term_speed(docs)
        return
    if args.latency:
        path, _ = build(int(args.sizes.split(",")[0]), docs)
        latency(path, queries)
        return
    print(f"{len(docs)} articles pooled; {len(queries)} JSQuAD questions scored; skipped {skipped}")
    print()
    print("| max_chars | chunks | index s | span hit@1 | span hit@5 | span hit@10 | MRR@10 | ms/query |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    results = {"queries": len(queries), "shipped": [], "variants": []}
    sizes = [int(x) for x in args.sizes.split(",")]
    for size in sizes:
        path, secs = build(size, docs)
        m, ms, n = shipped(path, queries)
        results["shipped"].append({"max_chars": size, "chunks": n, "index_s": secs, "ms_per_query": ms, **m})
        print(f"| {size} | {n} | {secs:.1f} | {m['span_hit@1']:.4f} | {m['span_hit@5']:.4f} | "
              f"{m['span_hit@10']:.4f} | {m['mrr@10']:.4f} | {ms:.2f} |", flush=True)
    if args.variants:
        path, _ = build(sizes[0], docs)
        print()
        print(f"Term choices, same chunks (max_chars={sizes[0]}):")
        print()
        print("| terms | span hit@1 | span hit@5 | span hit@10 | MRR@10 |")
        print("|---|---:|---:|---:|---:|")
        for name, m in variant_rows(path, queries, args.titles):
            results["variants"].append({"terms": name, **m})
            print(f"| {name} | {m['span_hit@1']:.4f} | {m['span_hit@5']:.4f} | {m['span_hit@10']:.4f} | "
                  f"{m['mrr@10']:.4f} |", flush=True)
    write_results("lexical_quality", results, path=OUT / "lexical_quality.json")


if __name__ == "__main__":
    main()
