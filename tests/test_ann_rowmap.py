"""The in-memory chunk id -> vector row map of the dense rerank (search.rowmap) under a concurrent writer.

Real SQLite, real FAISS, the tiny real model: a writer adds, deletes and
replaces documents (and compacts the vectors file) while reader threads
search; after every commit the reader's map must equal what SQL says for its
snapshot, deleted chunks must map to nothing, and results must equal a fresh
open's.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from mitsuke.indexer import IndexBuilder
from mitsuke.indexer.config import AnnConfig
from mitsuke.search import Searcher
from mitsuke.search.fusion import FusionSettings
from mitsuke.search.rowmap import RowMap

TOPICS = ["更科蕎麦の歴史", "ｶﾀｶﾅの看板", "「東京『下町』の祭り」", "富士山と湧き水😀", "城下町の和菓子",
          "雪国の温泉宿", "港町の朝市", "茶畑と新茶の季節"]


def doc(i: int, version: int = 0) -> dict:
    t = TOPICS[i % len(TOPICS)]
    text = f"{t}について第{i}版{version}の解説です。" + "地域の人々が長く守ってきた習わしが残っている。" * (1 + i % 3)
    return {"id": f"doc{i:04d}", "text": text, "title": t}


QUESTIONS = ["蕎麦の歴史は？", "下町の祭りはいつ？", "温泉宿はどこ", "ｶﾀｶﾅ看板"]


def truth(snap) -> dict[int, int]:
    """chunk id -> vector row as SQL has it at the snapshot."""
    return dict(snap.live_vectors())


def check_map(reader: Searcher, seen: set[int]) -> RowMap:
    with reader.store.snapshot() as snap:
        m = reader._rowmaps.for_snapshot(snap)
        assert m is not None and m.key == (snap.generation, snap.vectors_epoch())
        want = truth(snap)
        seen.update(want)
        ids = np.array(sorted(seen), dtype=np.int64)
        got = m.lookup(ids)
        expected = np.array([want.get(int(i), -1) for i in ids], dtype=np.int64)
        gone = ids[expected < 0]
        assert np.array_equal(got, expected), f"map differs on {ids[got != expected][:10].tolist()}"
        assert len(m) == len(want)
        assert (m.lookup(gone) == -1).all(), "a deleted chunk must never get a row"
        assert (m.lookup(np.array([-1, 0, max(seen) + 10**6])) == -1).all()
    return m


@pytest.fixture()
def index(tmp_path, tiny_embedder):
    path = tmp_path / "idx"
    with IndexBuilder.open(path, embedder=tiny_embedder, ann=AnnConfig(kind="ivfpq", nlist=4), batch_docs=64) as b:
        b.add_documents(doc(i) for i in range(300))
    return path


def test_row_map_follows_a_concurrent_writer(index, tiny_embedder):
    reader = Searcher.open(index, embedder=tiny_embedder)
    reader.search(QUESTIONS[0], k=5, mode="dense")
    seen: set[int] = set()
    first = check_map(reader, seen)
    stop = threading.Event()
    errors: list[BaseException] = []

    def hammer():
        try:
            while not stop.is_set():
                for q in QUESTIONS:
                    hits = reader.search(q, k=5, mode="dense")
                    assert len(hits) == 5
                    assert all(h.text for h in hits)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for step in range(4):
            with IndexBuilder.open(index, embedder=tiny_embedder) as b:
                lo = 300 + step * 20
                b.add_documents(doc(i) for i in range(lo, lo + 20))
                b.delete([f"doc{i:04d}" for i in range(step * 15, step * 15 + 15)])
                b.add_documents([doc(200 + step, version=1)])  # replaced: new chunk ids, new rows
            m = check_map(reader, seen)
            assert m.base_ids is first.base_ids, "caught up from the previous map, not rebuilt"
            with Searcher.open(index, embedder=tiny_embedder) as fresh:
                for q in QUESTIONS:
                    # Every cell and every vector: both sides must give the exact top 10.
                    a = [(h.chunk_id, round(h.score, 6)) for h in reader.search(q, k=10, mode="dense", nprobe=4,
                                                                                candidates=2000)]
                    e = [(h.chunk_id, round(h.score, 6)) for h in fresh.search(q, k=10, mode="dense", nprobe=4,
                                                                               candidates=2000)]
                    assert a == e, (step, q)
        # A compaction renumbers every row at a new vectors epoch: the map is rebuilt, not patched.
        with IndexBuilder.open(index, embedder=tiny_embedder) as b:
            b.compact()
        m = check_map(reader, seen)
        assert m.base_ids is not first.base_ids
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    reader.close()


def test_an_older_snapshot_never_uses_a_newer_map(index, tiny_embedder):
    reader = Searcher.open(index, embedder=tiny_embedder)
    with reader.store.snapshot() as old:
        old_rows = truth(old)
        with IndexBuilder.open(index, embedder=tiny_embedder) as b:
            b.delete([f"doc{i:04d}" for i in range(10)])
        with reader.store.snapshot() as new:
            assert reader._rowmaps.for_snapshot(new) is not None
        # The old snapshot still sees the deleted chunks; a map of the newer generation would drop them.
        assert reader._rowmaps.for_snapshot(old) is None
        hits = reader._dense_legs(old, reader._request(10, "dense", True, 2000, 4, None, FusionSettings()),
                                  {0: reader._embed([QUESTIONS[0]], [0])[0]})[0]
        assert len(hits) == 10 and all(c in old_rows for c, _ in hits)
    reader.close()
