"""Soak a PostgreSQL index: writers killed at random moments, then many writers and readers at once.

1. kills: two ``mitsuke index`` writers with overlapping inputs are SIGKILLed at
   random moments (``--kills`` in all), then each runs to the end. Checked:
   every document is present exactly once, no orphan chunks or empty documents,
   the commit log is gap-free, and a query node answers exactly like a clean
   directory build of the same inputs.
2. mixed: ``--writers`` processes commit pairs of documents (``wK/a``, ``wK/b``,
   same version in one commit) while ``--readers`` processes catch their own
   caches up and search, for ``--seconds``. Checked: zero errors, no reader ever
   sees the two documents of a pair at different versions (a partial commit),
   and the final state answers like a clean build.

    PYTHONPATH=$PWD python bench/pg_soak.py                     # ~4 minutes
    PYTHONPATH=$PWD python bench/pg_soak.py --kills 40 --seconds 120
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench.common import machine, write_results  # noqa: E402

SENT = ["東京は日本の首都である。", "大阪は「天下の台所」と呼ばれる。", "更科蕎麦は白い蕎麦である。",
        "ｶﾀｶﾅと１２３が混じる😀。", "豊岡市は雪が多い。", "電子基準点は国土地理院が設置した。"]
QUESTIONS = ["蕎麦", "東京の首都", "雪", "基準点", "台所", "ｶﾀｶﾅ"]


def doc(key: str, n: int, version: int = 0) -> dict:
    text = f"第{version}版。{n}番目。" + SENT[n % 6] + SENT[(n * 5 + 1) % 6] * (1 + n % 3)
    return {"id": key, "title": key, "text": text}


def answers(searcher) -> list:
    return [[(p.doc_key, p.text, round(p.score, 9)) for p in hits]
            for hits in searcher.search_batch(QUESTIONS, k=10, mode="lexical")]


def clean_answers(docs: list[dict], where: Path) -> list:
    from mitsuke.indexer import IndexBuilder
    from mitsuke.search import Searcher

    with IndexBuilder.open(where, model="none") as b:
        b.add_documents(docs)
    with Searcher.open(where) as s:
        return answers(s)


def node_answers(url: str, cache: Path) -> list:
    from mitsuke.search import Searcher

    with Searcher.open(url, cache=cache) as s:
        return answers(s)


def check_pg(url: str, n_keys: int) -> dict:
    from mitsuke.indexer.location import parse_location
    from mitsuke.indexer.store.postgres import PostgresStore

    store = PostgresStore(parse_location(url), readonly=True)
    with store.snapshot() as snap:
        counts, integrity = snap.counts(), snap.integrity()
        head = store.head(snap.conn)
    store.close()
    assert counts["documents"] == n_keys, (counts, n_keys)
    assert integrity == {"orphan_chunks": 0, "empty_documents": 0}, integrity
    return {"documents": counts["documents"], "chunks": counts["chunks"], "generations": head}


# --------------------------------------------------------------------------- 1. kills

def kills(url: str, root: Path, n_kills: int) -> dict:
    root.mkdir(parents=True)
    inputs: list[Path] = []
    for w in range(2):
        d = root / f"in{w}"
        d.mkdir()
        # keys 0..149 and 100..249: 50 documents both writers index (the same text)
        rows = [doc(f"k{n:03d}", n) for n in range(w * 100, w * 100 + 150)]
        (d / "docs.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
        inputs.append(d / "docs.jsonl")
    cmd = [sys.executable, "-m", "mitsuke.cli", "index", None, "--index", url, "--model", "none", "--batch-docs", "3"]
    env = {**os.environ, "MITSUKE_TEST_SLEEP": "before_commit:0.02"}
    rng = random.Random(7)
    done = 0
    procs: list[subprocess.Popen | None] = [None, None]
    started = [0.0, 0.0]
    deadline = [0.0, 0.0]
    while done < n_kills:
        for w in range(2):
            p = procs[w]
            if p is None or p.poll() is not None:
                c = list(cmd)
                c[4] = str(inputs[w])
                procs[w] = subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                started[w] = time.monotonic()
                deadline[w] = started[w] + rng.uniform(2.0, 6.0)  # start-up takes ~2 s here
            elif time.monotonic() > deadline[w]:
                p.send_signal(signal.SIGKILL)
                p.wait()
                done += 1
                procs[w] = None
        time.sleep(0.05)
    for p in procs:
        if p is not None:
            p.kill()
            p.wait()
    for w in range(2):  # each writer finishes its job
        c = list(cmd)
        c[4] = str(inputs[w])
        r = subprocess.run(c + ["--json"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    stats = check_pg(url, 250)
    want = clean_answers([doc(f"k{n:03d}", n) for n in range(250)], root / "clean")
    same = node_answers(url, root / "node") == want
    assert same
    return {"kills": done, **stats, "same_answers": same}


# --------------------------------------------------------------------------- 2. mixed

def writer(url: str, k: int, seconds: float, out) -> None:
    from mitsuke.indexer import IndexBuilder

    version, errors = 0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with IndexBuilder.open(url, model="none", batch_docs=2) as b:  # one commit per run
                b.add_documents([doc(f"w{k}/a", k, version + 1), doc(f"w{k}/b", k + 1, version + 1)])
            version += 1
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors += 1
            print("writer error", exc, file=sys.stderr)
    out.put(("writer", k, version, errors))


def reader(url: str, k: int, cache: str, seconds: float, out) -> None:
    from mitsuke.search import Searcher

    checks, errors, partial = 0, 0, 0
    end = time.monotonic() + seconds
    with Searcher.open(url, cache=cache, refresh_seconds=0) as s:
        while time.monotonic() < end:
            try:
                s.search_batch(QUESTIONS[:2], k=5, mode="lexical")
                with s.store.snapshot() as snap:
                    rows = snap.chunk_rows(snap.chunk_ids())
                versions: dict[str, set[int]] = {}
                for r in rows.values():
                    m = re.match(r"w(\d+)/[ab]$", r.doc_key)
                    if m:
                        versions.setdefault(m.group(1), set()).add(int(re.match(r"第(\d+)版", r.text).group(1)))
                partial += sum(len(v) > 1 for v in versions.values())
                checks += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors += 1
                print("reader error", exc, file=sys.stderr)
    out.put(("reader", k, checks, errors + partial * 1000))


def mixed(url: str, root: Path, writers: int, readers: int, seconds: float) -> dict:
    from mitsuke.indexer import IndexBuilder

    IndexBuilder.open(url, model="none").close()  # the index exists (no documents) before readers open it
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=writer, args=(url, k, seconds, out)) for k in range(writers)]
    procs += [ctx.Process(target=reader, args=(url, k, str(root / f"r{k}"), seconds, out)) for k in range(readers)]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 300) for _ in procs]
    for p in procs:
        p.join()
    versions = {k: v for kind, k, v, _ in results if kind == "writer"}
    errors = sum(e for *_, e in results)
    checks = sum(v for kind, _, v, _ in results if kind == "reader")
    final = [d for k, v in versions.items() for d in (doc(f"w{k}/a", k, v), doc(f"w{k}/b", k + 1, v))]
    stats = check_pg(url, len(final))
    same = node_answers(url, root / "final") == clean_answers(final, root / "clean")
    return {"writers": writers, "readers": readers, "seconds": seconds, "commits": sum(versions.values()),
            "reader_checks": checks, "errors_or_partial": errors, "same_answers": same, **stats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    from pgserver import start_server

    server = start_server(durable=True)
    root = Path(tempfile.mkdtemp(prefix="mitsuke-soak-"))
    try:
        t = time.monotonic()
        k = kills(server.url(schema="soak_kills"), root / "kills", args.kills) if args.kills else {}
        k["wall_s"] = time.monotonic() - t
        print("kills:", k)
        (root / "mixed").mkdir()
        m = mixed(server.url(schema="soak_mixed"), root / "mixed", args.writers, args.readers, args.seconds)
        print("mixed:", m)
        write_results("pg_soak", {"machine": machine(), "kills": k, "mixed": m})
        ok = (not k or k["same_answers"]) and m["errors_or_partial"] == 0 and m["same_answers"]
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
