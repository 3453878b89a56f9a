"""Dense search, exact rerank, filters and hybrid fusion against brute-force numpy over the same vectors."""
from __future__ import annotations

import json
import re
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

from mitsuke.indexer import IndexBuilder
from mitsuke.cli import cli
from mitsuke.indexer.config import AnnConfig
from mitsuke.indexer.errors import QueryError
from mitsuke.search import Passage, Searcher
from mitsuke.search import dense as dense_mod
from mitsuke.search.fusion import RRF_C

PLACES = ["東京", "大阪", "京都", "札幌", "那覇", "仙台", "広島", "福岡", "ﾅｺﾞﾔ", "横浜", "神戸", "金沢"]
THINGS = ["蕎麦", "ラーメン", "寿司", "天ぷら", "うどん", "カレー", "餃子", "たこ焼き", "おでん", "団子", "せんべい"]
ACTS = ["を食べた", "が有名だ", "の店が多い", "を１２３人が買った", "は「とても」美味しい😀", "の祭りがある", "で賑わう"]
N_DOCS = 300  # > 256: enough for IVF-PQ's codebooks; not a round number


def _docs():
    out = []
    for i in range(N_DOCS):
        text = (f"{PLACES[i % len(PLACES)]}では{THINGS[(i * 7) % len(THINGS)]}{ACTS[(i * 3) % len(ACTS)]}。"
                f"第{i}話、{THINGS[(i * 5 + 1) % len(THINGS)]}と{PLACES[(i * 11 + 3) % len(PLACES)]}。")
        out.append({"id": f"doc/{i:03d}.txt", "title": f"記事{i}", "text": text,
                    "group": i % 7, "even": i % 2 == 0, "lang": "ja" if i % 3 else "en",
                    "tags": ["a", "b"] if i % 5 == 0 else ["c"]})
    return out


@pytest.fixture(scope="module")
def ivf_index(tmp_path_factory, tiny_embedder):
    path = tmp_path_factory.mktemp("search") / "ivf"
    with IndexBuilder.open(path, model="tiny", embedder=tiny_embedder, ann=AnnConfig(kind="ivfpq")) as b:
        b.add_documents(_docs())
    return path


@pytest.fixture(scope="module")
def flat_index(tmp_path_factory, tiny_embedder):
    path = tmp_path_factory.mktemp("search") / "flat"
    with IndexBuilder.open(path, model="tiny", embedder=tiny_embedder) as b:
        b.add_documents(_docs()[:53])
    return path


@pytest.fixture(scope="module")
def ivf(ivf_index, tiny_embedder):
    with Searcher.open(ivf_index, embedder=tiny_embedder) as s:
        yield s


def stored(path):
    """(chunk ids, float32 copies of their float16 rows, doc metadata) straight from the files."""
    db = sqlite3.connect(path / "meta.sqlite")
    rows = db.execute("SELECT c.id, c.vector_row, d.meta, d.key FROM chunks c JOIN documents d ON d.id = c.doc_id "
                      "ORDER BY c.id").fetchall()
    db.close()
    manifest = json.loads((path / "manifest.json").read_text())
    dim = manifest["model"]["dim"]
    mat = np.fromfile(path / "vectors.f16", dtype=np.float16).reshape(-1, dim).astype(np.float32)
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    vecs = mat[[r[1] for r in rows]]
    metas = [dict(json.loads(r[2]), doc_key=r[3]) for r in rows]
    return ids, vecs, metas


def ann_of(s: Searcher):
    with s.store.snapshot() as snap:
        return s._ann_for(snap)


_QVEC_CACHE: dict[str, np.ndarray] = {}


def qvec_of(embedder, q: str) -> np.ndarray:
    if q not in _QVEC_CACHE:
        _QVEC_CACHE[q] = embedder.encode_queries([q])[0]
    return _QVEC_CACHE[q]


def brute(qvec, ids, vecs, k, mask=None):
    scores = vecs @ qvec
    if mask is not None:
        ids, scores = ids[mask], scores[mask]
    order = np.lexsort((ids, -scores))[:k]
    return [int(i) for i in ids[order]], scores[order]


QUERIES = ["東京の蕎麦", "ラーメンが有名な街", "ﾅｺﾞﾔの祭り😀", "第42話", "x"]


@pytest.mark.parametrize("k", [1, 5, 17, N_DOCS, N_DOCS + 50])
def test_rerank_over_every_candidate_equals_brute_force(ivf, ivf_index, tiny_embedder, k):
    ids, vecs, _ = stored(ivf_index)
    nlist = json.loads((ivf_index / "manifest.json").read_text())["ann"]["params"]["nlist"]
    for q in QUERIES:
        qvec = qvec_of(tiny_embedder, q)
        want_ids, want_scores = brute(qvec, ids, vecs, k)
        hits = ivf.search(q, k, mode="dense", candidates=N_DOCS, nprobe=nlist)
        assert [h.chunk_id for h in hits] == want_ids
        np.testing.assert_allclose([h.score for h in hits], want_scores, rtol=0, atol=1e-5)
        assert all(h.dense_score == h.score and h.dense_rank == r for r, h in enumerate(hits, 1))


def test_rerank_repairs_pq_order_and_no_rerank_keeps_it(ivf, ivf_index, tiny_embedder):
    ids, vecs, _ = stored(ivf_index)
    ann = ann_of(ivf)
    assert ann.params.kind == "ivfpq"
    agree_rerank = agree_plain = 0
    for q in QUERIES:
        qvec = qvec_of(tiny_embedder, q)
        want, _ = brute(qvec, ids, vecs, 10)
        reranked = ivf.search(q, 10, mode="dense", nprobe=ann.params.nlist)
        plain = ivf.search(q, 10, mode="dense", rerank=False, nprobe=ann.params.nlist)
        scores, ann_ids = ann.search(qvec[None, :], 10, ann.params.nlist)
        assert [h.chunk_id for h in plain] == [int(i) for i in ann_ids[0]]  # the ANN's own order
        np.testing.assert_allclose([h.score for h in plain], scores[0], atol=1e-6)
        r = [h.score for h in reranked]
        assert r == sorted(r, reverse=True)
        agree_rerank += len(set(want) & {h.chunk_id for h in reranked})
        agree_plain += len(set(want) & {h.chunk_id for h in plain})
    assert agree_rerank >= agree_plain
    assert agree_rerank >= 0.9 * 10 * len(QUERIES)


@pytest.mark.parametrize("where, pick", [
    ({"group": 3}, lambda m: m["group"] == 3),
    ({"group": "3"}, lambda m: m["group"] == 3),                 # the CLI passes strings
    ({"even": True, "lang": "en"}, lambda m: m["even"] and m["lang"] == "en"),
    ({"tags": "a"}, lambda m: "a" in m["tags"]),
    ({"group": [1, 2]}, lambda m: m["group"] in (1, 2)),
    ({"doc_key": "doc/1*"}, lambda m: m["doc_key"].startswith("doc/1")),
    ({"doc_key": "doc/299.txt"}, lambda m: m["doc_key"] == "doc/299.txt"),
    ({"lang": "fr"}, lambda m: False),
])
@pytest.mark.parametrize("force_ann", [False, True])
def test_filtered_dense_equals_brute_force(ivf, ivf_index, tiny_embedder, monkeypatch, where, pick, force_ann):
    if force_ann:  # every filter counts as broad: the ANN with an IDSelector answers
        monkeypatch.setattr(dense_mod, "EXACT_SCAN_ELEMENTS", 0)
    ids, vecs, metas = stored(ivf_index)
    mask = np.array([pick(m) for m in metas])
    n = int(mask.sum())
    nlist = ann_of(ivf).params.nlist
    for k in (1, 7, max(n, 1), n + 5):
        got = ivf.search_batch(QUERIES[:3], k, mode="dense", where=where, candidates=N_DOCS, nprobe=nlist)
        for q, hits in zip(QUERIES[:3], got):
            want, _ = brute(qvec_of(tiny_embedder, q), ids, vecs, k, mask)
            assert [h.chunk_id for h in hits] == want
            assert len(hits) == min(k, n)


def test_filtered_dense_returns_k_with_default_settings(ivf, ivf_index, monkeypatch):
    # A narrow filter through the IVF path: an ANN over-fetch would come back short.
    monkeypatch.setattr(dense_mod, "EXACT_SCAN_ELEMENTS", 0)
    ids, _, metas = stored(ivf_index)
    n = sum(m["group"] == 5 for m in metas)
    hits = ivf.search("東京", k=n, mode="dense", where={"group": 5})
    assert len(hits) == n and all(h.metadata["group"] == 5 for h in hits)


def test_flat_index_rerank_and_filters(flat_index, tiny_embedder):
    ids, vecs, metas = stored(flat_index)
    with Searcher.open(flat_index, embedder=tiny_embedder) as s:
        for q in QUERIES:
            qvec = qvec_of(tiny_embedder, q)
            for k in (1, 10, 53, 60):
                assert [h.chunk_id for h in s.search(q, k, mode="dense")] == brute(qvec, ids, vecs, k)[0]
                assert [h.chunk_id for h in s.search(q, k, mode="dense", rerank=False)] == brute(qvec, ids, vecs, k)[0]
            mask = np.array([m["group"] == 2 for m in metas])
            got = s.search(q, 4, mode="dense", where={"group": 2})
            assert [h.chunk_id for h in got] == brute(qvec, ids, vecs, 4, mask)[0]


def test_empty_index_answers_every_mode(tmp_path, tiny_embedder):
    with IndexBuilder.open(tmp_path / "idx", model="tiny", embedder=tiny_embedder) as b:
        b.add_documents([])
    with Searcher.open(tmp_path / "idx", embedder=tiny_embedder) as s:
        for mode in ("dense", "lexical", "hybrid"):
            assert s.search("東京", k=1, mode=mode) == []
            assert s.search("東京", k=5, mode=mode, where={"group": 1}) == []
        assert s.search_batch(["東京", ""], k=3) == [[], []]


def test_search_batch_equals_single_searches(ivf):
    qs = QUERIES + ["", "東京"]
    for mode in ("dense", "lexical", "hybrid"):
        batch = ivf.search_batch(qs, k=6, mode=mode, where={"even": True} if mode == "hybrid" else None)
        singles = [ivf.search(q, k=6, mode=mode, where={"even": True} if mode == "hybrid" else None) for q in qs]
        assert [[h.chunk_id for h in r] for r in batch] == [[h.chunk_id for h in r] for r in singles]
    assert ivf.search_batch([], k=3) == []


def test_hybrid_rrf_scores_and_per_leg_fields(ivf):
    q = "東京の蕎麦"
    k = 10
    hits = ivf.search(q, k, mode="hybrid", candidates=30, fusion="rrf")
    dense = {h.chunk_id: r for r, h in enumerate(ivf.search(q, 30, mode="dense", candidates=30), 1)}
    lexical = {h.chunk_id: r for r, h in enumerate(ivf.search(q, 30, mode="lexical"), 1)}
    assert len(hits) == k
    for h in hits:
        want = (1 / (RRF_C + dense[h.chunk_id]) if h.chunk_id in dense else 0) + \
               (1 / (RRF_C + lexical[h.chunk_id]) if h.chunk_id in lexical else 0)
        assert h.score == pytest.approx(want)
        assert h.dense_rank == dense.get(h.chunk_id) and h.lexical_rank == lexical.get(h.chunk_id)
        assert h.dense_score is not None  # filled in for lexical-only passages too
        assert (h.lexical_score is not None) == (h.chunk_id in lexical)
        assert set(h.ranks) == {leg for leg, r in (("dense", h.dense_rank), ("lexical", h.lexical_rank)) if r}
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_hybrid_weights_can_silence_a_leg(ivf):
    q = "ラーメンが有名な街"
    lexical = [h.chunk_id for h in ivf.search(q, 8, mode="lexical")]
    dense = [h.chunk_id for h in ivf.search(q, 8, mode="dense")]
    for fusion in ("rrf", "weighted"):
        assert [h.chunk_id for h in ivf.search(q, 8, fusion=fusion, weights=(0, 1))][:len(lexical)] == lexical
        assert [h.chunk_id for h in ivf.search(q, 8, fusion=fusion, weights=(1, 0))] == dense
    with pytest.raises(QueryError, match="weights"):
        ivf.search(q, weights=(1, 2, 3))
    with pytest.raises(QueryError, match="all zero"):
        ivf.search(q, weights=(0, 0))
    with pytest.raises(QueryError, match="fusion"):
        ivf.search(q, fusion="max")


def test_searcher_level_fusion_defaults(ivf_index, tiny_embedder):
    q = "ラーメンが有名な街"
    with Searcher.open(ivf_index, embedder=tiny_embedder, fusion="weighted", weights=(0, 1)) as s:
        lexical = [h.chunk_id for h in s.search(q, 5, mode="lexical")]
        assert [h.chunk_id for h in s.search(q, 5)] == lexical


def test_bad_arguments_are_query_errors(ivf):
    for kwargs, word in [({"k": 0}, "k"), ({"k": -3}, "k"), ({"k": 2.5}, "k"), ({"mode": "sparse"}, "mode"),
                         ({"candidates": 0}, "candidates"), ({"nprobe": 0}, "nprobe"),
                         ({"where": {"": 1}}, "key"), ({"where": {"group": {"$gt": 1}}}, "value"),
                         ({"where": "group=1"}, "dict")]:
        with pytest.raises(QueryError, match=word):
            ivf.search("東京", **kwargs)
    with pytest.raises(QueryError, match="string"):
        ivf.search(None)
    with pytest.raises(QueryError, match="list"):
        ivf.search_batch("東京")


def test_lexical_only_index_defaults_to_lexical_and_refuses_dense(tmp_path):
    with IndexBuilder.open(tmp_path / "lx", model="none") as b:
        b.add_documents(_docs()[:20])
    with Searcher.open(tmp_path / "lx") as s:
        hits = s.search("東京", k=3)
        assert hits and all(h.lexical_score is not None and h.dense_score is None for h in hits)
        for mode in ("dense", "hybrid"):
            with pytest.raises(QueryError, match="lexical-only"):
                s.search("東京", mode=mode)


def test_passage_is_frozen_and_serialisable(ivf):
    h = ivf.search("東京", k=1)[0]
    assert isinstance(h, Passage)
    with pytest.raises(AttributeError):
        h.score = 0.0  # type: ignore[misc]
    assert len({h, ivf.search("東京", k=1)[0]}) == 1  # hashable despite its metadata dict
    d = h.to_dict(rank=1)
    json.dumps(d, ensure_ascii=False)
    assert {"rank", "score", "doc_key", "title", "text", "char_start", "char_end", "chunk_id", "metadata",
            "headings", "dense_score", "lexical_score", "dense_rank", "lexical_rank"} <= d.keys()


def test_cli_search_readable_and_json(tmp_path):
    # A lexical-only copy of the corpus: the CLI loads models by path, the fixture index used "tiny".
    idx = tmp_path / "lx"
    with IndexBuilder.open(idx, model="none") as b:
        b.add_documents(_docs())
    r = CliRunner().invoke(cli, ["search", "ﾅｺﾞﾔの祭り", "--index", str(idx), "-k", "3"], color=True)
    assert r.exit_code == 0, r.output
    lines = re.sub(r"\x1b\[[0-9;]*m", "", r.output).splitlines()
    assert lines[0].lstrip().startswith("1. ") and "記事" in lines[0] and "[doc/" in lines[0]
    assert "\x1b[33m\x1b[1mﾅｺﾞﾔ\x1b[0m" in r.output  # the query's term marked in the original width
    r = CliRunner().invoke(cli, ["search", "東京 祭り", "--index", str(idx), "-k", "4", "--json",
                                 "--where", "group=3", "--where", "doc_key=doc/*"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1)) and hits
    for h in hits:
        assert {"rank", "score", "doc_key", "title", "text", "char_start", "char_end", "chunk_id", "metadata"} <= h.keys()
        assert h["metadata"]["group"] == 3
    r = CliRunner().invoke(cli, ["search", "x", "--index", str(idx), "--where", "group"])
    assert r.exit_code == 1 and "KEY=VALUE" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["search", "x", "--index", str(idx), "--weights", "a,b"])
    assert r.exit_code == 2 and "--weights" in r.output


@pytest.mark.parametrize("n, k, nq", [(0, 3, 2), (1, 1, 1), (5, 10, 3), (17, 5, 70), (50, 50, 2)])
def test_exact_top_k_blocks_and_ties_equal_brute_force(tmp_path, monkeypatch, n, k, nq):
    from mitsuke.indexer.vectors import VectorStore
    from mitsuke.search import rerank

    monkeypatch.setattr(rerank, "SCAN_BLOCK_ROWS", 7)  # many blocks, a ragged last one
    rng = np.random.default_rng(n)
    dim = 8
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    if n:
        vecs[::3] = vecs[0]  # exact ties: broken by chunk id
    stored_vecs = vecs.astype(np.float16).astype(np.float32)
    rows = rng.permutation(n).astype(np.int64)          # chunk i lives at row rows[i]
    ids = (np.arange(n) * 5 + 11).astype(np.int64)
    store = VectorStore(tmp_path / "v.f16", dim)
    if n:
        by_row = np.empty_like(stored_vecs)
        by_row[rows] = stored_vecs
        store.append(by_row, 0)
    queries = rng.standard_normal((nq, dim)).astype(np.float32)
    got = rerank.exact_top_k(queries, store, ids, rows, k)
    for q, res in zip(queries, got):
        want, want_s = brute(q, ids, stored_vecs, k)
        assert [c for c, _ in res] == want
        np.testing.assert_allclose([s for _, s in res], want_s, rtol=1e-6, atol=1e-6)
    if n:
        np.testing.assert_allclose(rerank.exact_scores(queries[0], store, rows), stored_vecs @ queries[0], rtol=1e-6)
