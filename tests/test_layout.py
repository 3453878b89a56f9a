"""The on-disk format's one owner: paths, the typed manifest, the model check, atomic replacement."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mitsuke.indexer import IndexBuilder
from mitsuke.indexer.ann import AnnParams, choose_params
from mitsuke.indexer.config import AnnConfig, ChunkConfig
from mitsuke.indexer.durable import atomic_write, atomic_write_bytes, leftover_temp_files, temp_path
from mitsuke.indexer.errors import IndexFormatError, ModelMismatchError
from mitsuke.indexer.japanese import LEXICAL_ANALYSIS_VERSION
from mitsuke.indexer.layout import (
    FORMAT_VERSION,
    AnnState,
    Counts,
    IndexPaths,
    Manifest,
    ModelInfo,
    SearchDefaults,
    compact_path,
    epoch_file,
    retired_path,
)
from mitsuke.search import Searcher

# What the builder of format 1 writes for a dense index (keys and value types as on disk today).
TODAYS_MANIFEST = {
    "format": "mitsuke-index",
    "format_version": 1,
    "created_at": 1796000000.25,
    "updated_at": 1796000100.5,
    "model": {"name": "sbintuitions/sarashina-embedding-v1-1b", "revision": "0123abcd", "dim": 1792,
              "pooling": "lasttoken", "normalize": True, "max_length": 8192, "prompts": {"query": "クエリ: "},
              "path": None},
    "chunking": {"max_tokens": 256, "max_chars": 400, "overlap": 0, "title_context": True},
    "ann_config": {"kind": "auto", "flat_threshold": 50000, "nlist": None},
    "lexical_analysis": LEXICAL_ANALYSIS_VERSION,
    "ann": {"params": {"kind": "ivfpq", "dim": 1792, "nlist": 1024, "m": 64, "nbits": 8, "nprobe": 128,
                       "train_size": 65536, "metric": "ip"}, "generation": 41},
    "generation": 42,
    "counts": {"documents": 1000, "chunks": 12345},
}

DOCS = [
    {"id": "東京/蕎麦.txt", "title": "「更科」の話", "text": "更科蕎麦は蕎麦の実の中心部だけを挽いた粉で打つ。ｻﾗｼﾅ😀"},
    {"id": "大阪.txt", "title": "", "text": "大阪ではたこ焼きが有名だ。「粉もん」『文化』がある。"},
]


def _info(name: str = "tiny", dim: int = 64, **kw) -> ModelInfo:
    return ModelInfo(name=name, revision=None, dim=dim, pooling="lasttoken", normalize=True, max_length=128, **kw)


# --------------------------------------------------------------------------- JSON round trips

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_models = st.none() | st.builds(
    ModelInfo, name=_text.filter(bool), revision=st.none() | _text, dim=st.integers(1, 8192),
    pooling=st.sampled_from(["lasttoken", "mean", "cls+mean"]), normalize=st.booleans(),
    max_length=st.integers(1, 1 << 16), prompts=st.dictionaries(st.sampled_from(["query", "document"]), _text),
    path=st.none() | _text)
_ann_configs = st.builds(AnnConfig, kind=st.sampled_from(["auto", "flat", "ivfpq"]),
                         flat_threshold=st.integers(0, 10**7), nlist=st.none() | st.integers(1, 65536))
_chunkings = st.builds(ChunkConfig, max_tokens=st.integers(8, 4096), max_chars=st.integers(8, 10**5),
                       overlap=st.integers(0, 7), title_context=st.booleans())
_states = st.none() | st.builds(AnnState, params=st.builds(
    AnnParams, kind=st.sampled_from(["flat", "ivfpq"]), dim=st.integers(1, 4096), nlist=st.integers(0, 65536),
    m=st.integers(0, 96), nbits=st.just(8), nprobe=st.integers(1, 65536), train_size=st.integers(0, 10**6)),
    generation=st.integers(0, 2**40))
_search_defaults = st.none() | st.builds(
    SearchDefaults, fusion=st.none() | st.sampled_from(["convex", "rrf", "weighted"]),
    weights=st.none() | st.tuples(st.floats(0, 10), st.floats(0, 10)), rrf_k=st.none() | st.integers(0, 1000),
    norm=st.none() | st.sampled_from(["tmm", "minmax"]), candidates=st.none() | st.integers(1, 10**6),
    rerank=st.none() | st.booleans(), tuned=st.dictionaries(st.sampled_from(["queries", "date", "質問"]), _text))
_manifests = st.builds(
    Manifest, model=_models, chunking=_chunkings, ann_config=_ann_configs,
    lexical_analysis=st.none() | st.integers(1, 9), ann=_states, generation=st.integers(0, 2**40),
    counts=st.builds(Counts, documents=st.integers(0, 10**9), chunks=st.integers(0, 10**9)),
    created_at=st.none() | st.floats(0, 4e9), updated_at=st.none() | st.floats(0, 4e9),
    search_defaults=_search_defaults, extra=st.dictionaries(st.sampled_from(["note", "メモ", "future_key"]), _text | st.integers()))


@settings(max_examples=150, deadline=None)
@given(_manifests)
def test_manifest_round_trips_through_its_json(manifest):
    data = json.loads(json.dumps(manifest.to_json(), ensure_ascii=False))
    assert Manifest.from_json(data) == manifest
    assert data["format_version"] == FORMAT_VERSION


def test_todays_manifest_json_reads_into_typed_parts_and_writes_back_the_same_keys(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(TODAYS_MANIFEST, ensure_ascii=False), encoding="utf-8")
    m = Manifest.read(tmp_path)
    assert m.model == ModelInfo(name="sbintuitions/sarashina-embedding-v1-1b", revision="0123abcd", dim=1792,
                                pooling="lasttoken", normalize=True, max_length=8192, prompts={"query": "クエリ: "})
    assert (m.dim, m.model_name) == (1792, "sbintuitions/sarashina-embedding-v1-1b")
    assert m.chunking == ChunkConfig() and m.ann_config == AnnConfig()
    assert m.ann == AnnState(choose_params(1_000_000, 1792, nbits=8), 41)  # written before 4-bit codes
    assert (m.generation, m.counts, m.lexical_analysis) == (42, Counts(1000, 12345), LEXICAL_ANALYSIS_VERSION)
    assert m.to_json() == TODAYS_MANIFEST  # nothing renamed, added or lost

    written = m.write(tmp_path)
    on_disk = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert on_disk == dict(TODAYS_MANIFEST, updated_at=written.updated_at)
    assert written.updated_at > TODAYS_MANIFEST["updated_at"]


def test_an_older_manifest_without_the_later_keys_still_reads():
    """Before the lexical analysis, the model's directory and ``nlist`` were recorded."""
    old = json.loads(json.dumps(TODAYS_MANIFEST))
    del old["lexical_analysis"], old["model"]["path"], old["model"]["prompts"], old["ann_config"]["nlist"]
    old["ann"] = None
    m = Manifest.from_json(old)
    assert m.lexical_analysis is None and not m.lexical_analysis_differs
    assert m.model.path is None and m.model.prompts == {} and m.ann_config.nlist is None and m.ann is None
    assert "lexical_analysis" not in m.to_json()


def test_an_index_with_a_hand_written_older_manifest_opens_for_reading_and_writing(tmp_path):
    idx = tmp_path / "idx"
    with IndexBuilder.open(idx, model="none") as b:
        b.add_documents(DOCS[:1])
    data = json.loads((idx / "manifest.json").read_text(encoding="utf-8"))
    del data["lexical_analysis"], data["ann_config"]["nlist"]
    data["メモ"] = "手で書いた"  # a key this version does not know
    (idx / "manifest.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")

    with Searcher.open(idx) as s:
        assert [p.doc_key for p in s.search("更科蕎麦", k=1, mode="lexical")] == ["東京/蕎麦.txt"]
        assert s.info()["chunking"] == data["chunking"]
    with IndexBuilder.open(idx) as b:
        b.add_documents(DOCS[1:])
    after = json.loads((idx / "manifest.json").read_text(encoding="utf-8"))
    assert after["メモ"] == "手で書いた" and "lexical_analysis" not in after
    assert after["counts"] == {"documents": 2, "chunks": 2} and after["created_at"] == data["created_at"]


def test_search_defaults_are_typed_written_only_when_set_and_a_damaged_entry_is_one_clear_error(tmp_path):
    m = Manifest.from_json(TODAYS_MANIFEST)
    assert m.search_defaults is None and "search_defaults" not in m.to_json()  # an index never tuned
    saved = {"fusion": "rrf", "weights": [0.25, 1], "rrf_k": 20, "candidates": 50,
             "tuned": {"queries": "/質問/qa.jsonl", "questions": 40, "date": "2026-12-02"}}
    m = Manifest.from_json(dict(TODAYS_MANIFEST, search_defaults=saved))
    assert m.search_defaults == SearchDefaults(fusion="rrf", weights=(0.25, 1.0), rrf_k=20, candidates=50,
                                               tuned=saved["tuned"])
    assert m.to_json() == dict(TODAYS_MANIFEST, search_defaults=dict(saved, weights=[0.25, 1.0]))
    for bad in ({"weights": "0.2,0.8"}, {"weights": [1]}, {"rrf_k": 2.5}, {"rerank": "yes"}, {"tuned": [1]}, []):
        (tmp_path / "manifest.json").write_text(json.dumps(dict(TODAYS_MANIFEST, search_defaults=bad)),
                                                encoding="utf-8")
        with pytest.raises(IndexFormatError, match="manifest entry 'search_defaults' is invalid"):
            Manifest.read(tmp_path)


@pytest.mark.parametrize("opener", [Manifest.read, Searcher.open, lambda p: IndexBuilder.open(p, model="none")])
def test_a_newer_format_version_is_refused_with_the_upgrade_message(tmp_path, opener):
    idx = tmp_path / "idx"
    with IndexBuilder.open(idx, model="none") as b:
        b.add_documents(DOCS)
    data = json.loads((idx / "manifest.json").read_text(encoding="utf-8"))
    data["format_version"] = FORMAT_VERSION + 1
    (idx / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(IndexFormatError) as err:
        opener(idx)
    assert str(err.value) == (f"{idx / 'manifest.json'}: index format {FORMAT_VERSION + 1} is newer than this "
                              f"mitsuke understands ({FORMAT_VERSION}); upgrade mitsuke")


@pytest.mark.parametrize("text, message", [
    ("{壊れた", "unreadable manifest"),
    (json.dumps({"format": "other"}), "not a mitsuke index manifest"),
    (json.dumps({k: v for k, v in TODAYS_MANIFEST.items() if k != "chunking"}), "manifest has no 'chunking' entry"),
    (json.dumps(dict(TODAYS_MANIFEST, chunking={"max_tokens": 2})), "manifest entry 'chunking' is invalid"),
    (json.dumps(dict(TODAYS_MANIFEST, chunking={"トークン": 2})), "manifest entry 'chunking' is invalid"),
    (json.dumps(dict(TODAYS_MANIFEST, model={"name": "x"})), "manifest entry 'model' is invalid"),
    (json.dumps(dict(TODAYS_MANIFEST, ann_config="auto")), "manifest entry 'ann_config' is invalid"),
])
def test_a_damaged_manifest_is_one_clear_error(tmp_path, text, message):
    (tmp_path / "manifest.json").write_text(text, encoding="utf-8")
    with pytest.raises(IndexFormatError, match=message) as err:
        Manifest.read(tmp_path)
    assert str(tmp_path / "manifest.json") in str(err.value) and "\n" not in str(err.value)


def test_no_manifest_reads_as_none(tmp_path):
    assert Manifest.read(tmp_path) is None


# --------------------------------------------------------------------------- the model check

def test_model_check_messages(tmp_path, tiny_embedder):
    idx = tmp_path / "索引"
    m = Manifest.new(replace(tiny_embedder.info, name="tiny"), ChunkConfig(), AnnConfig())
    lexical = Manifest.new(None, ChunkConfig(), AnnConfig())
    other = replace(tiny_embedder.info, name="other")

    def message(manifest, **kw):
        with pytest.raises(ModelMismatchError) as err:
            manifest.check_model(idx, **kw)
        return str(err.value)

    assert message(m, model="other", writing=True) == (
        f"index {idx} was built with model 'tiny', not 'other'; "
        "use the same model, or build a new index in another directory")
    assert message(m, model="none", writing=False) == (
        f"index {idx} was built with model 'tiny'; it cannot be queried with 'none'")
    assert message(lexical, model="tiny", writing=False) == (
        f"index {idx} was built with model 'none'; it cannot be queried with 'tiny'")

    class Renamed:  # the real tiny embedder under another name
        info, dim = other, tiny_embedder.dim

    assert message(m, embedder=Renamed(), writing=True) == (
        f"index {idx} was built with model 'tiny', not 'other'; "
        "use the same model, or build a new index in another directory")
    assert message(m, embedder=Renamed(), writing=False) == (
        f"index {idx} was built with model 'tiny'; it cannot be queried with 'other' (64-dim)")
    # A lexical-only index takes no vectors from a writer's embedder; a reader's is simply unused.
    assert message(lexical, embedder=tiny_embedder, writing=True).startswith(
        f"index {idx} was built with model 'none', not ")
    lexical.check_model(idx, embedder=tiny_embedder, writing=False)
    # The same name giving another dimension (a re-published model) is named as such.
    same_name = Manifest.new(replace(tiny_embedder.info, dim=32), ChunkConfig(), AnnConfig())
    for writing in (True, False):
        assert message(same_name, embedder=tiny_embedder, writing=writing) == (
            f"model {tiny_embedder.info.name!r} now gives 64-dim vectors, the index holds 32")
    # The index's own model passes, by name and as an embedder.
    own = Manifest.new(tiny_embedder.info, ChunkConfig(), AnnConfig())
    for writing in (True, False):
        own.check_model(idx, model=tiny_embedder.info.name, embedder=tiny_embedder, writing=writing)
    lexical.check_model(idx, model="none", writing=True)


# --------------------------------------------------------------------------- ANN parameters from the record

@pytest.mark.parametrize("config, n, want", [
    (AnnConfig(), 49_999, choose_params(49_999, 64, "flat")),
    (AnnConfig(), 50_000, choose_params(50_000, 64, "ivfpq")),
    (AnnConfig(flat_threshold=1000), 5000, choose_params(5000, 64, "ivfpq")),
    (AnnConfig(kind="ivfpq", nlist=2), 300, choose_params(300, 64, "ivfpq", nlist=2)),
])
def test_ann_params_come_from_the_recorded_config(config, n, want):
    assert Manifest.new(_info(), ChunkConfig(), config).ann_params(n) == want


def test_a_reader_without_a_saved_ann_index_builds_the_recorded_one(tmp_path, tiny_embedder):
    """It used to restate the flat threshold and drop ``nlist``."""
    idx = tmp_path / "idx"
    docs = [{"id": f"{i:03d}", "text": f"第{i}話。{'東京大阪京都札幌'[i % 4]}で「蕎麦」を{i % 7}杯食べた😀"} for i in range(300)]
    with IndexBuilder.open(idx, model="tiny", embedder=tiny_embedder, ann=AnnConfig(kind="ivfpq", nlist=2)) as b:
        b.add_documents(docs)
    data = json.loads((idx / "manifest.json").read_text(encoding="utf-8"))
    assert data["ann"]["params"]["nlist"] == 2
    data["ann"] = None  # as if the writer was killed before its first ANN save
    (idx / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
    (idx / "ann.faiss").unlink()
    with Searcher.open(idx, embedder=tiny_embedder) as s:
        with s.store.snapshot() as snap:
            ann = s._ann_for(snap)
        assert ann.params == choose_params(300, 64, "ivfpq", nlist=2) and ann.ntotal == 300


# --------------------------------------------------------------------------- paths and atomic replacement

def test_paths_and_epoch_files(tmp_path):
    p = IndexPaths(tmp_path)
    assert [x.name for x in (p.manifest, p.meta, p.vectors, p.ann, p.lock)] == [
        "manifest.json", "meta.sqlite", "vectors.f16", "ann.faiss", "LOCK"]
    assert compact_path(p.vectors, 3).name == "vectors.f16.compact-3"
    assert retired_path(p.vectors, 12).name == "vectors.f16.epoch-12"
    assert epoch_file(p.vectors, compact_path(p.vectors, 3)) == ("compact", 3)
    assert epoch_file(p.vectors, retired_path(p.vectors, 12)) == ("retired", 12)
    for name in ("vectors.f16", "vectors.f16.compact-x", "vectors.f16.backup-1", "ann.faiss", "vectors.f16.epoch-"):
        assert epoch_file(p.vectors, tmp_path / name) is None
    p.manifest.write_text("{}")
    assert p.sizes() == {"manifest.json": 2}


def test_atomic_write_replaces_whole_files_and_a_failed_write_keeps_the_old_one(tmp_path):
    target = tmp_path / "ann.faiss"
    atomic_write_bytes(target, "古い".encode())
    assert target.read_text(encoding="utf-8") == "古い" and list(leftover_temp_files(tmp_path)) == []

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text(encoding="utf-8") == "古い"
    assert list(leftover_temp_files(tmp_path)) == [temp_path(target)]
    assert temp_path(target).name == f".ann.faiss.{os.getpid()}.tmp"
    atomic_write(target, lambda tmp: tmp.write_bytes("新しい".encode()))
    assert target.read_text(encoding="utf-8") == "新しい" and list(leftover_temp_files(tmp_path)) == []
