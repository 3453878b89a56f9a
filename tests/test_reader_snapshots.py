"""A reader store's snapshots on kept connections (indexer.store.sqlite_read): whole commits only, rows as SQL gives.

Real SQLite in WAL mode: a writer store and reader stores on one file.
"""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mitsuke.indexer.store import MetadataStore, SqlStore, StoreError

TEXTS = ["「東京タワー」は『港区』にある。", "ｶﾀｶﾅ半角の行😀", "長い行" * 400, "更科蕎麦とは何か?"]


def _writer(path: Path) -> MetadataStore:
    return MetadataStore(path / "meta.sqlite")


def _commit_doc(store: MetadataStore, key: str, generation: int, *, meta=None, pages=None, headings=()) -> list[int]:
    """One document with one chunk per TEXTS entry, committed with its generation; returns the chunk ids."""
    with store.begin() as conn:
        doc = store.insert_document(conn, dict(key=key, content_hash=key, title=f"題名 {key}", source=f"/d/{key}.txt",
                                               source_type="text", meta=meta or {}, n_chars=sum(map(len, TEXTS)),
                                               generation=generation, page_starts=pages))
        first = store.next_chunk_id(conn)
        rows, at = [], 0
        for i, t in enumerate(TEXTS):
            rows.append(dict(id=first + i, doc_id=doc, chunk_index=i, char_start=at, char_end=at + len(t), text=t,
                             token_count=len(t), headings=list(headings), vector_row=None, generation=generation))
            at += len(t)
        store.insert_chunks(conn, rows, ["東京 タワー"] * len(rows))
        store.set_state(conn, "generation", generation)
    return [r["id"] for r in rows]


@pytest.fixture()
def stores(tmp_path):
    writer = _writer(tmp_path)
    reader = MetadataStore(tmp_path / "meta.sqlite", readonly=True)
    yield writer, reader
    reader.close()
    writer.close()


def test_a_kept_connection_sees_each_new_commit_and_an_open_snapshot_keeps_its_own(stores):
    writer, reader = stores
    _commit_doc(writer, "a", 1)
    with reader.snapshot() as snap:
        conn_a = snap.conn
        assert snap.generation == 1
    _commit_doc(writer, "b", 2)
    with reader.snapshot() as old:
        assert old.conn is conn_a  # reused, not a fresh pool checkout
        assert old.generation == 2
        _commit_doc(writer, "c", 3)  # committed while ``old`` is open
        with reader.snapshot() as new:  # nested: another connection, a newer snapshot
            assert new.conn is not old.conn
            assert new.generation == 3 and new.counts()["documents"] == 3
        # Every read of ``old``, before or after the writer's commit, through SQLAlchemy or the DB-API, sees gen 2.
        assert old.counts()["documents"] == 2
        assert old.state("generation") == "2"
        assert len(old.chunk_rows(range(1, 100))) == 2 * len(TEXTS)


def test_an_error_inside_a_snapshot_leaves_the_connection_usable(stores):
    writer, reader = stores
    _commit_doc(writer, "a", 1)
    with pytest.raises(ZeroDivisionError):
        with reader.snapshot() as snap:
            snap.counts()  # SQLAlchemy autobegins inside the DB-API transaction: no second BEGIN
            1 / 0
    _commit_doc(writer, "b", 2)
    with reader.snapshot() as snap:
        assert snap.generation == 2 and snap.counts()["documents"] == 2


def test_a_failing_statement_raises_the_store_error(stores):
    from mitsuke.indexer.store.sqlite_read import raw_rows

    writer, reader = stores
    _commit_doc(writer, "a", 1)
    with reader.snapshot() as snap:
        with pytest.raises(StoreError):
            raw_rows(snap.conn, "SELECT nope FROM chunks")
    with reader.snapshot() as snap:
        assert snap.generation == 1


def test_the_writer_is_not_blocked_and_a_closed_reader_closes_its_connections(stores):
    writer, reader = stores
    _commit_doc(writer, "a", 1)
    with reader.snapshot() as snap:
        kept = snap.conn
    _commit_doc(writer, "b", 2)  # an idle kept connection holds no read lock a commit could wait on
    reader.close()
    assert kept.closed


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(meta=st.dictionaries(st.sampled_from(["著者", "tags", "年", "x"]),
                            st.one_of(st.text(max_size=8), st.integers(-5, 5), st.lists(st.text(max_size=3),
                                                                                        max_size=3), st.none()),
                            max_size=3),
       pages=st.one_of(st.none(), st.lists(st.integers(1, 3000), min_size=1, max_size=5).map(
           lambda p: [0] + sorted(set(p)))),
       headings=st.lists(st.sampled_from(["第一章", "「節」", "😀"]), max_size=3),
       ids=st.lists(st.integers(-2, 12), max_size=12))
def test_the_dbapi_chunk_rows_equal_the_sqlalchemy_ones(tmp_path_factory, meta, pages, headings, ids):
    path = tmp_path_factory.mktemp("rows")
    writer = _writer(path)
    reader = MetadataStore(path / "meta.sqlite", readonly=True)
    try:
        _commit_doc(writer, "a", 1, meta=meta, pages=pages, headings=headings)
        _commit_doc(writer, "b", 2)
        with reader.snapshot() as snap:
            fast = snap.chunk_rows(ids)
            slow = SqlStore.chunk_rows(reader, snap.conn, ids)  # the dialect-neutral SQLAlchemy statement
        assert fast == slow
        assert set(fast) == {i for i in ids if 1 <= i <= 2 * len(TEXTS)}
    finally:
        reader.close()
        writer.close()


def test_threads_share_kept_connections_and_each_sees_whole_commits(stores):
    writer, reader = stores
    _commit_doc(writer, "d0", 1)
    errors: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            with reader.snapshot() as snap:
                g = snap.generation
                n = len(snap.chunk_rows(range(1, 1000)))
                if n != g * len(TEXTS) or snap.counts()["documents"] != g:
                    errors.append(f"generation {g}: {n} chunks")

    threads = [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for g in range(2, 12):
            _commit_doc(writer, f"d{g}", g)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors


def test_rows_and_passages_built_without_init_equal_the_constructed_ones():
    from dataclasses import fields

    from mitsuke.indexer.store import ChunkRow
    from mitsuke.search.ranking import make_passages
    from mitsuke.search.results import Passage

    row = ChunkRow(id=7, doc_id=2, chunk_index=1, char_start=5, char_end=20, text="「東京」ﾀﾜｰ😀", token_count=4,
                   headings=("第一章",), vector_row=3, doc_key="a/b.txt", title="題", source="/a/b.txt",
                   source_type="text", metadata={"著者": "某"}, pages=(1, 2))
    got = make_passages({7: row}, [(7, 0.5), (8, 0.4)], [(7, 0.5)], [(9, 1.0), (7, 2.0)], {}, {7: "trigram"})
    want = Passage(chunk_id=7, doc_key="a/b.txt", title="題", text="「東京」ﾀﾜｰ😀", score=0.5, char_start=5,
                   char_end=20, headings=("第一章",), metadata={"著者": "某"}, chunk_index=1, source="/a/b.txt",
                   dense_score=0.5, lexical_score=2.0, dense_rank=1, lexical_rank=2, pages=(1, 2),
                   lexical_match="trigram")
    assert got == [want] and hash(got[0]) == hash(want)
    assert set(vars(got[0])) == {f.name for f in fields(Passage)}, "every field is set"
    with pytest.raises(AttributeError):
        got[0].score = 1.0  # still frozen
