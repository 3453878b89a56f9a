"""Embedder: vectors equal sentence-transformers' own, batching, dtypes, errors, model identity.

Every parity test compares against the installed sentence-transformers run on
the same model directory: tiny random LLaMA models (last-token pooling, a
tokenizer adding <s> … </s>, right and left padding) and the real
all-MiniLM-L6-v2 weights (mean pooling + Normalize).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO, with_prompts
from mitsuke.indexer.config import EmbedConfig
from mitsuke.indexer.embedding import Embedder
from mitsuke.indexer.errors import ModelError, ModelMismatchError

ST = pytest.importorskip("sentence_transformers")

LONG = "更科蕎麦は信州の蕎麦の一種で、蕎麦の実の中心部だけを挽いた白い粉を使う。" * 30  # > any max_length here
TEXTS = [
    "東京タワーは東京都港区にある電波塔です。",
    "",
    "ｶﾀｶﾅ ﾃｷｽﾄ と　全角スペース、１２３４５ と ＡＢＣ",
    "彼は「それは『名作』だ」と言った。😀🍣",
    "mixed English and 日本語 text, with numbers 2026 and 　spaces　",
    LONG,
    "  前後に空白  ",
    "a",
    "大阪",
    LONG[:200] + "。次の文。",
]
TOL = 1e-5


@pytest.fixture(scope="module")
def st_models():
    """SentenceTransformer per model directory, loaded once."""
    cache: dict[str, object] = {}

    def get(path: Path):
        key = str(path)
        if key not in cache:
            cache[key] = ST.SentenceTransformer(key, device="cpu")
        return cache[key]

    return get


def _reference(model, texts, kind: str = "plain", batch_size: int = 3) -> np.ndarray:
    fn = {"plain": model.encode, "query": model.encode_query, "document": model.encode_document}[kind]
    return np.asarray(fn(list(texts), normalize_embeddings=True, batch_size=batch_size, convert_to_numpy=True))


def _assert_parity(emb: Embedder, ref_model, texts=TEXTS) -> None:
    ref_batched = _reference(ref_model, texts, batch_size=3)
    ref_single = np.stack([_reference(ref_model, [t], batch_size=1)[0] for t in texts])
    ours = emb.encode_documents(texts)
    ours_single = np.stack([emb.encode_documents([t])[0] for t in texts])
    assert ours.dtype == np.float32 and ours.shape == (len(texts), emb.dim)
    np.testing.assert_allclose(ours, ref_batched, atol=TOL, rtol=0)
    np.testing.assert_allclose(ours_single, ref_single, atol=TOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- parity

@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_model_left"])
def test_tiny_llama_matches_sentence_transformers(request, fixture, st_models):
    path = request.getfixturevalue(fixture)
    ref = st_models(path)
    emb = Embedder.from_pretrained(str(path), device="cpu", batch_tokens=300)  # several batches
    assert emb.tokenizer.padding_side == ref.tokenizer.padding_side
    assert emb.max_length == ref.max_seq_length == 128
    assert emb.info.pooling == "lasttoken"
    _assert_parity(emb, ref)


def test_minilm_matches_sentence_transformers(minilm_model, st_models):
    ref = st_models(minilm_model)
    emb = Embedder.from_pretrained(str(minilm_model), device="cpu", batch_tokens=700)
    assert (emb.dim, emb.max_length, emb.info.pooling) == (384, 256, "mean")
    _assert_parity(emb, ref)


JAPANESE = st.text(alphabet=st.sampled_from(list(
    "あいうえおかきくけこ漢字東京大阪更科蕎麦ｶﾀｶﾅﾊﾝｶｸ１２３ＡＢＣ「」『』（）、。！？ 　😀🍣abcXYZ0123\n\t~￥①髙﨑")),
    max_size=160)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(JAPANESE, min_size=1, max_size=6))
def test_any_japanese_batch_matches_sentence_transformers(tiny_model_left, st_models, texts):
    emb = _embedder(tiny_model_left)
    ref = _reference(st_models(tiny_model_left), texts, batch_size=4)
    np.testing.assert_allclose(emb.encode_documents(texts), ref, atol=TOL, rtol=0)


_EMBEDDERS: dict[str, Embedder] = {}


def _embedder(path: Path) -> Embedder:
    if str(path) not in _EMBEDDERS:
        _EMBEDDERS[str(path)] = Embedder.from_pretrained(str(path), device="cpu", batch_tokens=256)
    return _EMBEDDERS[str(path)]


def test_long_texts_are_truncated_like_sentence_transformers(tiny_model, st_models):
    emb = Embedder.from_pretrained(str(tiny_model), device="cpu")
    assert emb.count_tokens([LONG])[0] > emb.max_length
    a, b = emb.encode_documents([LONG, LONG + "まだ続く文章。"])
    np.testing.assert_allclose(a, b, atol=1e-6)  # everything past max_length is cut off


def test_max_length_lowers_the_limit_as_sentence_transformers_max_seq_length(tiny_model_left):
    ref = ST.SentenceTransformer(str(tiny_model_left), device="cpu")
    ref.max_seq_length = 16
    emb = Embedder.from_pretrained(str(tiny_model_left), device="cpu", max_length=16)
    assert emb.max_length == 16
    np.testing.assert_allclose(emb.encode_documents(TEXTS), _reference(ref, TEXTS), atol=TOL, rtol=0)
    assert Embedder.from_pretrained(str(tiny_model_left), device="cpu", max_length=10_000).max_length == 128


@pytest.mark.parametrize("base, prompts, include_prompt", [
    ("tiny_model_left", {"query": "クエリ: ", "document": "文章: "}, False),
    ("tiny_model_left", {"query": "検索クエリ: ", "document": "検索文書: "}, True),
    # sentence-transformers 6.2 always has a "document" key (""), so a lone
    # "passage" prompt is never used by encode_document, nor the default name.
    ("tiny_model_left", {"query": "query: ", "passage": "passage: "}, True),
    # Mean pooling is where include_prompt=False changes the vector.
    ("minilm_model", {"query": "クエリ: ", "document": "文章: "}, False),
])
def test_query_and_document_prompts_match_sentence_transformers(request, tmp_path, base, prompts, include_prompt):
    path = with_prompts(request.getfixturevalue(base), tmp_path / "m", prompts, include_prompt=include_prompt,
                        default_prompt_name="query")
    ref = ST.SentenceTransformer(str(path), device="cpu")
    emb = Embedder.from_pretrained(str(path), device="cpu", batch_tokens=500)
    texts = TEXTS[:6]
    np.testing.assert_allclose(emb.encode_queries(texts), _reference(ref, texts, "query"), atol=TOL, rtol=0)
    np.testing.assert_allclose(emb.encode_documents(texts), _reference(ref, texts, "document"), atol=TOL, rtol=0)
    assert emb.info.prompts.get("query") == prompts["query"]


def test_prompts_change_the_vectors(tiny_model_left, tmp_path):
    plain = Embedder.from_pretrained(str(tiny_model_left), device="cpu")
    prompted = Embedder.from_pretrained(str(with_prompts(tiny_model_left, tmp_path / "m",
                                                         {"query": "クエリ: ", "document": "文章: "})), device="cpu")
    q, d = prompted.encode_queries(["大阪"]), prompted.encode_documents(["大阪"])
    assert not np.allclose(q, d, atol=1e-3)
    assert not np.allclose(plain.encode_queries(["大阪"]), q, atol=1e-3)


# --------------------------------------------------------------------------- batching

@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.integers(0, len(TEXTS) - 1), min_size=1, max_size=12),
       budget=st.integers(1, 400))
def test_any_batching_gives_each_text_its_own_vector(tiny_embedder, picks, budget):
    texts = [TEXTS[i] for i in picks]
    single = {i: tiny_embedder.encode_documents([TEXTS[i]])[0] for i in set(picks)}
    saved = tiny_embedder.batch_tokens
    tiny_embedder.batch_tokens = budget  # below one row's width still makes progress, one row at a time
    try:
        got = tiny_embedder.encode_documents(texts)
    finally:
        tiny_embedder.batch_tokens = saved
    for row, i in zip(got, picks):
        np.testing.assert_allclose(row, single[i], atol=1e-5)


def test_progress_reports_every_token_once(tiny_embedder):
    seen: list[int] = []
    saved = tiny_embedder.batch_tokens
    tiny_embedder.batch_tokens = 64
    try:
        tiny_embedder.encode_documents(TEXTS, progress=seen.append)
    finally:
        tiny_embedder.batch_tokens = saved
    lengths = [len(x) for x in tiny_embedder.tokenizer(TEXTS, truncation=True,
                                                         max_length=tiny_embedder.max_length)["input_ids"]]
    assert len(seen) > 1 and sum(seen) == sum(lengths)


def test_empty_input_and_bad_input(tiny_embedder):
    assert tiny_embedder.encode_queries([]).shape == (0, tiny_embedder.dim)
    with pytest.raises(TypeError):
        tiny_embedder.encode_documents("東京")
    with pytest.raises(TypeError):
        tiny_embedder.encode_documents(["東京", None])


def test_count_tokens_excludes_special_tokens(tiny_embedder):
    texts = ["東京", "", "更科蕎麦とはなんですか？"]
    counts = tiny_embedder.count_tokens(texts)
    with_special = [len(x) for x in tiny_embedder.tokenizer(texts)["input_ids"]]
    assert counts[1] == 0
    assert [c + 2 for c in counts] == with_special  # <s> … </s>
    assert tiny_embedder.count_tokens([]) == []


# --------------------------------------------------------------------------- dtypes and devices

def test_cpu_defaults_to_float32_and_bfloat16_on_request(tiny_model):
    import torch

    fp32 = Embedder.from_pretrained(str(tiny_model), device="cpu")
    bf16 = Embedder.from_pretrained(str(tiny_model), device="cpu", dtype="bfloat16")
    assert fp32.dtype == torch.float32 and fp32.dtype_name == "float32"
    assert bf16.dtype == torch.bfloat16 and bf16.dtype_name == "bfloat16"
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    a, b = fp32.encode_documents(TEXTS), bf16.encode_documents(TEXTS)
    assert b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert float((a * b).sum(axis=1).min()) > 0.98  # same direction, bf16 rounding apart


def test_unknown_dtype_and_device_are_model_errors(tiny_model):
    with pytest.raises(ModelError, match="dtype 'int3'"):
        Embedder.from_pretrained(str(tiny_model), device="cpu", dtype="int3")
    with pytest.raises(ModelError, match="device"):
        Embedder.from_pretrained(str(tiny_model), device="toaster")


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_uses_bf16_and_survives_out_of_memory(tiny_model):
    import torch

    emb = Embedder.from_pretrained(str(tiny_model), device="cuda")
    assert emb.dtype in (torch.bfloat16, torch.float16)
    ref = Embedder.from_pretrained(str(tiny_model), device="cpu").encode_documents(TEXTS)
    np.testing.assert_allclose(emb.encode_documents(TEXTS), ref, atol=0.05)
    # One giant batch under a ~1 GiB cap: the allocator refuses, the budget halves and the run goes on.
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, 2**30 / torch.cuda.get_device_properties(0).total_memory))
    emb.batch_tokens = 1 << 40
    try:
        out = emb.encode_documents([LONG] * 40_000)  # 40,000 x 128 tokens
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert emb.batch_tokens < 1 << 40 and np.isfinite(out).all()
    np.testing.assert_allclose(out[0], out[-1], atol=1e-2)


# --------------------------------------------------------------------------- loading errors

@pytest.mark.parametrize("offline", ["1", None])
def test_unreachable_hub_id_fails_fast_with_the_way_out(monkeypatch, offline):
    if offline is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    started = time.monotonic()
    with pytest.raises(ModelError) as err:
        Embedder.from_pretrained("mitsuke-nobody/no-such-embedding-model-2026", device="cpu")
    assert time.monotonic() - started < 10
    msg = str(err.value)
    assert "mitsuke-nobody/no-such-embedding-model-2026" in msg
    assert "local directory" in msg and "--model none" in msg


def test_wrong_path_and_file_path(tmp_path):
    with pytest.raises(ModelError, match="does not exist.*--model none"):
        Embedder.from_pretrained(str(tmp_path / "どこにもない" / "model"))
    (tmp_path / "model.txt").write_text("x")
    with pytest.raises(ModelError, match="is a file"):
        Embedder.from_pretrained(str(tmp_path / "model.txt"))


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("remove, named", [
    ("config.json", "config.json"),
    ("model.safetensors", "no weights"),
    ("tokenizer.json", "no tokenizer files"),
])
def test_missing_files_are_named(tiny_model, tmp_path, remove, named):
    path = _copy_model(tiny_model, tmp_path / "m")
    (path / remove).unlink()
    if remove == "tokenizer.json":
        (path / "tokenizer_config.json").unlink()
    with pytest.raises(ModelError, match=named):
        Embedder.from_pretrained(str(path), device="cpu")


def test_model_needing_remote_code_says_so(tiny_model, tmp_path):
    path = _copy_model(tiny_model, tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="mitsuke_custom", architectures=["CustomModel"],
                  auto_map={"AutoConfig": "configuration_custom.CustomConfig", "AutoModel": "modeling_custom.CustomModel"})
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="trust_remote_code=True.*--trust-remote-code"):
        Embedder.from_pretrained(str(path), device="cpu")


def test_unsupported_sentence_transformers_module_is_refused(tiny_model, tmp_path):
    path = _copy_model(tiny_model, tmp_path / "m")
    modules = json.loads((path / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelError, match="Dense"):
        Embedder.from_pretrained(str(path), device="cpu")


def test_plain_transformers_model_gets_sentence_transformers_default_pooling(tiny_model, tmp_path):
    path = _copy_model(tiny_model, tmp_path / "m")
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
        (path / name).unlink()
    shutil.rmtree(path / "1_Pooling")
    ref = ST.SentenceTransformer(str(path), device="cpu")
    emb = Embedder.from_pretrained(str(path), device="cpu")
    assert emb.info.pooling == "lasttoken"  # a *ForCausalLM checkpoint
    assert emb.max_length == ref.max_seq_length
    np.testing.assert_allclose(emb.encode_documents(TEXTS), _reference(ref, TEXTS), atol=TOL, rtol=0)


def test_importing_the_embedder_loads_nothing_heavy():
    """bench/gpu_embed.py imports it on machines without faiss, fugashi or sqlalchemy."""
    code = (
        "import mitsuke.indexer.embedding, sys; "
        "heavy = [m for m in ('torch', 'transformers', 'faiss', 'fugashi', 'sqlalchemy') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == ""


# --------------------------------------------------------------------------- model identity in the index

def test_manifest_records_the_model_and_other_models_are_refused(tiny_model, tiny_model_left, tiny_embedder,
                                                                 tmp_path, monkeypatch):
    from mitsuke.indexer import IndexBuilder
    from mitsuke.search import Searcher

    idx = tmp_path / "idx"
    with IndexBuilder.open(idx, model=str(tiny_model), embedder=tiny_embedder) as b:
        b.add_documents([{"id": "a", "text": "更科蕎麦は信州の名物です。"}])
    model = json.loads((idx / "manifest.json").read_text(encoding="utf-8"))["model"]
    assert model == {"name": str(tiny_model), "revision": None, "dim": 64, "pooling": "lasttoken",
                     "normalize": True, "max_length": 128, "prompts": {}, "path": str(tiny_model.resolve())}

    with pytest.raises(ModelMismatchError, match="tiny-llama-left"):
        IndexBuilder.open(idx, model=str(tiny_model_left))
    with pytest.raises(ModelMismatchError):
        IndexBuilder.open(idx, model="none")
    with pytest.raises(ModelMismatchError):
        Searcher.open(idx, model=str(tiny_model_left))
    other = Embedder.from_pretrained(str(tiny_model_left), device="cpu")
    with pytest.raises(ModelMismatchError):
        IndexBuilder.open(idx, embedder=other)
    with pytest.raises(ModelMismatchError):
        Searcher.open(idx, embedder=other)
    # The index's own model still writes and answers, from any working directory.
    monkeypatch.chdir(tmp_path)
    with IndexBuilder.open(idx) as b:
        assert b.embedder.dim == 64
    with Searcher.open(idx, device="cpu") as s:
        assert s.search("蕎麦", k=1, mode="dense")[0].doc_key == "a"


def test_an_index_built_from_a_relative_model_path_opens_from_anywhere(tiny_model, tmp_path, monkeypatch):
    from mitsuke.indexer import IndexBuilder
    from mitsuke.search import Searcher

    monkeypatch.chdir(tiny_model.parent)
    idx = tmp_path / "idx"
    with IndexBuilder.open(idx, model=f"./{tiny_model.name}", embed=EmbedConfig(device="cpu")) as b:
        b.add_documents([{"id": "a", "text": "更科蕎麦は信州の名物です。"}])
    monkeypatch.chdir(tmp_path)
    assert not Path(f"./{tiny_model.name}").exists()
    with Searcher.open(idx, device="cpu") as s:
        assert s.search("蕎麦", k=1, mode="dense")[0].doc_key == "a"


@pytest.mark.parametrize("dtype, shown", [("auto", "float32"), ("bfloat16", "bfloat16")])
def test_index_command_says_which_device_and_dtype_it_embeds_with(tmp_path, tiny_model, dtype, shown):
    from click.testing import CliRunner

    from mitsuke.cli import cli

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "蕎麦.txt").write_text("更科蕎麦は蕎麦の実の中心部だけを挽いた粉で打つ。", encoding="utf-8")
    r = CliRunner().invoke(cli, ["index", str(docs), "--index", str(tmp_path / "idx"), "--model", str(tiny_model),
                                 "--device", "cpu", "--dtype", dtype], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert f"on cpu ({shown}, sdpa attention" in r.stderr
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["model"]["name"] == str(tiny_model)


@pytest.mark.parametrize("mode", ["cls", "max", "mean_sqrt_len_tokens", "weightedmean", ["cls", "mean"]])
def test_every_pooling_mode_matches_sentence_transformers(tiny_model_left, tmp_path, mode):
    """sentence-transformers 6 pooling configs (``pooling_mode``), on left padding where positions matter."""
    path = with_prompts(tiny_model_left, tmp_path / "m", {"query": "クエリ: "}, include_prompt=False)
    (path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"embedding_dimension": 64, "pooling_mode": mode, "include_prompt": False}))
    ref = ST.SentenceTransformer(str(path), device="cpu")
    emb = Embedder.from_pretrained(str(path), device="cpu", batch_tokens=300)
    assert emb.dim == ref.get_embedding_dimension() == 64 * (2 if isinstance(mode, list) else 1)
    texts = TEXTS[:6]
    np.testing.assert_allclose(emb.encode_documents(texts), _reference(ref, texts), atol=TOL, rtol=0)
    np.testing.assert_allclose(emb.encode_queries(texts), _reference(ref, texts, "query"), atol=TOL, rtol=0)
