"""Sentence embeddings that equal sentence-transformers' for the same model.

Reads the model's sentence-transformers files (modules.json, the Pooling
config, sentence_bert_config.json, config_sentence_transformers.json) and
reproduces what ``SentenceTransformer(model).encode_query/encode_document``
(sentence-transformers 6.2) computes -- tokenisation, prompts, pooling,
normalisation -- with plain transformers, so that mitsuke controls batching,
dtype and devices.

Only numpy and the standard library are imported at module level: torch and
transformers load when a model does, so ``import indexer.embedding`` stays
cheap (the GPU benchmark relies on it).

>>> emb = Embedder.from_pretrained("path/to/model")              # doctest: +SKIP
>>> emb.encode_documents(["更科蕎麦は蕎麦の一種。"]).shape       # doctest: +SKIP
(1, 1792)
"""
from __future__ import annotations

import functools
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from mitsuke.indexer.errors import ModelError
from mitsuke.indexer.layout import ModelInfo  # what the manifest records; re-exported

__all__ = ["Embedder", "ModelInfo", "resolve_model_dir", "load_token_counter", "count_tokens_with", "POOLING_MODES"]

log = logging.getLogger("mitsuke")

# What a hub download fetches: configs, tokenizer files and safetensors weights
# (not the .bin/.onnx/.h5 duplicates many repos also carry).
_ST_FILES = [
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "*/config.json",
    "config.json",
    "*.json",
    "*.model",
    "*.safetensors",
    "*.txt",
]
# sentence-transformers' order: several modes are concatenated in this order.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_ST_CONFIG_FILES = ("sentence_bert_config.json", "sentence_roberta_config.json", "sentence_distilbert_config.json",
                    "sentence_camembert_config.json", "sentence_albert_config.json",
                    "sentence_xlm-roberta_config.json", "sentence_xlnet_config.json")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json", "spiece.model",
                    "sentencepiece.bpe.model", "tokenizer_config.json")
_HUB_CONNECT_TIMEOUT_S = 3.0
_ETA_LOG_EVERY_S = 30.0
_FLUSH_EVERY_BATCHES = 16  # device -> host copies batched, so the GPU never waits on the host
_NO_NETWORK_HINT = ("Without network access, download the model elsewhere and pass its local directory "
                    "with --model PATH, or build a lexical-only index with --model none.")


# --------------------------------------------------------------------------- locating the model

def _read_json(path: Path) -> Any:
    if not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}; the model directory is damaged, download it again") from None


def _hub_reachable(timeout: float) -> bool:
    """A quick TCP connect to the hub, so a blocked network fails in seconds, not after retries."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a direct probe says nothing about a proxied route: let the download decide
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_model_dir(name_or_path: str, *, revision: str | None = None,
                      connect_timeout: float = _HUB_CONNECT_TIMEOUT_S) -> tuple[Path, str | None]:
    """A local directory for ``name_or_path`` (fetching a hub id at ``revision``), and its revision when known.

    A hub id is looked up in the local Hugging Face cache first when the hub
    cannot be reached (offline mode, or no TCP connection within
    ``connect_timeout`` seconds), so an unreachable hub fails fast with a
    :class:`ModelError` that names the way out.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path, None
    if path.exists():
        raise ModelError(f"model path {name_or_path!r} is a file; give the model's directory")
    looks_local = (name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
                   or os.sep != "/" and os.sep in name_or_path)
    if looks_local:
        raise ModelError(
            f"model directory {name_or_path!r} does not exist; give an existing local "
            "directory, a hub id such as sbintuitions/sarashina-embedding-v1-1b, or --model none"
        )
    from huggingface_hub import snapshot_download

    online = not _offline() and _hub_reachable(connect_timeout)
    try:
        if online:
            local = snapshot_download(name_or_path, revision=revision, allow_patterns=_ST_FILES, etag_timeout=10)
        else:
            local = snapshot_download(name_or_path, revision=revision, allow_patterns=_ST_FILES,
                                      local_files_only=True)
    except Exception as exc:  # network, auth, unknown repo, not cached: all end the same way for the user
        first = str(exc).splitlines()[0] if str(exc) else ""
        why = "the model hub cannot be reached and the model is not in the local cache" if not online else (
            f"{type(exc).__name__}: {first}")
        at = f" at revision {revision}" if revision else ""
        raise ModelError(f"cannot load model {name_or_path!r}{at}: {why}. {_NO_NETWORK_HINT}") from None
    name = Path(local).name
    revision = name if len(name) == 40 and all(c in "0123456789abcdef" for c in name) else None
    return Path(local), revision


def _check_files(tf_dir: Path, name_or_path: str) -> None:
    """Name the missing file before transformers raises something less direct."""
    if not (tf_dir / "config.json").is_file():
        raise ModelError(f"model {name_or_path!r}: {tf_dir / 'config.json'} is missing; the directory must hold a "
                         "transformers model (config.json, weights, tokenizer files), e.g. a sentence-transformers "
                         "model saved with save_pretrained or downloaded with `hf download`")
    if not any((tf_dir / f).is_file() for f in _WEIGHT_FILES):
        raise ModelError(f"model {name_or_path!r}: no weights in {tf_dir} (looked for {', '.join(_WEIGHT_FILES)}); "
                         "download the model completely")
    if not any((tf_dir / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelError(f"model {name_or_path!r}: no tokenizer files in {tf_dir} (looked for "
                         f"{', '.join(_TOKENIZER_FILES)}); download the model completely")


# --------------------------------------------------------------------------- sentence-transformers settings

@dataclass(frozen=True)
class _Recipe:
    """How sentence-transformers turns this model's hidden states into a sentence vector."""

    transformer_path: str = ""
    pooling: tuple[str, ...] = ("mean",)
    include_prompt: bool = True
    normalize: bool = False
    do_lower_case: bool = False
    max_seq_length: int | None = None
    processor_kwargs: dict[str, Any] = field(default_factory=dict)
    config_kwargs: dict[str, Any] = field(default_factory=dict)
    query_prompt: str = ""
    document_prompt: str = ""
    has_modules: bool = True


def _pooling_modes(cfg: dict[str, Any]) -> tuple[str, ...]:
    mode = cfg.get("pooling_mode")
    if mode is None:
        modes = tuple(m for k, m in _LEGACY_POOLING_KEYS.items() if cfg.get(k))
        modes = modes or ("mean",)
    else:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad:
        raise ModelError(f"pooling mode {bad[0]!r} is not one of {', '.join(POOLING_MODES)}")
    return modes


def _resolve_prompts(meta: dict[str, Any]) -> tuple[str, str]:
    """The query and document prompts ``encode_query``/``encode_document`` use (ST 6.2 rules).

    SentenceTransformer starts from ``{"query": None, "document": None}``, fills in
    the saved prompts, and turns a remaining None into "". So ``encode_query``
    always uses ``prompts["query"]`` and ``encode_document`` always finds a
    ``"document"`` key before ``"passage"``/``"corpus"``: a model that only saves
    a ``"passage"`` prompt gets no prompt from ``encode_document``, and
    ``default_prompt_name`` never applies to either.
    """
    prompts: dict[str, str | None] = {"query": None, "document": None}
    for key, value in (meta.get("prompts") or {}).items():
        if key not in prompts or prompts[key] is None:
            prompts[key] = value
    resolved = {k: ("" if v is None else str(v)) for k, v in prompts.items()}
    document = next(resolved[k] for k in ("document", "passage", "corpus") if k in resolved)
    return resolved["query"], document


def _without_remote_code(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """sentence-transformers never lets a config file turn on remote code; neither do we."""
    return {k: v for k, v in (kwargs or {}).items() if k != "trust_remote_code"}


def _read_recipe(root: Path, name_or_path: str) -> _Recipe:
    modules = _read_json(root / "modules.json")
    if not modules:
        return _Recipe(has_modules=False)
    if not isinstance(modules, list):
        raise ModelError(f"{root / 'modules.json'} is not a list of modules; the model directory is damaged")
    tf_path: str | None = None
    pool_path: str | None = None
    normalize = False
    for m in sorted(modules, key=lambda m: int(m.get("idx", 0))):
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Transformer" and tf_path is None:
            tf_path = str(m.get("path", ""))
        elif kind == "Pooling" and pool_path is None:
            pool_path = str(m.get("path", ""))
        elif kind == "Normalize":
            normalize = True
        else:
            raise ModelError(
                f"model {name_or_path!r} uses the sentence-transformers module {m.get('type')!r}, which mitsuke "
                "does not reproduce (supported: Transformer, Pooling, Normalize); use another model")
    if tf_path is None:
        raise ModelError(f"model {name_or_path!r}: modules.json has no Transformer module; use another model")
    tf_dir = root / tf_path
    st_cfg: dict[str, Any] = {}
    for fname in _ST_CONFIG_FILES:
        st_cfg = _read_json(tf_dir / fname)
        if st_cfg:
            break
    task = st_cfg.get("transformer_task", "feature-extraction")
    if task != "feature-extraction":
        raise ModelError(f"model {name_or_path!r} is a {task!r} model, not a sentence embedding model")
    modality = st_cfg.get("modality_config")
    if modality and "text" not in modality:
        raise ModelError(f"model {name_or_path!r} embeds {', '.join(modality)} inputs, not plain text")
    pool_cfg = _read_json(root / pool_path / "config.json") if pool_path is not None else {}
    modes = _pooling_modes(pool_cfg) if pool_path is not None else ("mean",)
    query, document = _resolve_prompts(_read_json(root / "config_sentence_transformers.json"))
    return _Recipe(
        transformer_path=tf_path,
        pooling=modes,
        include_prompt=bool(pool_cfg.get("include_prompt", True)),
        normalize=normalize,
        do_lower_case=bool(st_cfg.get("do_lower_case", False)),
        max_seq_length=st_cfg.get("max_seq_length"),
        processor_kwargs=_without_remote_code(st_cfg.get("processor_kwargs", st_cfg.get("tokenizer_args"))),
        config_kwargs=_without_remote_code(st_cfg.get("config_kwargs", st_cfg.get("config_args"))),
        query_prompt=query,
        document_prompt=document,
    )


def _st_max_length(recipe: _Recipe, tokenizer, config) -> int:
    """The tokenizer's ``model_max_length`` as sentence-transformers' Transformer module sets it."""
    if "model_max_length" in recipe.processor_kwargs:
        return int(recipe.processor_kwargs["model_max_length"])
    if recipe.max_seq_length is not None:
        return int(recipe.max_seq_length)
    limit = int(tokenizer.model_max_length)
    mpe = getattr(config, "max_position_embeddings", None)
    if mpe is not None and mpe != -1:
        limit = min(limit, int(mpe))
    return limit


def _apply_lower_case(tokenizer) -> None:
    """Lower-case inside the tokenizer, exactly as sentence-transformers' ``do_lower_case`` does."""
    if getattr(tokenizer, "is_fast", False):
        from tokenizers.normalizers import Lowercase, Sequence as NormalizerSequence

        normalizer = tokenizer.backend_tokenizer.normalizer
        has = isinstance(normalizer, Lowercase) or (
            isinstance(normalizer, NormalizerSequence) and any(isinstance(n, Lowercase) for n in normalizer))
        if not has:
            parts = [Lowercase()]
            if isinstance(normalizer, NormalizerSequence):
                parts += list(normalizer)
            elif normalizer is not None:
                parts.append(normalizer)
            tokenizer.backend_tokenizer.normalizer = NormalizerSequence(parts)
    else:
        try:
            tokenizer.do_lower_case = True
        except AttributeError:
            tokenizer.basic_tokenizer.do_lower_case = True


# --------------------------------------------------------------------------- devices and dtypes

def count_tokens_with(tokenizer, texts: Sequence[str]) -> list[int]:
    """Tokens of each text without special tokens (the chunker's budget unit)."""
    if not texts:
        return []
    enc = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)
    return [len(ids) for ids in enc["input_ids"]]


def load_token_counter(name_or_path: str) -> Callable[[Sequence[str]], list[int]]:
    """The chunker's counter for a model: its tokenizer alone, no weights loaded.

    Counts exactly as ``Embedder.count_tokens`` (same tokenizer directory, same
    lower-casing), at a fraction of the load time: for ``mitsuke chunk`` and benchmarks.
    """
    root, _ = resolve_model_dir(name_or_path)
    recipe = _read_recipe(root, name_or_path)
    tf_dir = root / recipe.transformer_path if recipe.transformer_path else root
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tf_dir)
    except Exception as exc:  # a directory without tokenizer files, a broken one...
        raise ModelError(f"cannot load a tokenizer from {name_or_path!r} ({tf_dir}): {type(exc).__name__}: {exc}. "
                         "Give a model directory with tokenizer files, or --model none to count characters") from None
    if recipe.do_lower_case:
        _apply_lower_case(tokenizer)
    return functools.partial(count_tokens_with, tokenizer)


def _pick_device(device: str):
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ModelError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but torch sees no CUDA GPU; use --device cpu")
    return dev


_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16", "half": "float16"}


def _pick_dtype(dtype: str, device):
    """fp32 on CPU unless asked (exact parity); bf16 on CUDA, fp16 where bf16 is missing."""
    import torch

    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return getattr(torch, _DTYPES[dtype])


def _cpu_has_amx_bf16() -> bool | None:
    """Whether the CPU has AMX-BF16 tiles (Linux /proc/cpuinfo); None where that cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------- the embedder

class Embedder:
    """Embeds texts into L2-normalised float32 vectors, as sentence-transformers would.

    Build one with :meth:`from_pretrained` (a model directory or hub id) or
    :meth:`from_model` (a model already in memory).

    >>> emb = Embedder.from_pretrained("path/to/model", device="cpu")      # doctest: +SKIP
    >>> emb.encode_queries(["更科蕎麦とはなんですか?"]).shape                # doctest: +SKIP
    (1, 1792)
    """

    def __init__(self, model, tokenizer, info: ModelInfo, *, device, dtype,
                 batch_tokens: int = 16384, pooling: Sequence[str] | None = None,
                 include_prompt: bool = True, query_prompt: str = "", document_prompt: str = "") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.device = device
        self.dtype = dtype
        self.batch_tokens = int(batch_tokens)
        self.pooling: tuple[str, ...] = tuple(pooling) if pooling else tuple(info.pooling.split("+"))
        self.include_prompt = include_prompt
        self.query_prompt = query_prompt
        self.document_prompt = document_prompt
        self._prompt_lengths: dict[str, int] = {}
        self._special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        import inspect

        params = inspect.signature(model.forward).parameters
        self._takes_token_types = "token_type_ids" in params

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_length: int | None = None,
        trust_remote_code: bool = False,
        batch_tokens: int = 16384,
        revision: str | None = None,
    ) -> "Embedder":
        """Load a sentence-transformers (or plain transformers) model directory or hub id.

        ``dtype="auto"`` means float32 on CPU and bfloat16 (float16 without
        bf16 support) on CUDA. ``max_length`` can only lower the model's own
        limit; ``revision`` pins a hub commit (what an index recorded). Any
        failure to load raises :class:`ModelError` saying what to do.
        """
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if max_length is not None and max_length < 1:
            raise ModelError(f"max_length must be a positive number of tokens, got {max_length}")
        root, revision = resolve_model_dir(name_or_path, revision=revision)
        local = Path(name_or_path).expanduser().is_dir()
        recipe = _read_recipe(root, name_or_path)
        tf_dir = root / recipe.transformer_path
        _check_files(tf_dir, name_or_path)
        dev = _pick_device(device)
        torch_dtype = _pick_dtype(dtype, dev)
        if dev.type == "cpu" and torch_dtype != torch.float32 and _cpu_has_amx_bf16() is False:
            # BENCHMARKS.md "Embedding": bf16 ran ~2x slower than fp32 on an avx512_bf16-only Xeon.
            log.warning("%s on a CPU without AMX-BF16 is usually slower than float32; "
                        "use --dtype float32 unless you have measured otherwise", str(torch_dtype)[6:])

        from transformers.utils import logging as hf_logging

        # A causal-LM checkpoint loaded as its base model reports its unused
        # lm_head as "UNEXPECTED": expected here, and noise for our users.
        previous = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            config = AutoConfig.from_pretrained(tf_dir, trust_remote_code=trust_remote_code, **recipe.config_kwargs)
            if hasattr(config, "use_cache"):
                config.use_cache = False  # no KV cache for a single forward pass (as sentence-transformers)
            tok_kwargs = dict(recipe.processor_kwargs)
            tokenizer = AutoTokenizer.from_pretrained(tf_dir, trust_remote_code=trust_remote_code, **tok_kwargs)
            model = AutoModel.from_pretrained(tf_dir, config=config, dtype=torch_dtype,
                                              trust_remote_code=trust_remote_code)
        except ModelError:
            raise
        except (ValueError, OSError, KeyError, ImportError, RuntimeError) as exc:
            text = str(exc)
            if "trust_remote_code" in text or "custom code" in text:
                raise ModelError(
                    f"model {name_or_path!r} needs its own Python code to load; if you trust it, pass "
                    "trust_remote_code=True (CLI: --trust-remote-code), or use another model") from None
            first = (text.splitlines()[0] if text else type(exc).__name__).rstrip(".")
            raise ModelError(f"cannot load model {name_or_path!r} from {tf_dir}: {first}. The directory must hold "
                             "config.json, the weights and the tokenizer files of a transformers model.") from None
        finally:
            hf_logging.set_verbosity(previous)

        if recipe.do_lower_case:
            _apply_lower_case(tokenizer)
        pooling = recipe.pooling
        if not recipe.has_modules:
            # sentence-transformers' fallback for a plain transformers model.
            archs = getattr(config, "architectures", None) or []
            causal = bool(archs) and archs[0].endswith("ForCausalLM") and getattr(config, "is_causal", True)
            pooling = ("lasttoken",) if causal else ("mean",)
            log.warning("%s has no modules.json: using %s pooling, as sentence-transformers would",
                        name_or_path, pooling[0])
            if getattr(tokenizer, "chat_template", None):
                log.warning("%s has a chat template, which sentence-transformers would apply to plain-model "
                            "inputs; mitsuke embeds the raw text", name_or_path)
        try:
            model.to(dev)
        except RuntimeError as exc:  # e.g. CUDA out of memory while moving the weights
            raise ModelError(f"cannot move model {name_or_path!r} to {dev}: {str(exc).splitlines()[0]}; "
                             "use --device cpu or a smaller --dtype") from None
        return cls.from_model(
            model, tokenizer, name=name_or_path, revision=revision, pooling=pooling,
            include_prompt=recipe.include_prompt, normalize=True,
            max_length=min(max_length, _st_max_length(recipe, tokenizer, config)) if max_length
            else _st_max_length(recipe, tokenizer, config),
            query_prompt=recipe.query_prompt, document_prompt=recipe.document_prompt,
            batch_tokens=batch_tokens, path=str(root.resolve()) if local else None)

    @classmethod
    def from_model(
        cls,
        model,
        tokenizer,
        *,
        name: str,
        pooling: str | Sequence[str] = "lasttoken",
        max_length: int | None = None,
        include_prompt: bool = True,
        normalize: bool = True,
        query_prompt: str = "",
        document_prompt: str = "",
        revision: str | None = None,
        batch_tokens: int = 16384,
        path: str | None = None,
    ) -> "Embedder":
        """Wrap a transformers model and tokenizer already in memory (benchmarks, tests).

        The model stays on its device and in its dtype.
        """
        import torch

        modes = (pooling,) if isinstance(pooling, str) else tuple(pooling)
        for m in modes:
            if m not in POOLING_MODES:
                raise ModelError(f"pooling mode {m!r} is not one of {', '.join(POOLING_MODES)}")
        if tokenizer.pad_token is None:
            # Padding positions are masked out; any id works, but it must exist.
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        model.eval()
        param = next(model.parameters())
        config = model.config
        hidden = int(getattr(config, "hidden_size", 0) or config.get_text_config().hidden_size)
        if max_length is None:
            max_length = min(int(tokenizer.model_max_length), int(getattr(config, "max_position_embeddings", 1 << 30)))
        prompts = {k: v for k, v in (("query", query_prompt), ("document", document_prompt)) if v}
        info = ModelInfo(
            name=name,
            revision=revision,
            dim=hidden * len(modes),
            pooling="+".join(modes),
            normalize=normalize,  # mitsuke searches by cosine: vectors are always unit length
            max_length=int(max_length),
            prompts=prompts,
            path=path,
        )
        attn = getattr(config, "_attn_implementation", None)
        log.info("embedding model %s on %s (%s, attention %s), pooling %s, max_length %d",
                 name, param.device, str(param.dtype).replace("torch.", ""), attn, info.pooling, info.max_length)
        return cls(model, tokenizer, info, device=param.device, dtype=param.dtype, batch_tokens=batch_tokens,
                   pooling=modes, include_prompt=include_prompt, query_prompt=query_prompt,
                   document_prompt=document_prompt)

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Length of the returned vectors."""
        return self.info.dim

    @property
    def max_length(self) -> int:
        """Longest input in tokens (special tokens and prompt included); longer inputs are truncated."""
        return self.info.max_length

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    # ------------------------------------------------------------------ tokens
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text without special tokens or prompt (the chunker's budget unit).

        >>> emb.count_tokens(["東京", ""])          # doctest: +SKIP
        [2, 0]
        """
        return count_tokens_with(self.tokenizer, texts)

    # ------------------------------------------------------------------ encoding
    def encode_documents(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Passage vectors: float32 ``(len(texts), dim)``, unit length (as ``encode_document``).

        ``progress`` is called after each batch with the number of tokens it held.
        """
        return self._encode(texts, self.document_prompt, progress)

    def encode_queries(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Query vectors: float32 ``(len(texts), dim)``, unit length (as ``encode_query``)."""
        return self._encode(texts, self.query_prompt, progress)

    def _prompt_length(self, prompt: str) -> int:
        """Tokens of the prompt as sentence-transformers counts them (a trailing special token excluded)."""
        if prompt not in self._prompt_lengths:
            ids = self.tokenizer([prompt], truncation="longest_first", max_length=self.max_length)["input_ids"][0]
            n = len(ids)
            if ids and ids[-1] in self._special_ids:
                n -= 1
            self._prompt_lengths[prompt] = n
        return self._prompt_lengths[prompt]

    def _encode(self, texts: Sequence[str], prompt: str, progress: Callable[[int], None] | None) -> np.ndarray:
        import torch

        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not a single string")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i} is a {type(t).__name__}, not a str")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        prompt_len = 0
        if prompt:  # an empty prompt is no prompt, in sentence-transformers too
            texts = [prompt + t for t in texts]
            prompt_len = 0 if self.include_prompt else self._prompt_length(prompt)
        ids = self.tokenizer(texts, truncation="longest_first", max_length=self.max_length, verbose=False)
        input_ids: list[list[int]] = ids["input_ids"]
        types: list[list[int]] | None = ids.get("token_type_ids") if self._takes_token_types else None
        lengths = np.fromiter((len(x) for x in input_ids), dtype=np.int64, count=len(input_ids))
        # Longest first: a batch's padded width is its first row's length, and
        # the first batch shows at once whether the largest one fits.
        order = np.argsort(-lengths, kind="stable")
        order = order[lengths[order] > 0]  # no tokens at all: nothing to embed, the row stays zero
        total = int(lengths.sum())
        done = 0
        started = last_log = time.monotonic()
        pending: list[tuple[np.ndarray, Any]] = []
        start = 0
        with torch.inference_mode():
            while start < len(order):
                width = int(lengths[order[start]])
                size = max(1, self.batch_tokens // width)
                idx = order[start:start + size]
                try:
                    vecs = self._forward(input_ids, types, idx, width, prompt_len)
                except torch.cuda.OutOfMemoryError:
                    if len(idx) == 1:
                        raise ModelError(
                            f"out of memory embedding a single {width}-token input on {self.device}; "
                            "lower max_length (CLI: --max-tokens for chunks) or use --device cpu") from None
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    self.batch_tokens = max(width, (len(idx) // 2) * width)
                    log.warning("out of memory with %d x %d tokens: batch budget lowered to %d tokens",
                                len(idx), width, self.batch_tokens)
                    continue
                pending.append((idx, vecs))
                if len(pending) >= _FLUSH_EVERY_BATCHES:
                    self._flush(pending, out)
                start += len(idx)
                n_tokens = int(lengths[idx].sum())
                done += n_tokens
                if progress is not None:
                    progress(n_tokens)
                now = time.monotonic()
                if now - last_log >= _ETA_LOG_EVERY_S and done < total:
                    rate = done / (now - started)
                    log.info("embedded %d of %d tokens (%.0f tokens/s), about %.0f s left",
                             done, total, rate, (total - done) / rate)
                    last_log = now
            self._flush(pending, out)
        return out

    @staticmethod
    def _flush(pending: list, out: np.ndarray) -> None:
        for idx, vecs in pending:
            out[idx] = vecs.cpu().numpy()
        pending.clear()

    def _forward(self, input_ids, types, idx: np.ndarray, width: int, prompt_len: int):
        import torch

        n = len(idx)
        pad_id = self.tokenizer.pad_token_id
        left = self.tokenizer.padding_side == "left"
        ids_t = torch.full((n, width), pad_id, dtype=torch.long)
        mask_t = torch.zeros((n, width), dtype=torch.long)
        types_t = torch.full((n, width), getattr(self.tokenizer, "pad_token_type_id", 0), dtype=torch.long) \
            if types is not None else None
        for row, i in enumerate(idx):
            seq = input_ids[i]
            span = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids_t[row, span] = torch.tensor(seq, dtype=torch.long)
            mask_t[row, span] = 1
            if types_t is not None:
                types_t[row, span] = torch.tensor(types[i], dtype=torch.long)
        non_blocking = self.device.type == "cuda"
        if non_blocking:
            ids_t, mask_t = ids_t.pin_memory(), mask_t.pin_memory()
        ids_d = ids_t.to(self.device, non_blocking=non_blocking)
        mask_d = mask_t.to(self.device, non_blocking=non_blocking)
        kwargs: dict[str, Any] = {"input_ids": ids_d}
        # Without padding no mask is needed, and a mask-free causal model can
        # use SDPA's flash kernel (is_causal) instead of the masked one.
        if not bool(mask_t.all()):
            kwargs["attention_mask"] = mask_d
        if types_t is not None:
            kwargs["token_type_ids"] = types_t.to(self.device, non_blocking=non_blocking)
        hidden = self.model(**kwargs).last_hidden_state
        pooled = pool(hidden, mask_d, self.pooling, prompt_len)
        pooled = pooled.float()
        return torch.nn.functional.normalize(pooled, p=2, dim=1)


# --------------------------------------------------------------------------- pooling

def exclude_prompt(mask, prompt_len: int):
    """sentence-transformers' ``Pooling._exclude_prompt_from_mask``: mask the prompt tokens out.

    Left padding is detected batch-wide, as there: with none, the first
    ``prompt_len`` columns go; otherwise each row's padding plus its prompt.
    """
    import torch

    mask = mask.clone()
    pad_lengths = mask.to(torch.int32).argmax(dim=1)
    if pad_lengths.sum() == 0:
        mask[:, :prompt_len] = 0
    else:
        positions = torch.arange(mask.size(1), device=mask.device).unsqueeze(0)
        mask[positions < (pad_lengths + prompt_len).unsqueeze(1)] = 0
    return mask


def pool(hidden, mask, modes: Sequence[str], prompt_len: int = 0):
    """sentence-transformers' ``Pooling._forward_padded``, mode by mode, concatenated."""
    import torch

    original = mask
    if prompt_len:
        mask = exclude_prompt(mask, prompt_len)
    acc = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
    out = []
    for mode in modes:
        if mode == "cls":
            # The first position the mask keeps: right after left padding / the prompt.
            first = mask.to(torch.int).argmax(dim=1)
            out.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), first])
        elif mode == "max":
            m = mask.unsqueeze(-1).expand_as(hidden).to(hidden.dtype)
            out.append(hidden.masked_fill(m == 0, float("-inf")).max(dim=1).values)
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            m = mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * m).sum(dim=1, dtype=acc)
            count = torch.clamp(m.sum(dim=1, dtype=acc), min=1e-9)
            denom = count if mode == "mean" else torch.sqrt(count)
            out.append((summed / denom).to(hidden.dtype))
        elif mode == "weightedmean":
            m = mask.unsqueeze(-1).to(acc)
            weights = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=acc).view(1, -1, 1)
            weights = weights - original.to(torch.int32).argmax(dim=1).view(-1, 1, 1)
            wm = m * weights
            out.append(((hidden * wm).sum(dim=1) / torch.clamp(wm.sum(dim=1), min=1e-9)).to(hidden.dtype))
        elif mode == "lasttoken":
            # The last position whose mask is 1, for left or right padding alike;
            # an all-zero mask gives a zero vector.
            seq_len = hidden.shape[1]
            values, indices = mask.flip(1).max(1)
            indices = torch.where(values == 0, seq_len - 1, indices)
            pos = seq_len - indices - 1
            picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), pos]
            out.append(picked * mask[torch.arange(mask.shape[0], device=mask.device), pos].unsqueeze(-1).to(hidden.dtype))
        else:  # pragma: no cover - validated on load
            raise ModelError(f"unknown pooling mode {mode!r}")
    return torch.cat(out, dim=-1) if len(out) > 1 else out[0]
