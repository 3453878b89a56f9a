"""Fragment queries and the trigram leg: quality, index size, build time, latency.

A user pastes part of a word (``ッカーシンボ`` of サッカーシンボル, a product
code, OCR'd text): MeCab cuts it into morphemes the passage does not have.
This script

1. builds a fragment query set from ../shared/eval (deterministic, seed 0):
   5-8-character substrings cut from the middle of katakana and kanji words
   (neither the word's first nor last character) of the answer paragraphs of
   both QA sets; the target is the fragment's article (doc hit) and the
   passage holding it (span hit);
2. builds lexical-only indexes (``model="none"``): jsquad-dev, the JaQuAD
   sample and both pooled; times the trigram table alone (refilled on a copy)
   and its size (the copy without it, vacuumed);
3. runs the terms leg (BM25 over MeCab terms, today's lexical leg) and the
   trigram leg once per query and scores ways of combining them on the
   fragments (pooled index) and on the QA questions (each index; span hit as
   ``mitsuke eval`` scores it): terms only, trigram only, the terms' BM25 plus
   w × rescaled trigram BM25 (shipped: ``search.trigram.combine``), RRF, and
   "fallback" (trigram used only when a query term is unknown to the index or
   the terms find nothing);
4. times ``Searcher.search(mode="lexical")`` per query with and without the
   trigram leg.

    PYTHONPATH=$PWD .venv/bin/python bench/fragments.py [--limit N] [--per-kind 600]

Indexes are cached under bench/results/frag/ (delete it to rebuild).
"""
from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sqlite3
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import SHARED_EVAL, eval_corpus, machine, percentiles, write_results  # noqa: E402
from mitsuke.indexer import IndexBuilder  # noqa: E402
from mitsuke.search import Searcher  # noqa: E402
from mitsuke.search.evaluate import EvalQuery, load_queries, score_ranking  # noqa: E402
from mitsuke.search.fusion import rrf  # noqa: E402
from mitsuke.search.lexical import bm25_search, query_terms  # noqa: E402
from mitsuke.search.results import Passage  # noqa: E402
from mitsuke.search.trigram import combine, trigram_search  # noqa: E402

OUT = REPO / "bench" / "results" / "frag"
SETS = ("jsquad-dev", "jaquad-train-sample")
K = 10
KATAKANA = re.compile(r"[ァ-ヺー・]{7,}")
KANJI = re.compile(r"[\u4e00-\u9fff々〆ヶ]{7,}")


# --------------------------------------------------------------------------- fragment set

def fragment_set(per_kind: int, seed: int = 0) -> list[dict]:
    """Fragments of 5-8 characters from the middle of katakana / kanji words of answer paragraphs."""
    rng = random.Random(seed)
    candidates: dict[str, list[tuple]] = {"katakana": [], "kanji": []}
    for name in SETS:
        texts = {}
        with open(SHARED_EVAL / name / "corpus.jsonl", encoding="utf-8") as fh:
            for line in fh:
                d = json.loads(line)
                texts[d["doc_id"]] = d["text"]
        seen = set()
        with open(SHARED_EVAL / name / "queries.jsonl", encoding="utf-8") as fh:
            for line in fh:
                q = json.loads(line)
                key = (q["doc_id"], tuple(q["context_span"]))
                if key in seen or q["doc_id"] not in texts:
                    continue
                seen.add(key)
                s0, e0 = q["context_span"]
                para = texts[q["doc_id"]][s0:e0]
                for kind, rx in (("katakana", KATAKANA), ("kanji", KANJI)):
                    for m in rx.finditer(para):
                        word = m.group(0).strip("・ー")
                        if len(word) >= 7:
                            candidates[kind].append((name, q["doc_id"], s0 + m.start() + m.group(0).index(word), word))
    out = []
    for kind, cands in candidates.items():
        cands = sorted(set(cands))
        rng.shuffle(cands)
        words_used = set()
        for name, doc_id, wstart, word in cands:
            if len([o for o in out if o["kind"] == kind]) >= per_kind:
                break
            if word in words_used:
                continue
            # Not the word's first or last character: a cut from its middle.
            length = rng.randint(5, min(8, len(word) - 2))
            start = rng.randint(1, len(word) - length - 1)
            frag = word[start:start + length]
            if frag[0] in "・" or frag[-1] in "・":
                continue
            words_used.add(word)
            out.append({"fragment": frag, "kind": kind, "set": name, "doc_id": doc_id, "word": word,
                        "span": [wstart + start, wstart + start + length]})
    return out


# --------------------------------------------------------------------------- indexes

def build(name: str, sets: tuple[str, ...]) -> tuple[Path, dict]:
    path = OUT / f"idx-{name}"
    stamp = path / "built.json"
    if stamp.exists():
        return path, json.loads(stamp.read_text())
    if path.exists():
        shutil.rmtree(path)
    docs = eval_corpus(sets)
    t0 = time.perf_counter()
    with IndexBuilder.open(path, model="none") as b:
        b.add_documents(docs)
    info = {"build_s": time.perf_counter() - t0, "docs": len(docs), **trigram_cost(path)}
    stamp.write_text(json.dumps(info))
    return path, info


def trigram_cost(path: Path) -> dict:
    """Size of the index with and without the trigram table, and the time to fill it (on copies)."""
    from mitsuke.indexer.store import SqliteStore
    from mitsuke.indexer.store.sqlite import TRIGRAM_TABLE

    db = path / "meta.sqlite"
    tmp = OUT / "copy.sqlite"
    out = {}
    for label, drop in (("with", False), ("without", True)):
        shutil.copy(db, tmp)
        con = sqlite3.connect(tmp)
        con.execute("PRAGMA journal_mode=DELETE")
        if drop:
            con.execute(f"DROP TABLE {TRIGRAM_TABLE}")
        con.execute("VACUUM")
        con.close()
        out[f"bytes_{label}_trigrams"] = tmp.stat().st_size
    # Fill time: empty the table on the copy that has it, refill it through the store's own code.
    shutil.copy(db, tmp)
    store = SqliteStore(tmp)
    t0 = time.perf_counter()
    with store.begin() as conn:
        store.rebuild_substrings(conn)  # empties the table, then refills it
    out["trigram_fill_s"] = time.perf_counter() - t0
    store.close()
    tmp.unlink()
    return out


# --------------------------------------------------------------------------- legs and variants

def legs(path: Path, queries: list[str]) -> tuple[list[dict], dict[int, tuple]]:
    """Per query: terms leg, trigram leg, whether a query term is unknown to the index; chunk info by id."""
    out = []
    con = sqlite3.connect(path / "meta.sqlite")  # the vocabulary and chunk spans, read as plain SQLite
    con.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.v USING fts5vocab(main, 'chunk_terms', 'row')")
    vocab = {t for (t,) in con.execute("SELECT term FROM temp.v")}
    rows = con.execute("SELECT c.id, d.key, c.char_start, c.char_end FROM chunks c "
                       "JOIN documents d ON d.id = c.doc_id").fetchall()
    con.close()
    with Searcher.open(path) as s, s.store.snapshot() as snap:
        n_docs = s.info()["chunks"]
        for q in queries:
            t0 = time.perf_counter()
            terms = bm25_search(snap, q, K, n_docs=n_docs)
            t1 = time.perf_counter()
            tri = trigram_search(snap, q, K)
            t2 = time.perf_counter()
            qt = query_terms(q)
            out.append({"terms": terms, "tri": tri, "oov": any(t not in vocab for t in qt) or not qt,
                        "ms_terms": (t1 - t0) * 1000, "ms_tri": (t2 - t1) * 1000})
    return out, {int(r[0]): (r[1], r[2], r[3]) for r in rows}


def _first(leg1, leg2):
    seen = {c for c, _ in leg1}
    return list(leg1) + [(c, s) for c, s in leg2 if c not in seen]


VARIANTS = {
    "terms only (today)": lambda g: g["terms"],
    "trigram only": lambda g: g["tri"],
    "terms + 0.25 x trigram": lambda g: combine(g["terms"], g["tri"], 0.25).ranked,
    "terms + 0.5 x trigram": lambda g: combine(g["terms"], g["tri"], 0.5).ranked,
    "terms + 1 x trigram": lambda g: combine(g["terms"], g["tri"], 1.0).ranked,
    "terms + 2 x trigram (shipped)": lambda g: combine(g["terms"], g["tri"], 2.0).ranked,
    "RRF(terms, trigram)": lambda g: rrf([g["terms"], g["tri"]]),
    "RRF(terms, 0.5 trigram)": lambda g: rrf([g["terms"], g["tri"]], [1.0, 0.5]),
    "trigram matches first, then terms": lambda g: _first(g["tri"], g["terms"]),
    "fallback: +1 x trigram only if a term is unknown": lambda g: (
        combine(g["terms"], g["tri"], 1.0).ranked if g["oov"] or not g["terms"] else g["terms"]),
}


def passages(ranked, chunks) -> list[Passage]:
    out = []
    for cid, sc in ranked[:K]:
        key, s, e = chunks[cid]
        out.append(Passage(chunk_id=cid, doc_key=key, title="", text="", score=sc, char_start=s, char_end=e))
    return out


def score_fragments(frags: list[dict], got: list[dict], chunks) -> dict[str, dict]:
    res = {}
    for name, fn in VARIANTS.items():
        m = {"doc_hit@1": 0, "doc_hit@5": 0, "doc_hit@10": 0, "span_hit@10": 0, "empty": 0}
        by_kind: dict[str, list[int]] = {}
        by_len: dict[str, list[int]] = {}
        for f, g in zip(frags, got):
            ps = passages(fn(g), chunks)
            docs = [p.doc_key for p in ps]
            m["empty"] += not ps
            for k in (1, 5, 10):
                m[f"doc_hit@{k}"] += f["doc_id"] in docs[:k]
            s, e = f["span"]
            m["span_hit@10"] += any(p.doc_key == f["doc_id"] and p.char_start <= s and e <= p.char_end for p in ps)
            hit = int(f["doc_id"] in docs)
            by_kind.setdefault(f["kind"], []).append(hit)
            by_len.setdefault("5-7" if len(f["fragment"]) <= 7 else "8", []).append(hit)
        n = len(frags)
        row = {k: v / n for k, v in m.items()}
        row.update({f"doc_hit@10 {k}": sum(v) / len(v) for k, v in sorted(by_kind.items())})
        row.update({f"doc_hit@10 len {k}": sum(v) / len(v) for k, v in sorted(by_len.items())})
        res[name] = row
    return res


def score_questions(queries: list[EvalQuery], got: list[dict], chunks) -> dict[str, dict]:
    res = {}
    for name, fn in VARIANTS.items():
        totals: dict[str, float] = {}
        for q, g in zip(queries, got):
            for key, v in score_ranking(passages(fn(g), chunks), q, (1, 5, 10)).items():
                if key.startswith("span_hit@") or key == "mrr@10":
                    totals[key] = totals.get(key, 0.0) + (v or 0)
        res[name] = {k: v / len(queries) for k, v in totals.items()}
        res[name]["with_trigram_hits"] = sum(bool(g["tri"]) for g in got) / len(queries)
    return res


def latency(path: Path, queries: list[str]) -> dict[str, dict]:
    """Searcher.search(mode='lexical', k=10) per query, with the trigram leg and without (terms only).

    The two are timed alternately on each query, so a change in the machine's load hits both alike.
    """
    from mitsuke.search import trigram as trigram_mod

    shipped = trigram_mod.TRIGRAM_WEIGHT
    configs = (("terms only", 0.0), ("terms + trigram (shipped)", shipped))
    times: dict[str, list[float]] = {label: [] for label, _ in configs}
    with Searcher.open(path) as s:
        s.search(queries[0], k=K, mode="lexical")
        try:
            for i, q in enumerate(queries):
                for label, weight in (configs if i % 2 == 0 else configs[::-1]):
                    trigram_mod.TRIGRAM_WEIGHT = weight
                    t0 = time.perf_counter()
                    s.search(q, k=K, mode="lexical")
                    times[label].append((time.perf_counter() - t0) * 1000)
        finally:
            trigram_mod.TRIGRAM_WEIGHT = shipped
    return {label: percentiles(t) for label, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-kind", type=int, default=600, help="fragments per kind (katakana, kanji)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N questions of each QA set")
    ap.add_argument("--no-questions", action="store_true", help="fragments only")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    frags = fragment_set(args.per_kind)
    (OUT / "fragments.jsonl").write_text("".join(json.dumps(f, ensure_ascii=False) + "\n" for f in frags))
    print(f"{len(frags)} fragments ({sum(f['kind'] == 'katakana' for f in frags)} katakana), e.g. "
          + ", ".join(f["fragment"] for f in frags[:3] + frags[-3:]), flush=True)
    results: dict = {"machine": machine(), "fragments": len(frags), "indexes": {}, "questions": {}}
    pooled, info = build("pooled", SETS)
    results["indexes"]["pooled"] = info
    print("pooled index:", info, flush=True)
    got, chunks = legs(pooled, [f["fragment"] for f in frags])
    results["fragment_scores"] = score_fragments(frags, got, chunks)
    results["fragment_leg_ms"] = {"terms": percentiles([g["ms_terms"] for g in got]),
                                  "trigram": percentiles([g["ms_tri"] for g in got])}
    print("\n| fragments (pooled) | doc hit@1 | @5 | @10 | span hit@10 | katakana @10 | kanji @10 | len 5-7 @10 | none |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in results["fragment_scores"].items():
        print(f"| {name} | {m['doc_hit@1']:.3f} | {m['doc_hit@5']:.3f} | {m['doc_hit@10']:.3f} | "
              f"{m['span_hit@10']:.3f} | {m['doc_hit@10 katakana']:.3f} | {m['doc_hit@10 kanji']:.3f} | "
              f"{m['doc_hit@10 len 5-7']:.3f} | {m['empty']:.3f} |", flush=True)
    if not args.no_questions:
        for index_name, sets in (("jsquad-dev", ("jsquad-dev",)), ("jaquad-train-sample", ("jaquad-train-sample",)),
                                 ("pooled", SETS)):
            path, info = build(index_name, sets)
            results["indexes"][index_name] = info
            for qset in sets:
                qs = [q for q in load_queries(SHARED_EVAL / qset / "queries.jsonl") if not q.answer_is_title]
                qs = qs[:args.limit] if args.limit else qs
                got, chunks = legs(path, [q.question for q in qs])
                scores = score_questions(qs, got, chunks)
                results["questions"][f"{index_name}/{qset}"] = scores
                print(f"\n| {qset} questions on the {index_name} index (n={len(qs)}) | span hit@1 | @5 | @10 | "
                      "MRR@10 | with trigram hits |")
                print("|---|---:|---:|---:|---:|---:|")
                for name, m in scores.items():
                    print(f"| {name} | {m['span_hit@1']:.4f} | {m['span_hit@5']:.4f} | {m['span_hit@10']:.4f} | "
                          f"{m['mrr@10']:.4f} | {m['with_trigram_hits']:.3f} |", flush=True)
    qs = [q.question for q in load_queries(SHARED_EVAL / "jsquad-dev" / "queries.jsonl")][:1000]
    results["latency"] = {"questions": latency(pooled, qs), "fragments": latency(pooled, [f["fragment"] for f in frags])}
    print("\n| Searcher.search(mode='lexical', k=10), pooled | p50 ms | p95 ms |")
    print("|---|---:|---:|")
    for what, rows in results["latency"].items():
        for label, p in rows.items():
            print(f"| {what}, {label} | {p['p50_ms']:.2f} | {p['p95_ms']:.2f} |")
    print("\nindexes:")
    for name, i in results["indexes"].items():
        grow = i["bytes_with_trigrams"] / i["bytes_without_trigrams"]
        print(f"- {name}: {i['docs']} docs, build {i['build_s']:.1f} s (trigram fill {i['trigram_fill_s']:.1f} s), "
              f"meta.sqlite {i['bytes_without_trigrams'] / 2**20:.1f} MiB -> {i['bytes_with_trigrams'] / 2**20:.1f} MiB "
              f"(x{grow:.2f})")
    print("\nresults:", write_results("fragments", results))


if __name__ == "__main__":
    main()
