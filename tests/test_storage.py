"""The index directory's invariants (DESIGN.md 1-5, 7) with real SQLite, FAISS and a tiny model."""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corpus import SENTENCES
from mitsuke.indexer import IndexBuilder
from mitsuke.cli import cli
from mitsuke.indexer.config import AnnConfig
from mitsuke.indexer.documents import document_from_mapping
from mitsuke.indexer.errors import LockedError
from mitsuke.indexer.store import MetadataStore
from mitsuke.search import Searcher

REPO = Path(__file__).resolve().parent.parent

def make_docs(n: int, seed: int = 0, prefix: str = "文書") -> list[dict]:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        k = int(rng.integers(1, 5))
        text = "".join(SENTENCES[j] for j in rng.integers(0, len(SENTENCES), k)) + f"番号{i}の補足：{seed}。"
        docs.append({"id": f"{prefix}{i:03d}", "text": text, "分類": f"群{i % 3}"})
    return docs


def open_builder(path, tiny_model, tiny_embedder, **kw):
    return IndexBuilder.open(path, model=str(tiny_model), embedder=tiny_embedder, **kw)


def dense_results(path, embedder, queries, k=5):
    with Searcher.open(path, embedder=embedder) as s:
        return [[(h.doc_key, h.char_start, h.char_end, round(h.score, 4)) for h in s.search(q, k=k, mode="dense")]
                for q in queries]


def live_ids(path) -> set[int]:
    store = MetadataStore(Path(path) / "meta.sqlite", readonly=True)
    with store.snapshot() as snap:
        ids = snap.chunk_ids()
    store.close()
    return ids


def ann_ids(builder) -> set[int]:
    import faiss

    index = builder.ann.index
    if isinstance(index, faiss.IndexIDMap2):
        return set(faiss.vector_to_array(index.id_map).tolist())
    inv = index.invlists
    out: set[int] = set()
    for lst in range(index.nlist):
        n = inv.list_size(lst)
        if n:
            out |= set(faiss.rev_swig_ptr(inv.get_ids(lst), n).tolist())
    return out


QUERIES = ["東京の人口", "蕎麦とは", "降雪量はどれくらい", "ｶﾀｶﾅ", "国土地理院"]


# --------------------------------------------------------------------- invariant 1

def test_garbage_rows_past_the_commit_are_ignored_then_reclaimed(tmp_path, tiny_model, tiny_embedder):
    idx = tmp_path / "idx"
    with open_builder(idx, tiny_model, tiny_embedder) as b:
        b.add_documents(make_docs(12))
    before = dense_results(idx, tiny_embedder, QUERIES)
    vec = idx / "vectors.f16"
    committed = vec.stat().st_size
    with open(vec, "ab") as fh:  # what a writer killed between fsync and commit leaves
        fh.write(np.full((5, 64), 7.0, dtype=np.float16).tobytes() + b"\x01")
    assert dense_results(idx, tiny_embedder, QUERIES) == before
    with open_builder(idx, tiny_model, tiny_embedder):
        pass
    assert vec.stat().st_size == committed


def test_vectors_are_durable_before_sqlite_refers_to_them(tmp_path, tiny_model, tiny_embedder):
    idx = tmp_path / "idx"
    with open_builder(idx, tiny_model, tiny_embedder) as b:
        b.add_documents(make_docs(10))
    store = MetadataStore(idx / "meta.sqlite", readonly=True)
    with store.snapshot() as snap:
        all_rows = snap.chunk_rows(snap.chunk_ids())
        rows = {i: r.vector_row for i, r in all_rows.items()}
        texts = {i: r.text for i, r in all_rows.items()}
        assert snap.vector_rows() == len(rows) == len(set(rows.values()))
    store.close()
    stored = np.fromfile(idx / "vectors.f16", dtype=np.float16).reshape(-1, 64).astype(np.float32)
    ids = sorted(rows)
    fresh = tiny_embedder.encode_documents([texts[i] for i in ids])
    got = stored[[rows[i] for i in ids]]
    assert np.abs(got - fresh).max() < 2e-3  # each chunk's row is its own text's vector


# --------------------------------------------------------------------- invariant 2

def test_missing_unreadable_and_stale_ann_are_rebuilt_or_caught_up(tmp_path, tiny_model, tiny_embedder, caplog):
    idx = tmp_path / "idx"
    with open_builder(idx, tiny_model, tiny_embedder) as b:
        b.add_documents(make_docs(15))
    old_ann = (idx / "ann.faiss").read_bytes()
    old_manifest = json.loads((idx / "manifest.json").read_text())
    with open_builder(idx, tiny_model, tiny_embedder) as b:
        b.add_documents(make_docs(8, seed=5, prefix="追加"))
        b.delete(["文書000", "文書001", "文書002"])
    expected = dense_results(idx, tiny_embedder, QUERIES)
    caplog.set_level(logging.INFO, logger="mitsuke")

    # stale: the ANN file and manifest entry of two generations ago
    (idx / "ann.faiss").write_bytes(old_ann)
    m = json.loads((idx / "manifest.json").read_text())
    m["ann"] = old_manifest["ann"]
    (idx / "manifest.json").write_text(json.dumps(m))
    caplog.clear()
    assert dense_results(idx, tiny_embedder, QUERIES) == expected
    assert "catching up" in caplog.text

    # unreadable
    (idx / "ann.faiss").write_bytes(b"\x00garbage" * 10)
    caplog.clear()
    assert dense_results(idx, tiny_embedder, QUERIES) == expected
    assert "unreadable" in caplog.text

    # missing, healed by the next writer without embedding anything
    (idx / "ann.faiss").unlink()
    caplog.clear()
    with open_builder(idx, tiny_model, tiny_embedder) as b:
        pass
    assert "missing" in caplog.text and b.summary.chunks_embedded == 0
    assert (idx / "ann.faiss").exists()
    assert dense_results(idx, tiny_embedder, QUERIES) == expected


# Ray moves Python objects between its own workers with (cloud)pickle whatever we do; the
# distributed stages and driver pickle rows they made themselves in the same run, never a file on disk.
_PICKLES_OWN_RAY_ROWS = {REPO / "indexer" / "distributed" / name for name in ("stages.py", "driver.py")}


def test_no_pickle_anywhere():
    for pkg in ("indexer", "search"):
        for path in set((REPO / pkg).rglob("*.py")) - _PICKLES_OWN_RAY_ROWS:
            src = path.read_text(encoding="utf-8")
            assert not re.search(r"\bimport pickle\b|\bpickle\.|allow_pickle\s*=\s*True|joblib|torch\.load", src), path


# --------------------------------------------------------------------- invariant 3

@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=st.lists(st.tuples(st.sampled_from(["add", "edit", "delete"]), st.integers(0, 7)), min_size=3, max_size=8))
def test_chunk_ids_are_monotonic_never_reused_and_are_the_faiss_ids(tiny_model, tiny_embedder, ops):
    with tempfile.TemporaryDirectory() as tmp:
        idx = Path(tmp) / "idx"
        seen: set[int] = set()
        high = 0
        for step, (op, i) in enumerate(ops):
            with open_builder(idx, tiny_model, tiny_embedder, compact_min_rows=0) as b:
                if op == "delete":
                    b.delete([f"文書{i:03d}"])
                else:
                    doc = make_docs(8, seed=step if op == "edit" else 0)[i]
                    b.add_documents([doc])
                b.flush()
                now = live_ids(idx)
                new = now - seen
                assert all(c > high for c in new), "a new chunk id must exceed every id ever issued"
                if b.ann is not None:
                    b._maybe_switch_ann()
                    assert ann_ids(b) == now
            seen |= now
            high = max(seen, default=high)


# --------------------------------------------------------------------- invariant 5

def test_second_writer_is_refused_with_the_holders_pid_and_readers_see_the_last_commit(
        tmp_path, tiny_model, tiny_embedder):
    idx = tmp_path / "idx"
    with open_builder(idx, tiny_model, tiny_embedder) as b:
        b.add_documents(make_docs(5))
    with open_builder(idx, tiny_model, tiny_embedder, batch_docs=1000) as b:
        with pytest.raises(LockedError, match=rf"pid {os.getpid()}\b"):
            IndexBuilder.open(idx, model=str(tiny_model), embedder=tiny_embedder)
        b.add_documents(make_docs(3, seed=9, prefix="新"))  # committed by add_documents
        b._add_one(document_from_mapping({"id": "未確定", "text": "まだコミットされていない文書です。"},
                                         where="未確定"))  # pending, not committed
        with Searcher.open(idx, embedder=tiny_embedder) as s:
            keys = {h.doc_key for h in s.search("補足 まだ", k=50, mode="lexical")}
            assert "新000" in keys and "未確定" not in keys
            assert s.info()["documents"] == 8
    with Searcher.open(idx, embedder=tiny_embedder) as s:
        assert s.info()["documents"] == 9
    IndexBuilder.open(idx, model=str(tiny_model), embedder=tiny_embedder).close()  # lock released


# --------------------------------------------------------------------- compaction

def test_compaction_reclaims_dead_rows_without_reembedding_and_keeps_results(tmp_path, tiny_model, tiny_embedder):
    idx, fresh = tmp_path / "idx", tmp_path / "fresh"
    docs = make_docs(40)
    with open_builder(idx, tiny_model, tiny_embedder) as b:
        b.add_documents(docs)
    reader = Searcher.open(idx, embedder=tiny_embedder)  # a reader that lives through the compaction
    reader.search("東京", k=3, mode="dense")
    with open_builder(idx, tiny_model, tiny_embedder, compact_min_rows=0) as b:
        b.delete([d["id"] for d in docs[:25]])
    assert b.summary.chunks_embedded == 0
    with open_builder(fresh, tiny_model, tiny_embedder) as f:
        f.add_documents(docs[25:])
    store = MetadataStore(idx / "meta.sqlite", readonly=True)
    with store.snapshot() as snap:
        assert snap.vectors_epoch() == 1
        assert snap.dead_vector_rows() == 0
        assert snap.vector_rows() == snap.counts()["chunks"]
        assert snap.deleted_since(-1) == []  # every deletion record, whatever its generation
    store.close()
    assert (idx / "vectors.f16").stat().st_size == (fresh / "vectors.f16").stat().st_size
    assert not list(idx.glob("vectors.f16.compact-*"))
    expected = dense_results(fresh, tiny_embedder, QUERIES)
    assert dense_results(idx, tiny_embedder, QUERIES) == expected
    got = [[(h.doc_key, h.char_start, h.char_end, round(h.score, 4)) for h in reader.search(q, k=5, mode="dense")]
           for q in QUERIES]
    assert got == expected, "a reader opened before the compaction must follow the new row numbers"
    reader.close()


def test_ann_kind_follows_the_flag_and_is_recorded(tmp_path, tiny_model, tiny_embedder):
    idx = tmp_path / "idx"
    with open_builder(idx, tiny_model, tiny_embedder, ann=AnnConfig(kind="ivfpq", nlist=4)) as b:
        b.add_documents(make_docs(300))
    info = json.loads(CliRunner().invoke(cli, ["info", "--index", str(idx), "--json"]).stdout)
    assert info["ann"]["kind"] == "ivfpq" and info["ann"]["nlist"] == 4 and info["ann"]["m"] == 16
    for key in ("documents", "chunks", "model", "dim", "generation", "files"):
        assert key in info
    assert set(info["files"]) >= {"manifest.json", "meta.sqlite", "vectors.f16", "ann.faiss"}
    with open_builder(idx, tiny_model, tiny_embedder, ann=AnnConfig(kind="flat")):
        pass
    info = json.loads(CliRunner().invoke(cli, ["info", "--index", str(idx), "--json"]).stdout)
    assert info["ann"]["kind"] == "flat"


def test_index_json_summary_reports_failures_with_reasons(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "良い.txt").write_text("正常な日本語の文書です。", encoding="utf-8")
    (src / "壊れ.txt").write_bytes(b"\x00\x01\x02\xff" * 50)
    (src / "sjis.txt").write_bytes("シフトJISの文書：ﾊﾝｶｸ".encode("cp932"))
    r = CliRunner().invoke(cli, ["index", str(src), "--index", str(tmp_path / "idx"), "--model", "none", "--json"])
    assert r.exit_code == 3, r.output  # some inputs failed, the good ones were committed (README "Exit status")
    summary = json.loads(r.stdout)
    assert set(summary) == {"added", "updated", "unchanged", "deleted", "failed", "chunks_embedded", "chunks_added",
                            "seconds"}
    assert summary["added"] == 2
    assert [f["path"].endswith("壊れ.txt") and f["reason"] for f in summary["failed"]] != []
    assert all(f["reason"] for f in summary["failed"])


def test_an_error_inside_the_builder_commits_nothing_pending(tmp_path, tiny_model, tiny_embedder):
    idx = tmp_path / "idx"
    with open_builder(idx, tiny_model, tiny_embedder) as b:
        b.add_documents(make_docs(4))
    with pytest.raises(RuntimeError, match="途中"):
        with open_builder(idx, tiny_model, tiny_embedder, batch_docs=100) as b:
            b._add_one(__import__("mitsuke.indexer.loaders", fromlist=["Document"]).Document(
                key="保留", text="保留中の文書です。", title="", source="", source_type="text", metadata={}))
            raise RuntimeError("途中で失敗")
    with Searcher.open(idx, embedder=tiny_embedder) as s:
        assert s.info()["documents"] == 4


def test_manifest_records_the_lexical_analysis_and_a_writer_refuses_another(tmp_path):
    import json

    from mitsuke.indexer import IndexBuilder
    from mitsuke.indexer.errors import IndexFormatError
    from mitsuke.indexer.japanese import LEXICAL_ANALYSIS_VERSION

    idx = tmp_path / "idx"
    with IndexBuilder.open(idx, model="none") as b:
        b.add_documents([{"id": "a", "text": "東京は日本の首都である。"}])
    manifest = json.loads((idx / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["lexical_analysis"] == LEXICAL_ANALYSIS_VERSION
    manifest["lexical_analysis"] = LEXICAL_ANALYSIS_VERSION - 1
    (idx / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(IndexFormatError, match="rebuild"):
        IndexBuilder.open(idx, model="none")


def test_threads_on_either_side_of_a_compaction_read_their_own_epoch(tmp_path):
    """One Searcher, two threads, two SQLite snapshots: each reads its epoch's rows."""
    import threading

    from mitsuke.indexer.vectors import VectorStore, retired_path

    path = tmp_path / "vectors.f16"
    old = np.full((4, 8), 0.25, dtype=np.float32)   # epoch 0, kept as the retired link
    new = np.full((4, 8), -0.5, dtype=np.float32)   # epoch 1, the current file
    VectorStore(retired_path(path, 0), 8).append(old, at_row=0)
    VectorStore(path, 8).append(new, at_row=0)
    store = VectorStore(path, 8)
    bound = threading.Barrier(2)
    read = {}

    def reader(epoch: int) -> None:
        store.bind(epoch)
        bound.wait()  # both threads bound before either reads
        read[epoch] = store.read([1, 3])

    threads = [threading.Thread(target=reader, args=(e,)) for e in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(read[0], old[[1, 3]])
    np.testing.assert_array_equal(read[1], new[[1, 3]])
