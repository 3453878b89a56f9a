"""mitsuke vs txtai vs LangChain's FAISS store: same chunks, same vectors, same machine, same run.

Two passage sets, each embedded once with a cheap deterministic embedding
(bench.common.hash_embed: a random projection of character n-grams — not a
semantic model, but texts sharing characters get near vectors, so neighbour
structure is text-like) and served to every system through one lookup:

- ``eval``: the pooled shared/eval corpora (jsquad-dev + jaquad-train-sample,
  459 articles) cut by mitsuke's own chunker (320 characters, the lexical
  default) into ~7k passages; vectors of dim 1792 (sarashina's width);
  queries = real questions of the two sets.
- ``synthetic``: N (default 100,000) distinct windows of 60-200 characters
  of the same corpus text, dim 384; queries = the same questions.

Each system builds from the same (id, text, vector) triples and persists to
disk (build time includes the save); then queries are run *interleaved*
(query 1 on every system, then query 2, ...) so that load from other jobs
on the machine hits all systems alike. Each search is one call of the
system's public text-in, passages-out API, returning the top 10 with their
text. recall@10 is against exact float32 inner-product search.

What each system does with defaults:
- mitsuke: IndexBuilder + Searcher (dense mode, exact rerank on); flat
  below 50k vectors, IVF-PQ above; SQLite with FTS5 terms (MeCab) of every
  passage — its build does the lexical indexing the others do not do.
- txtai: Embeddings(method="external", backend="faiss", content=True): SQLite
  content, FAISS IDMap,Flat up to 5k rows, IVF<4√n>,Flat above.
- LangChain: langchain_community FAISS.from_embeddings with
  MAX_INNER_PRODUCT (IndexFlatIP, exact), in-memory docstore pickled by
  save_local.

Run (peers live only in the benchmark venv, see bench/README.md):
    PYTHONPATH=$PWD /work/venv-bench/bin/python bench/peers.py
    PYTHONPATH=$PWD /work/venv-bench/bin/python bench/peers.py --sets eval --queries 300
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.common import (SHARED_EVAL, PrecomputedEmbedder, dir_size, exact_topk, hash_embed,  # noqa: E402
                          machine, percentiles, recall_at_k, table, write_results)

log = logging.getLogger("bench.peers")

CORPORA = ("jsquad-dev", "jaquad-train-sample")
K = 10


# --------------------------------------------------------------------------- data

def load_corpus() -> list[dict[str, Any]]:
    docs = []
    for name in CORPORA:
        with open(SHARED_EVAL / name / "corpus.jsonl", encoding="utf-8") as fh:
            docs.extend(json.loads(line) for line in fh if line.strip())
    return docs


def load_questions(n: int, seed: int = 0) -> list[str]:
    qs = []
    for name in CORPORA:
        with open(SHARED_EVAL / name / "queries.jsonl", encoding="utf-8") as fh:
            qs.extend(json.loads(line)["question"] for line in fh if line.strip())
    qs = sorted(set(qs))
    random.Random(seed).shuffle(qs)
    return qs[:n]


def eval_passages(docs: list[dict[str, Any]]) -> list[str]:
    """The passages mitsuke itself makes of the corpus (lexical default budget), deduplicated."""
    from mitsuke.indexer.chunking import Chunker
    from mitsuke.indexer.config import ChunkConfig

    chunker = Chunker(ChunkConfig())
    seen: dict[str, None] = {}
    for d in docs:
        for c in chunker.chunk(d["text"]):
            t = c.text.strip()
            if t:
                seen.setdefault(t, None)
    return list(seen)


def synthetic_passages(docs: list[dict[str, Any]], n: int, seed: int = 0) -> list[str]:
    """``n`` distinct corpus windows of 60-200 characters (overlapping windows form natural clusters)."""
    text = "\n".join(d["text"] for d in docs)
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        length = rng.randint(60, 200)
        start = rng.randrange(0, len(text) - length)
        t = text[start:start + length].strip()
        if len(t) >= 20:
            out.setdefault(t, None)
    return list(out)


# --------------------------------------------------------------------------- systems

class System:
    name = ""

    def build(self, workdir: Path, ids: list[str], texts: list[str], emb: PrecomputedEmbedder) -> Path:
        raise NotImplementedError

    def search(self, query: str) -> list[str]:
        """Top-K passage ids for ``query`` through the system's public text API."""
        raise NotImplementedError

    def describe(self) -> str:
        return ""

    def close(self) -> None:
        pass


class Mitsuke(System):
    name = "mitsuke"

    def build(self, workdir, ids, texts, emb):
        from mitsuke.indexer.builder import IndexBuilder
        from mitsuke.indexer.config import ChunkConfig

        path = workdir / "mitsuke"
        # One chunk per passage (budget above any passage) and no title context:
        # the model input is exactly the passage, as for the peers.
        chunking = ChunkConfig(max_tokens=100_000, max_chars=100_000, title_context=False)
        t0 = time.perf_counter()
        b = IndexBuilder.open(path, model=emb.name, embedder=emb, chunking=chunking)
        with b:
            b.add_documents({"id": i, "text": t} for i, t in zip(ids, texts))
            b.flush()
            # Rows, FTS5 terms (MeCab), float16 vectors are committed here; the
            # ANN index is trained, filled and saved when the builder closes.
            self.phases = {"rows_s": time.perf_counter() - t0}
        self.phases["ann_s"] = time.perf_counter() - t0 - self.phases["rows_s"]
        self.emb = emb
        return path

    def open(self, path: Path) -> None:
        from mitsuke.search.searcher import Searcher

        self.searcher = Searcher.open(path, embedder=self.emb)

    def search(self, query):
        return [p.doc_key for p in self.searcher.search(query, k=K, mode="dense")]

    def describe(self):
        ann = self.searcher.info().get("ann") or {}
        if ann.get("kind") == "ivfpq":
            return f"IVF{ann['nlist']},PQ{ann['m']} nprobe {ann['nprobe']} + exact rerank (fp16)"
        return "flat (exact) + exact rerank (fp16)"

    def close(self):
        self.searcher.close()


class Txtai(System):
    name = "txtai"

    def build(self, workdir, ids, texts, emb):
        from txtai import Embeddings

        path = workdir / "txtai"

        def transform(inputs):  # txtai wants a plain function
            return emb.lookup(list(inputs))

        self.emb = Embeddings(method="external", transform=transform, backend="faiss", content=True)
        self.emb.index([(i, t, None) for i, t in zip(ids, texts)])
        self.emb.save(str(path))
        return path

    def open(self, path: Path) -> None:
        pass  # queried in memory, as right after a build

    def search(self, query):
        return [r["id"] for r in self.emb.search(query, K)]

    def describe(self):
        backend = self.emb.ann.backend
        kind = type(backend).__name__
        nprobe = getattr(backend, "nprobe", None)
        if hasattr(backend, "nlist"):
            return f"{kind} nlist {backend.nlist} nprobe {self.emb.ann.nprobe()}"
        return kind + (f" nprobe {nprobe}" if nprobe else "")

    def close(self):
        self.emb.close()


class LangChainFaiss(System):
    name = "langchain"

    def build(self, workdir, ids, texts, emb):
        from langchain_community.vectorstores import FAISS
        from langchain_community.vectorstores.utils import DistanceStrategy
        from langchain_core.embeddings import Embeddings

        class Lookup(Embeddings):
            def embed_documents(self, xs):
                return emb.lookup(xs).tolist()

            def embed_query(self, x):
                return emb.lookup([x])[0].tolist()

        path = workdir / "langchain"
        vecs = emb.lookup(texts)
        self.store = FAISS.from_embeddings(list(zip(texts, vecs)), Lookup(), ids=list(ids),
                                           distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT)
        self.store.save_local(str(path))
        return path

    def open(self, path: Path) -> None:
        pass

    def search(self, query):
        return [d.id for d, _ in self.store.similarity_search_with_score(query, k=K)]

    def describe(self):
        return type(self.store.index).__name__

    def close(self):
        pass


SYSTEMS: dict[str, Callable[[], System]] = {"mitsuke": Mitsuke, "txtai": Txtai, "langchain": LangChainFaiss}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("faiss-cpu", "txtai", "langchain-community", "langchain-core", "numpy", "sqlalchemy", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    from mitsuke import __version__

    out["mitsuke"] = __version__
    return out


# --------------------------------------------------------------------------- run

def run_set(name: str, texts: list[str], questions: list[str], dim: int, systems: list[str],
            workdir: Path) -> list[dict[str, Any]]:
    print(f"\n== {name}: {len(texts):,} passages, dim {dim}, {len(questions)} queries", flush=True)
    t0 = time.perf_counter()
    base = hash_embed(texts, dim)
    qvecs = hash_embed(questions, dim)
    embed_s = time.perf_counter() - t0
    lookup = {t: base[i] for i, t in enumerate(texts)}
    lookup.update({q: qvecs[i] for i, q in enumerate(questions)})
    emb = PrecomputedEmbedder(lookup, dim, name=f"hash-ngram-{dim}")
    truth = exact_topk(base, qvecs, K)
    ids = [str(i) for i in range(len(texts))]
    # How separable the neighbours are: IVF/PQ recall depends on the gap between
    # a query's true neighbours and the rest, which differs between embedders.
    sims = np.einsum("qd,qkd->qk", qvecs, base[truth])
    rng = np.random.default_rng(0)
    background = float(np.mean(np.sum(qvecs[rng.integers(0, len(qvecs), 5000)]
                                      * base[rng.integers(0, len(base), 5000)], axis=1)))
    contrast = {"top1_cos": float(sims[:, 0].mean()), f"top{K}_cos": float(sims[:, -1].mean()),
                "random_cos": background}
    print(f"   vectors computed once in {embed_s:.1f} s; exact top-{K} computed; mean cosine top-1 "
          f"{contrast['top1_cos']:.3f}, top-{K} {contrast[f'top{K}_cos']:.3f}, random pair {background:.3f}",
          flush=True)

    rows: list[dict[str, Any]] = []
    live: list[tuple[System, dict[str, Any]]] = []
    for sname in systems:
        sysobj = SYSTEMS[sname]()
        row: dict[str, Any] = {"set": name, "system": sname, "passages": len(texts), "dim": dim, **contrast}
        try:
            gc.collect()
            t0 = time.perf_counter()
            path = sysobj.build(workdir / name, ids, texts, emb)
            row["build_s"] = time.perf_counter() - t0
            row["disk_mb"] = dir_size(path) / 2**20
            sysobj.open(path)
            row["index"] = sysobj.describe()
            row.update(getattr(sysobj, "phases", {}))
            for q in questions[:10]:  # warm caches, load lazily built parts
                sysobj.search(q)
            live.append((sysobj, row))
            print(f"   {sname:<10} built in {row['build_s']:.1f} s, {row['disk_mb']:.1f} MB ({row['index']})",
                  flush=True)
        except Exception as exc:  # a peer that cannot run is recorded, not fatal
            row["error"] = f"{type(exc).__name__}: {exc}"
            print(f"   {sname:<10} FAILED: {row['error']}", flush=True)
        rows.append(row)

    lat: dict[str, list[float]] = {s.name: [] for s, _ in live}
    found: dict[str, list[list[int]]] = {s.name: [] for s, _ in live}
    for q in questions:
        for sysobj, _ in live:  # interleaved: background load hits every system alike
            t0 = time.perf_counter()
            got = sysobj.search(q)
            lat[sysobj.name].append((time.perf_counter() - t0) * 1000.0)
            found[sysobj.name].append([int(x) for x in got])
    for sysobj, row in live:
        p = percentiles(lat[sysobj.name])
        row.update({"p50_ms": p["p50_ms"], "p95_ms": p["p95_ms"],
                    f"recall@{K}": recall_at_k(found[sysobj.name], truth, K)})
        sysobj.close()
    ref = next((r for r in rows if r["system"] == "mitsuke" and "error" not in r), None)
    if ref:
        for r in rows:
            if "error" in r:
                continue
            r["build_x"] = r["build_s"] / ref["build_s"]
            r["disk_x"] = r["disk_mb"] / ref["disk_mb"]
            r["p50_x"] = r["p50_ms"] / ref["p50_ms"]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="eval,synthetic", help="comma-separated: eval, synthetic")
    ap.add_argument("--systems", default="mitsuke,txtai,langchain")
    ap.add_argument("--synthetic-n", type=int, default=100_000)
    ap.add_argument("--eval-dim", type=int, default=1792)
    ap.add_argument("--synthetic-dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--workdir", default=None, help="where the indexes go (default: a temp dir, removed)")
    ap.add_argument("--json", default="peers", help="results name under bench/results/")
    ap.add_argument("--faiss-threads", type=int, default=0,
                    help="faiss OpenMP threads for every system (default: faiss's own, = cores)")
    args = ap.parse_args(argv)
    if args.faiss_threads:
        import faiss

        faiss.omp_set_num_threads(args.faiss_threads)
    logging.basicConfig(level=logging.WARNING)
    if not (SHARED_EVAL / CORPORA[0] / "corpus.jsonl").exists():
        print(f"needs {SHARED_EVAL} (the shared eval data beside the repository)", file=sys.stderr)
        return 2
    systems = [s for s in args.systems.split(",") if s]
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mitsuke-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    docs = load_corpus()
    questions = load_questions(args.queries)
    rows: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        for name in [s for s in args.sets.split(",") if s]:
            if name == "eval":
                rows += run_set("eval", eval_passages(docs), questions, args.eval_dim, systems, work)
            elif name == "synthetic":
                texts = synthetic_passages(docs, args.synthetic_n)
                rows += run_set("synthetic", texts, questions, args.synthetic_dim, systems, work)
            else:
                ap.error(f"unknown set {name!r}: use eval and/or synthetic")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    cols = ["set", "system", "passages", "dim", "build_s", "disk_mb", "p50_ms", "p95_ms", f"recall@{K}",
            "build_x", "disk_x", "p50_x", "index"]
    print()
    print(table(rows, cols, title="peers (ratios are system / mitsuke; lower is better except recall)"))
    phases = [r for r in rows if "rows_s" in r]
    if phases:
        print("\nmitsuke build phases: " + "; ".join(
            f"{r['set']}: rows+terms+vectors {r['rows_s']:.1f} s, ANN train/add/save {r['ann_s']:.1f} s"
            for r in phases))
    for r in rows:
        if "error" in r:
            print(f"{r['set']} {r['system']}: {r['error']}")
    path = write_results(args.json, {"started": started, "args": vars(args), "versions": versions(),
                                     "rows": rows})
    print(f"\nversions: {json.dumps(versions())}\nmachine: {json.dumps(machine())}\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
