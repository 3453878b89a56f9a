"""Distributed indexing on a real local Ray cluster (CPU actors, the tiny model), bound to 127.0.0.1.

One session-scoped cluster (2 CPUs) serves every test here and starts only
when one of them runs. The Ray path must build what a single-process run
builds (documents, chunks, offsets, vectors, search results), skip unchanged
documents before they are embedded, survive a SIGKILLed driver without
re-embedding what was committed, and listen on nothing but loopback.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="needs mitsuke[ray]")

from corpus import DATA, SENTENCES  # noqa: E402
from jadocs import write_pdf  # noqa: E402
from mitsuke.cli.options import EXIT_PARTIAL  # noqa: E402
from mitsuke.indexer import IndexBuilder  # noqa: E402
from mitsuke.indexer.config import ChunkConfig, EmbedConfig  # noqa: E402
from mitsuke.indexer.distributed import index_with_ray  # noqa: E402
from mitsuke.indexer.distributed.cluster import connect, is_loopback, listening_sockets, process_tree  # noqa: E402
from mitsuke.indexer.store import MetadataStore  # noqa: E402
from mitsuke.search import Searcher  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CHUNKING = ChunkConfig(max_tokens=48, max_chars=80)
QUERIES = ["豊岡市の年間平均降雪量はどれくらい？", "清水建設の創業者は誰ですか", "ｶﾀｶﾅの「空港」😀", "更科蕎麦"]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One local Ray cluster for the session: 2 CPUs, loopback only; workers log embeddings to a file."""
    log = tmp_path_factory.mktemp("ray") / "embedded.log"
    os.environ["MITSUKE_TEST_EMBED_LOG"] = str(log)  # inherited by the cluster's workers
    try:
        connect(None, num_cpus=2)
    finally:
        del os.environ["MITSUKE_TEST_EMBED_LOG"]
    yield {"address": ray.get_runtime_context().gcs_address, "embed_log": log}
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """data/ plus JSONL documents (metadata, an id-less line, a bad line), CP932, a PDF, a CSV, an empty JSONL."""
    root = tmp_path_factory.mktemp("ray-corpus")
    for p in DATA.iterdir():
        if p.suffix in (".txt", ".md"):
            shutil.copy(p, root / p.name)
    lines = [json.dumps({"id": f"jsonl-{i}", "title": f"記録{i}", "text": "".join(SENTENCES[i:i + 4]) * 2,
                         "lang": "ja", "n": i}, ensure_ascii=False) for i in range(5)]
    lines.insert(2, json.dumps({"text": "「彼は『行く』と言った」😀ｶﾀｶﾅ"}, ensure_ascii=False))
    lines.insert(4, "{not json")
    (root / "docs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "empty.jsonl").write_text("", encoding="utf-8")
    (root / "シフトJIS.txt").write_bytes(("ｶﾀｶﾅと全角１２３。" + SENTENCES[1] * 3).encode("cp932"))
    write_pdf(root / "報告書.pdf", [SENTENCES[4] * 3, SENTENCES[6] * 3])  # pages: chunks keep page breaks
    (root / "表.csv").write_text("名前,text\n東京,首都である。\n大阪,「天下の台所」と呼ばれる。\n", encoding="utf-8")
    return root


def build_single(corpus: Path, dest: Path, model: Path):
    with IndexBuilder.open(dest, model=str(model), chunking=CHUNKING, embed=EmbedConfig(device="cpu")) as b:
        b.add_paths([corpus])
    return b.summary


@pytest.fixture(scope="module")
def single_index(corpus, tiny_model, tmp_path_factory) -> tuple[Path, dict]:
    dest = tmp_path_factory.mktemp("single") / "idx"
    return dest, build_single(corpus, dest, tiny_model).to_dict()


def contents(idx: Path) -> tuple[list, list, dict[int, int]]:
    """Documents (id, key, hash), chunks (ids, offsets, text, headings, document fields) and chunk id -> vector row."""
    store = MetadataStore(idx / "meta.sqlite", readonly=True)
    try:
        with store.snapshot() as snap:
            docs = sorted((doc_id, key, digest) for key, (doc_id, digest) in snap.document_hashes().items())
            rows = snap.chunk_rows(snap.chunk_ids())
            pages = snap.page_starts_of_chunks(list(rows))
    finally:
        store.close()
    chunk_list = [(r.id, r.doc_id, r.doc_key, r.chunk_index, r.char_start, r.char_end, r.text, r.token_count,
                   r.headings, r.title, r.source, r.source_type, json.dumps(r.metadata, sort_keys=True))
                  for _, r in sorted(rows.items())]
    docs = [(*d, pages.get(d[1], ())) for d in docs]
    return docs, chunk_list, {i: r.vector_row for i, r in rows.items()}


def vectors(idx: Path, dim: int) -> np.ndarray:
    return np.fromfile(idx / "vectors.f16", dtype=np.float16).reshape(-1, dim).astype(np.float32)


def search_results(idx: Path, embedder) -> list:
    out = []
    with Searcher.open(idx, embedder=embedder) as s:
        for q in QUERIES:
            for mode in ("dense", "lexical", "hybrid"):
                out.append([(h.doc_key, h.char_start, h.char_end, h.pages, h.score)
                            for h in s.search(q, k=5, mode=mode)])
    return out


def embedded_lines(log: Path, since: int = 0) -> tuple[list[tuple[str, str]], int]:
    data = log.read_bytes() if log.exists() else b""
    return [tuple(x.split("\t")) for x in data[since:].decode().splitlines() if x], len(data)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


# --------------------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def ray_index(ray_cluster, corpus, tiny_model, tmp_path_factory) -> dict:
    """The corpus indexed through Ray (one CPU actor, batches of 4 documents), its embedding actor
    SIGKILLed mid-run; what the driver saw on the way (progress events, listening sockets)."""
    events: Counter = Counter()
    sockets: list = []
    killed: list[int] = []

    def on_progress(kind: str, n: int) -> None:
        events[kind] += n
        if kind == "tokens" and not sockets:  # mid-run: the actors and tasks are alive now
            tree = process_tree(os.getpid())
            sockets.extend(listening_sockets(tree))
            # A worker dies: Ray restarts the embedding actor and retries its batch.
            killed.extend(pid for pid in tree if b"EmbedWorker" in _cmdline(pid))
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    idx = tmp_path_factory.mktemp("ray-index") / "idx"
    with IndexBuilder.open(idx, model=str(tiny_model), chunking=CHUNKING, embed=EmbedConfig(device="cpu")) as b:
        b.on_progress = on_progress
        summary = index_with_ray(b, [corpus], actors=1, docs_per_batch=4).to_dict()
    return {"idx": idx, "summary": summary, "events": events, "sockets": sockets, "killed": killed}


def test_ray_builds_what_a_single_process_builds(ray_index, single_index, tiny_embedder):
    single, single_summary = single_index
    idx, summary = ray_index["idx"], ray_index["summary"]
    assert len(ray_index["killed"]) == 1, "the embedding actor was not found: the retry was not tested"
    for key in ("added", "updated", "unchanged", "deleted", "chunks_embedded"):
        assert summary[key] == single_summary[key], key
    assert summary["failed"] == single_summary["failed"] and len(summary["failed"]) == 1  # the bad JSONL line
    docs_s, chunks_s, rows_s = contents(single)
    docs_r, chunks_r, rows_r = contents(idx)
    assert docs_r == docs_s and len(docs_r) == summary["added"]
    assert [d[3] for d in docs_r if d[1] == "報告書.pdf"][0], "the PDF lost its pages"
    assert chunks_r == chunks_s and len(chunks_r) == summary["chunks_embedded"] > len(docs_r)
    dim = tiny_embedder.dim
    vs, vr = vectors(single, dim), vectors(idx, dim)
    ids = sorted(rows_s)
    a, r = vs[[rows_s[i] for i in ids]], vr[[rows_r[i] for i in ids]]
    # vectors.f16 stores float16: the float32 vectors agree to ~1e-7 (batches of other widths sum in
    # another order), which can flip a rounding by one float16 step and no more.
    step = np.spacing(np.maximum(np.abs(a), np.abs(r)).astype(np.float16)).astype(np.float32)
    assert (np.abs(a - r) <= step).all(), f"vectors differ by up to {np.abs(a - r).max()}"
    assert (a != r).mean() < 0.01
    got, want = search_results(idx, tiny_embedder), search_results(single, tiny_embedder)
    assert [[h[:4] for h in hits] for hits in got] == [[h[:4] for h in hits] for hits in want]
    assert np.allclose([h[4] for hits in got for h in hits], [h[4] for hits in want for h in hits], atol=2e-3)


def test_progress_counts_inputs_and_tokens(ray_index, corpus):
    events, summary = ray_index["events"], ray_index["summary"]
    n_inputs = len(list(corpus.iterdir()))
    assert events["total"] == events["inputs"] == n_inputs
    assert events["tokens"] > 0 and events["documents"] == summary["added"]


def test_nothing_listens_outside_loopback(ray_index):
    """Driver, GCS, raylet, workers and actors of the running cluster listen on 127.0.0.1 only."""
    sockets = ray_index["sockets"]
    assert len({pid for pid, _, _ in sockets}) >= 3, f"too few listeners seen to prove anything: {sockets}"
    outside = [s for s in sockets if not is_loopback(s[1])]
    assert not outside, f"Ray listens outside 127.0.0.1: {outside}"


def test_unchanged_documents_are_not_sent_to_the_embedders(ray_cluster, ray_index, corpus, tiny_model, tmp_path,
                                                           monkeypatch):
    idx, src = tmp_path / "idx", tmp_path / "corpus"
    shutil.copytree(ray_index["idx"], idx)
    shutil.copytree(corpus, src)
    (src / "享保.txt").write_text("享保は日本の元号の一つ。「享保の改革」😀ｶﾀｶﾅ。", encoding="utf-8")
    log = ray_cluster["embed_log"]
    _, offset = embedded_lines(log)
    monkeypatch.chdir(tmp_path)  # a relative path: the workers (other working directory) must still find it
    with IndexBuilder.open(idx, model=str(tiny_model), embed=EmbedConfig(device="cpu")) as b:
        before = b.known_hashes()
        summary = index_with_ray(b, ["corpus"])
    assert (summary.added, summary.updated, summary.unchanged) == (0, 1, len(before) - 1)
    sent, _ = embedded_lines(log, offset)
    assert [k for k, _ in sent] == ["享保.txt"] and sent[0][1] != before["享保.txt"]  # only the edited one
    sources = {c[2]: c[10] for c in contents(idx)[1]}
    assert sources["享保.txt"] == str(Path("corpus") / "享保.txt")  # recorded as given, as a local run does


def run_driver(corpus: Path, idx: Path, model: Path, address: str, log: Path, kill_at: str | None):
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", MITSUKE_TEST_EMBED_LOG=str(log))
    env.pop("MITSUKE_TEST_KILL_AT", None)
    if kill_at:
        env["MITSUKE_TEST_KILL_AT"] = kill_at
    cmd = [sys.executable, "-m", "mitsuke.cli", "index", str(corpus), "--index", str(idx), "--model", str(model),
           "--max-tokens", str(CHUNKING.max_tokens), "--batch-docs", "3", "--json", f"--ray={address}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, cwd=REPO, timeout=300)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode(errors="replace")


def test_killed_driver_leaves_an_index_and_the_rerun_embeds_nothing_committed(
        ray_cluster, corpus, single_index, tiny_model, tiny_embedder, tmp_path):
    idx, log = tmp_path / "idx", tmp_path / "embedded.log"
    code, _, err = run_driver(corpus, idx, tiny_model, ray_cluster["address"], log, kill_at="after_commit:2")
    assert code == -signal.SIGKILL, err[-3000:]
    docs, _, _ = contents(idx)
    committed = {(key, digest) for _, key, digest, *_ in docs}
    assert len(committed) == 6  # two commits of three documents
    with Searcher.open(idx, embedder=tiny_embedder) as s:  # the index opens and answers
        assert s.search("清水建設", k=3, mode="hybrid")
    _, offset = embedded_lines(log)

    code, out, err = run_driver(corpus, idx, tiny_model, ray_cluster["address"], log, kill_at=None)
    assert code == EXIT_PARTIAL, err[-3000:]  # done, but the corpus's bad JSONL line was skipped
    summary = json.loads(out)
    assert summary["unchanged"] == len(committed)
    again, _ = embedded_lines(log, offset)
    assert again and not committed & set(again), "a committed document was embedded again"
    single, _ = single_index
    assert contents(idx)[:2] == contents(single)[:2]


def test_lexical_only_index_needs_no_actors_and_equals_a_local_build(ray_cluster, corpus, tmp_path):
    single, distributed = tmp_path / "single", tmp_path / "ray"
    with IndexBuilder.open(single, model="none", chunking=CHUNKING) as b:
        b.add_paths([corpus])
    with IndexBuilder.open(distributed, model="none", chunking=CHUNKING) as b:
        summary = index_with_ray(b, [corpus])
    assert summary.added > 0 and summary.chunks_embedded == 0
    assert contents(distributed)[:2] == contents(single)[:2]
    with Searcher.open(distributed) as s, Searcher.open(single) as t:
        for q in QUERIES:
            assert [(h.doc_key, h.char_start, h.score) for h in s.search(q, k=5)] == \
                   [(h.doc_key, h.char_start, h.score) for h in t.search(q, k=5)]
