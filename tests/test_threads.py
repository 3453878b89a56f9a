"""One Searcher, many threads (a web app): every answer equals the single-threaded one."""
from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from corpus import DATA, DEMO_QUESTIONS
from mitsuke.indexer import IndexBuilder
from mitsuke.search import Searcher

THREADS = 8
QUESTIONS = [q for q, _ in DEMO_QUESTIONS] + ["打楽器の種類と「太鼓」", "ｶﾀｶﾅの空港😀", "１９９５年の出来事", "核酸塩基の構造",
                                            "天体暦とは何か"]
# (mode, where) pairs: every leg, fused, and a filter (exact-scan path).
REQUESTS = [("lexical", None), ("dense", None), ("hybrid", None), ("dense", {"doc_key": "豊*"})]


def answer(searcher: Searcher, q: str, mode: str, where) -> list[tuple[int, float]]:
    return [(h.chunk_id, h.score) for h in searcher.search(q, k=5, mode=mode, where=where)]


def run_threads(n: int, work) -> list:
    """Run ``work(i)`` in ``n`` threads released together; re-raise the first error."""
    barrier = threading.Barrier(n)

    def start(i):
        barrier.wait()
        return work(i)

    with ThreadPoolExecutor(n) as pool:
        return [f.result() for f in [pool.submit(start, i) for i in range(n)]]


@pytest.fixture(scope="module")
def dense_index(index_factory, tiny_embedder):
    return index_factory(paths=[DATA], model="tiny", embedder=tiny_embedder)


def test_concurrent_queries_equal_single_threaded_answers(dense_index, tiny_embedder):
    with Searcher.open(dense_index, embedder=tiny_embedder) as reference:
        expected = {(q, m, str(w)): answer(reference, q, m, w) for q in QUESTIONS for m, w in REQUESTS}
        contexts = {q: reference.retrieve_context(q, k=4, neighbors=1, max_chars=800).passages for q in QUESTIONS}
    assert all(expected.values())

    # A cold Searcher: the first queries race to load the ANN index, and every thread makes its own MeCab tagger.
    searcher = Searcher.open(dense_index, embedder=tiny_embedder)
    jobs = [(q, m, w) for q in QUESTIONS for m, w in REQUESTS] * 3

    def work(i):
        rng = random.Random(i)
        order = jobs[:]
        rng.shuffle(order)
        wrong = []
        for q, m, w in order:
            got = answer(searcher, q, m, w)
            if got != expected[(q, m, str(w))]:
                wrong.append((q, m, w, got))
        for q in rng.sample(QUESTIONS, 4):
            if searcher.retrieve_context(q, k=4, neighbors=1, max_chars=800).passages != contexts[q]:
                wrong.append((q, "context"))
        return len(order), wrong

    results = run_threads(THREADS, work)
    searcher.close()
    assert [w for _, w in results] == [[]] * THREADS
    assert sum(n for n, _ in results) == THREADS * len(jobs)


def test_queries_while_a_writer_commits(tmp_path, tiny_embedder):
    """Readers keep answering, with exact texts, while the same process adds documents in several commits."""
    files = sorted(p for p in DATA.iterdir() if p.suffix in (".txt", ".md"))
    texts = {p.name: p.read_text(encoding="utf-8") for p in files}
    path = tmp_path / "idx"
    with IndexBuilder.open(path, model="tiny", embedder=tiny_embedder) as b:
        b.add_paths(files[:4])
    searcher = Searcher.open(path, embedder=tiny_embedder)
    searcher.search("空港", k=3, mode="dense")  # load the ANN index before the writer moves on
    qvecs = dict(zip(QUESTIONS, tiny_embedder.encode_queries(QUESTIONS)))
    done = threading.Event()

    def read(i):
        rng = random.Random(i)
        seen = 0
        while not done.is_set() or seen == 0:
            q = rng.choice(QUESTIONS)
            mode = rng.choice(["dense", "hybrid", "lexical", "raw"])
            hits = searcher.search(q, k=5, mode="dense" if mode == "raw" else mode, rerank=mode != "raw")
            for h in hits:
                assert texts[h.doc_key][h.char_start:h.char_end] == h.text
            if mode == "raw":
                # Scores straight from FAISS: each must be the query's cosine with that chunk's stored
                # vector (an index changed under a running search returns ids that do not match).
                with searcher.store.snapshot() as snap:
                    rows = snap.chunk_rows([h.chunk_id for h in hits])
                stored = searcher.vectors.read([rows[h.chunk_id].vector_row for h in hits])
                assert [h.score for h in hits] == pytest.approx(list(stored @ qvecs[q]), abs=1e-4)
            seen += 1
        return seen

    errors = []

    def write():
        try:
            for p in files[4:]:  # one commit (one generation) per file
                with IndexBuilder.open(path, embedder=tiny_embedder) as b:
                    b.add_paths([p])
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    counts = run_threads(THREADS - 2, read)
    writer.join()
    assert not errors, errors
    assert min(counts) >= 1

    with Searcher.open(path, embedder=tiny_embedder) as fresh:
        for q in QUESTIONS:
            for mode, where in REQUESTS:
                assert answer(searcher, q, mode, where) == answer(fresh, q, mode, where)
    assert searcher.info()["documents"] == len(files)
    searcher.close()


def test_catching_up_never_changes_an_index_a_search_may_hold(tmp_path, tiny_embedder):
    """FAISS allows concurrent searches, not a search during add/remove: a newer generation gets a new index."""
    import faiss

    files = sorted(p for p in DATA.iterdir() if p.suffix in (".txt", ".md"))
    path = tmp_path / "idx"
    with IndexBuilder.open(path, model="tiny", embedder=tiny_embedder) as b:
        b.add_paths(files[:3])
    with Searcher.open(path, embedder=tiny_embedder) as searcher:
        searcher.search("空港", k=3, mode="dense")
        held = searcher._ann  # what a search running in another thread is using
        ids = faiss.vector_to_array(held.index.id_map).tolist()
        with IndexBuilder.open(path, embedder=tiny_embedder) as b:
            b.add_paths(files[3:5])
            b.delete([files[0].name])
        hits = searcher.search("空港", k=3, mode="dense")
        assert searcher._ann is not held
        assert faiss.vector_to_array(held.index.id_map).tolist() == ids and held.ntotal == len(ids)
        assert searcher._ann.ntotal == searcher.info()["chunks"] != len(ids)
        assert {h.doc_key for h in hits} <= {p.name for p in files[1:5]}
