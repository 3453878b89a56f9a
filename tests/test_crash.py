"""kill -9 at any moment (invariant 6), and readers during writes (invariant 5).

The indexer runs as a real subprocess (`python -m mitsuke.cli index`) over a
real Japanese corpus with the tiny model; it is SIGKILLed at named points of
the write path (``MITSUKE_TEST_KILL_AT``: mid vector write, before and after
the SQLite commit, mid ANN save, mid manifest replace, at each compaction
step) and at random times. After every kill the index must open and answer;
after a final run it must equal a clean build, and no committed document may
have been embedded again (``MITSUKE_TEST_EMBED_LOG`` records every embedding).
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from corpus import SENTENCES
from mitsuke.indexer import IndexBuilder
from mitsuke.indexer.config import ChunkConfig
from mitsuke.indexer.store import MetadataStore
from mitsuke.search import Searcher

REPO = Path(__file__).resolve().parent.parent

def write_corpus(src: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    src.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        body = "".join(rng.choice(SENTENCES) for _ in range(rng.randint(2, 6))) + f"第{i}番の記録。"
        path = src / f"記録{i:03d}.txt"
        if i % 7 == 3:
            path.write_bytes(body.encode("cp932", errors="replace"))
        else:
            path.write_text(body, encoding="utf-8")


def env_for(embed_log: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", MITSUKE_TEST_EMBED_LOG=str(embed_log))
    env.pop("MITSUKE_TEST_KILL_AT", None)
    env.update(extra)
    return env


def run_index(src, idx, model, embed_log, *extra, kill_at=None, kill_after=None, sleep=None) -> int:
    cmd = [sys.executable, "-m", "mitsuke.cli", "index", str(src), "--index", str(idx), "--model", str(model),
           "--max-tokens", "24", "--max-chars", "40", "--batch-docs", "3", "--compact-min-rows", "0", "--json",
           *extra]
    env = env_for(embed_log, **({"MITSUKE_TEST_KILL_AT": kill_at} if kill_at else {}),
                  **({"MITSUKE_TEST_SLEEP": sleep} if sleep else {}))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, -signal.SIGKILL), err.decode(errors="replace")[-2000:]
    return proc.returncode


def committed(idx: Path) -> tuple[set[tuple[str, str]], int]:
    """(key, content hash) of committed documents and the chunk count, checking referential sanity."""
    if not (idx / "meta.sqlite").exists():
        return set(), 0
    store = MetadataStore(idx / "meta.sqlite", readonly=True)
    try:
        with store.snapshot() as snap:
            hashes = snap.document_hashes()
            counts = snap.counts()
            orphans = snap.integrity()["orphan_chunks"]
            rows = [r for _, r in snap.live_vectors()]
            vector_rows = snap.vector_rows()
    finally:
        store.close()
    docs = [(k, h) for k, (_, h) in hashes.items()]
    n_chunks = counts["chunks"]
    assert counts["documents"] == len(hashes), "a document is present more than once"
    assert orphans == 0
    assert len(rows) == len(set(rows)) and all(r < vector_rows for r in rows)
    return set(docs), n_chunks


def assert_opens_and_answers(idx: Path, embedder) -> None:
    if not (idx / "meta.sqlite").exists():
        return  # killed before anything was committed
    with Searcher.open(idx, embedder=embedder) as s:
        n = s.info()["chunks"]
        for mode in ("lexical", "dense", "hybrid") if embedder else ("lexical",):
            hits = s.search("東京の人口は？", k=5, mode=mode)
            assert len(hits) == min(5, n) or mode == "lexical"
            for h in hits:
                assert h.text and h.doc_key


def embedded_since(log: Path, offset: int) -> tuple[set[tuple[str, str]], int]:
    if not log.exists():
        return set(), offset
    data = log.read_bytes()
    lines = data[offset:].decode("utf-8").splitlines()
    return {tuple(line.split("\t")) for line in lines if line}, len(data)


def clean_build(src: Path, dest: Path, model, embedder) -> tuple[Counter, list]:
    with IndexBuilder.open(dest, model=str(model) if model else "none", embedder=embedder,
                           chunking=ChunkConfig(max_tokens=24, max_chars=40)) as b:
        b.add_paths([src])
    return index_contents(dest), search_snapshot(dest, embedder)


def index_contents(idx: Path) -> Counter:
    store = MetadataStore(idx / "meta.sqlite", readonly=True)
    with store.snapshot() as snap:
        rows = snap.chunk_rows(snap.chunk_ids()).values()
    store.close()
    return Counter((r.doc_key, r.char_start, r.char_end, r.text) for r in rows)


def search_snapshot(idx: Path, embedder) -> list:
    with Searcher.open(idx, embedder=embedder) as s:
        modes = ("dense", "lexical") if embedder else ("lexical",)
        return [[(h.doc_key, h.char_start, round(h.score, 3)) for h in s.search(q, k=8, mode=m)]
                for q in ("東京の人口", "蕎麦", "降雪量", "ｶﾀｶﾅ") for m in modes]


@pytest.mark.slow
def test_sigkill_at_any_moment_loses_nothing_and_reembeds_nothing(tmp_path, tiny_model, tiny_embedder):
    rng = random.Random(20261127)
    src, idx, log = tmp_path / "src", tmp_path / "idx", tmp_path / "embedded.log"
    write_corpus(src, 30, seed=1)
    kills = 0
    offset = 0

    def attempt(*extra, kill_at=None, kill_after=None, sleep=None, model=tiny_model, index=idx,
                embedder=tiny_embedder):
        nonlocal kills, offset
        before, _ = committed(index)
        rc = run_index(src, index, model, log, *extra, kill_at=kill_at, kill_after=kill_after, sleep=sleep)
        kills += rc == -signal.SIGKILL
        if kill_at:
            assert rc == -signal.SIGKILL, f"the run never reached {kill_at}"
        assert_opens_and_answers(index, embedder)
        again, offset = embedded_since(log, offset)
        assert not again & before, f"committed documents embedded again: {sorted(again & before)[:3]}"
        return rc

    # Dense index: named points of the write path (mid vector write, around the
    # SQLite commit, mid ANN save), each a separate run that resumes the last.
    for point in ["vectors_half_written:2", "before_commit:2", "after_commit:3", "ann_written:1"]:
        attempt(kill_at=point)
    # The corpus changes: a third of it goes, a file is edited, some are added;
    # --prune deletes and compaction rewrites vectors.f16, killed at its steps.
    for p in sorted(src.iterdir())[:10]:
        p.unlink()
    write_corpus(src / "追加", 6, seed=2)
    (src / "記録020.txt").write_text("編集された記録：東京の人口は増えた。", encoding="utf-8")
    for point in ["compact_written:1", "compact_committed:1"]:
        attempt("--prune", kill_at=point)
    assert attempt("--prune") == 0

    contents, results = clean_build(src, tmp_path / "clean", tiny_model, tiny_embedder)
    docs, n_chunks = committed(idx)
    assert len(docs) == 26 and n_chunks == sum(contents.values())
    assert index_contents(idx) == contents, "every document exactly once, chunked as a clean build"
    assert search_snapshot(idx, tiny_embedder) == results
    assert not list(idx.glob("vectors.f16.compact-*")) and not list(idx.glob(".*.tmp"))

    # Lexical-only index (fast runs): named points, then kills at random moments.
    lidx = tmp_path / "lex"
    write_corpus(src / "語彙", 40, seed=3)
    lex = dict(model="none", index=lidx, embedder=None)
    for point in ["before_commit:4", "after_commit:6", "before_replace:manifest.json:1"]:
        attempt(kill_at=point, **lex)
    for i in range(30):
        if kills >= 22:
            break
        # New files first, so every run has real work to be killed in (a run over
        # an unchanged folder may finish before the kill). Named to sort after
        # the files already there, so a clean build breaks score ties alike.
        write_corpus(src / "語彙" / f"追記{i:03d}", 15, seed=100 + i)
        # Stalls around each commit stretch a run past the kill window whatever
        # the machine's speed, so the kill lands inside the write path.
        attempt(kill_after=rng.uniform(0.5, 2.5), sleep="before_commit:0.2,after_commit:0.2", **lex)
    assert attempt(**lex) == 0
    contents, results = clean_build(src, tmp_path / "lexclean", None, None)
    assert index_contents(lidx) == contents
    assert search_snapshot(lidx, None) == results
    assert kills >= 20, f"only {kills} runs were actually killed"


READER = textwrap.dedent("""
    import sys, time, numpy as np
    from pathlib import Path
    from mitsuke.search import Searcher
    from mitsuke.indexer.embedding import Embedder
    idx, model, stop = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    emb = Embedder.from_pretrained(model, device="cpu")
    while not (idx / "meta.sqlite").exists():
        time.sleep(0.05)
    s = Searcher.open(idx, embedder=emb)
    queries = ["東京の人口", "蕎麦", "降雪量", "ｶﾀｶﾅ", "記録"]
    print("ready", flush=True)
    n = 0
    while not stop.exists():
        q = queries[n % len(queries)]
        hits = s.search(q, k=5, mode="dense")
        qv = emb.encode_queries([q])[0]
        for h in hits:
            assert h.text.startswith(h.doc_key + "版"), (h.doc_key, h.text)
            exact = float(emb.encode_documents([h.text])[0] @ qv)
            assert abs(exact - h.score) < 3e-3, ("vector row of another chunk", h.doc_key, exact, h.score)
        s.search(q, k=5, mode="lexical")
        with s.store.snapshot() as snap:  # one snapshot: whole documents or nothing
            counts, integrity = snap.counts(), snap.integrity()
            assert integrity == {"orphan_chunks": 0, "empty_documents": 0}, (counts, integrity)
        n += 1
    print("searches", n, flush=True)
""")


@pytest.mark.slow
def test_reader_searching_in_a_loop_during_adds_deletes_and_compactions(tmp_path, tiny_model, tiny_embedder):
    idx, stop = tmp_path / "idx", tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(idx), str(tiny_model), str(stop)],
                              env=env_for(tmp_path / "unused.log"), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rng = np.random.default_rng(3)

    def doc(i: int, version: int) -> dict:
        body = "".join(SENTENCES[j] for j in rng.integers(0, len(SENTENCES), 1))
        return {"id": f"文{i}", "text": f"文{i}版{version}：{body}"}

    with IndexBuilder.open(idx, model=str(tiny_model), embedder=tiny_embedder) as b:
        b.add_documents([doc(i, 0) for i in range(20)])
    assert reader.stdout.readline().strip() == "ready"
    live, next_id, compactions = set(range(20)), 20, 0
    for round_ in range(6):
        with IndexBuilder.open(idx, model=str(tiny_model), embedder=tiny_embedder, batch_docs=4,
                               compact_min_rows=0) as b:
            b.add_documents([doc(i, 0) for i in range(next_id, next_id + 12)])
            live |= set(range(next_id, next_id + 12))
            next_id += 12
            edit = sorted(live)[:3]
            b.add_documents([doc(i, round_ + 1) for i in edit])
            gone = [int(x) for x in rng.choice(sorted(live), 10, replace=False)]
            b.delete([f"文{i}" for i in gone])
            live -= set(gone)
            compactions += b.maybe_compact()
    stop.touch()
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err[-3000:]
    assert compactions >= 3
    assert int(out.split()[-1]) >= 5, out
