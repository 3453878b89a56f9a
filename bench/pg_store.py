"""PostgreSQL index vs directory (SQLite) index on the same corpus, in one run.

- ingest: documents/s and chunks/s of ``IndexBuilder`` into a directory and into
  PostgreSQL (one writer each; vectors from a hash embedder, so storage and
  lexical analysis are measured, not a model), and the PostgreSQL/SQLite ratio;
- catch-up: a query node's cache brought up to date after ``--new-chunks`` new
  chunks were committed (``indexer.pg_cache.sync_cache``);
- query p50/p95: hybrid and lexical searches on a caught-up node (checking the
  commit log at most once a second, as by default) vs the directory index.

The server is a throwaway cluster on 127.0.0.1 (tests/pgserver.py) with
PostgreSQL's durable defaults (fsync on), SQLite with synchronous=FULL.

    PYTHONPATH=$PWD python bench/pg_store.py                 # ~3 minutes on 2 busy cores
    PYTHONPATH=$PWD python bench/pg_store.py --new-chunks 10000 --queries 300
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench.common import SHARED_EVAL, eval_corpus, hash_embed, machine, percentiles, table, write_results  # noqa: E402
from mitsuke.indexer import IndexBuilder  # noqa: E402
from mitsuke.indexer.layout import ModelInfo  # noqa: E402
from mitsuke.search import Searcher  # noqa: E402


class HashEmbedder:
    """Deterministic character n-gram hash vectors (bench.common.hash_embed) behind the embedder interface."""

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim
        self.device, self.dtype_name, self.batch_tokens = "cpu", "float32", 0

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(name=f"hash-{self.dim}", revision=None, dim=self.dim, pooling="none", normalize=True,
                         max_length=1_000_000)

    def count_tokens(self, texts):
        return [len(t) for t in texts]

    def encode_documents(self, texts, progress=None):
        return hash_embed(list(texts), self.dim)

    def encode_queries(self, texts):
        return hash_embed(list(texts), self.dim)


def build(where, docs, emb) -> tuple[float, int]:
    t = time.perf_counter()
    with IndexBuilder.open(where, model=emb.info.name, embedder=emb, batch_docs=64) as b:
        b.add_documents(docs)
        assert not b.summary.failed
    return time.perf_counter() - t, b.summary.chunks_embedded


def copies(docs, start: int, chunks_wanted: int, chunks_per_doc: float) -> list[dict]:
    """New documents (new keys, changed text) holding about ``chunks_wanted`` chunks."""
    n = int(chunks_wanted / max(chunks_per_doc, 0.1)) + 1
    return [{"id": f"copy{start + i}/{docs[i % len(docs)]['id']}", "title": docs[i % len(docs)]["title"],
             "text": f"第{start + i}版。" + docs[i % len(docs)]["text"]} for i in range(n)]


def query_times(a, b, questions, **kw) -> tuple[dict[str, float], dict[str, float]]:
    """Percentiles of ``a`` and ``b`` answering ``questions``, interleaved (each question on both, order
    alternating), so that load from other processes falls on both alike."""
    ms: tuple[list[float], list[float]] = ([], [])
    for i, q in enumerate(questions):
        for j in ((0, 1) if i % 2 == 0 else (1, 0)):
            t = time.perf_counter()
            (a, b)[j].search(q, k=10, **kw)
            ms[j].append((time.perf_counter() - t) * 1000)
    return percentiles(ms[0]), percentiles(ms[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=3, help="corpus copies to ingest (more chunks per run)")
    ap.add_argument("--new-chunks", type=int, default=10000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--dim", type=int, default=384)
    args = ap.parse_args()
    from pgserver import start_server

    base = eval_corpus()
    docs = list(base)
    for c in range(1, args.copies):
        docs += [{"id": f"c{c}/{d['id']}", "title": d["title"], "text": f"写し{c}。" + d["text"]} for d in base]
    questions = [json.loads(line)["question"] for line in
                 (SHARED_EVAL / "jsquad-dev" / "queries.jsonl").read_text(encoding="utf-8").splitlines()][:args.queries]
    emb = HashEmbedder(args.dim)
    server = start_server(durable=True)
    root = Path(tempfile.mkdtemp(prefix="mitsuke-pgbench-"))
    out: dict = {"machine": machine(), "docs": len(docs)}
    try:
        url = server.url(schema="bench")
        sql_s, n_chunks = build(root / "dir", docs, emb)
        pg_s, _ = build(url, docs, emb)
        out["ingest"] = {"chunks": n_chunks, "sqlite_s": sql_s, "postgres_s": pg_s,
                         "sqlite_chunks_per_s": n_chunks / sql_s, "postgres_chunks_per_s": n_chunks / pg_s,
                         "ratio": sql_s / pg_s}
        t = time.perf_counter()
        node = Searcher.open(url, embedder=emb, cache=root / "cache")
        out["cold_cache_build_s"] = time.perf_counter() - t
        new = copies(base, 10 ** 6, args.new_chunks, n_chunks / len(docs))
        _, added = build(url, new, emb)
        t = time.perf_counter()
        node.refresh()
        out["catch_up"] = {"new_chunks": added, "seconds": time.perf_counter() - t}
        with IndexBuilder.open(root / "dir", model=emb.info.name, embedder=emb, batch_docs=64) as b:
            b.add_documents(new)
        with Searcher.open(root / "dir", embedder=emb) as d:
            for mode in ("hybrid", "lexical"):
                query_times(d, node, questions[:20], mode=mode)  # warm both
                dq, nq = query_times(d, node, questions, mode=mode)
                out[f"query_{mode}"] = {"directory": dq, "pg_node": nq,
                                        "p50_ratio": nq["p50_ms"] / dq["p50_ms"]}
            same = all([(p.doc_key, round(p.score, 9)) for p in node.search(q, k=10)]
                       == [(p.doc_key, round(p.score, 9)) for p in d.search(q, k=10)] for q in questions[:50])
            out["same_answers_first_50"] = same
        node.close()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    ing = out["ingest"]
    print(table([{"backend": "directory (SQLite)", "chunks/s": f"{ing['sqlite_chunks_per_s']:.0f}",
                  "seconds": f"{ing['sqlite_s']:.1f}"},
                 {"backend": "PostgreSQL", "chunks/s": f"{ing['postgres_chunks_per_s']:.0f}",
                  "seconds": f"{ing['postgres_s']:.1f}"}], ["backend", "chunks/s", "seconds"],
                f"ingest {ing['chunks']} chunks: PostgreSQL/SQLite = {ing['ratio']:.2f}x"))
    print(f"catch-up of {out['catch_up']['new_chunks']} new chunks: {out['catch_up']['seconds']:.2f} s; "
          f"cold cache build {out['cold_cache_build_s']:.2f} s")
    for mode in ("hybrid", "lexical"):
        q = out[f"query_{mode}"]
        print(f"{mode}: p50 directory {q['directory']['p50_ms']:.2f} ms, PG node {q['pg_node']['p50_ms']:.2f} ms "
              f"({q['p50_ratio']:.2f}x)")
    print("same answers (first 50 questions):", out["same_answers_first_50"])
    write_results("pg_store", out)


if __name__ == "__main__":
    main()
