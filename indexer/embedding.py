"""Sentence embeddings that equal sentence-transformers' for the same model.

Reads the model's sentence-transformers files (modules.json, the Pooling
config, sentence_bert_config.json, config_sentence_transformers.json) and
reproduces its tokenisation and pooling with plain transformers, so we control
batching, dtype and devices.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import ModelError

__all__ = ["Embedder", "ModelInfo", "resolve_model_dir"]

log = logging.getLogger("mitsuke")

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
POOLING_MODES = ("lasttoken", "mean", "cls", "max")


@dataclass(frozen=True)
class ModelInfo:
    """What the manifest records about the model, and what a Searcher checks."""

    name: str
    revision: str | None
    dim: int
    pooling: str
    normalize: bool
    max_length: int
    prompts: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "revision": self.revision,
            "dim": self.dim,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_length": self.max_length,
            "prompts": dict(self.prompts),
        }


def _read_json(path: Path) -> dict[str, Any]:
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    return {}


def resolve_model_dir(name_or_path: str) -> tuple[Path, str | None]:
    """A local directory for ``name_or_path`` (downloading a hub id), and its revision."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path, None
    if path.exists():
        raise ModelError(f"model path {name_or_path!r} is a file; give the model's directory")
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local:
        raise ModelError(
            f"model directory {name_or_path!r} does not exist; give an existing local "
            "directory, a hub id such as sbintuitions/sarashina-embedding-v1-1b, or --model none"
        )
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(name_or_path, allow_patterns=_ST_FILES, etag_timeout=10)
    except Exception as exc:  # network, auth, unknown repo: all end the same way for the user
        raise ModelError(
            f"cannot load model {name_or_path!r}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
            "Without network access, download the model elsewhere and pass its local directory "
            "with --model PATH, or build a lexical-only index with --model none."
        ) from None
    revision = Path(local).name if len(Path(local).name) == 40 else None
    return Path(local), revision


def _pick_device(device: str):
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def _pick_dtype(dtype: str, device):
    import torch

    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in names:
        raise ModelError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return names[dtype]


class Embedder:
    """Embeds texts into L2-normalised float32 vectors.

    >>> emb = Embedder.from_pretrained("path/to/model")          # doctest: +SKIP
    >>> emb.encode_documents(["更科蕎麦は蕎麦の一種。"]).shape   # doctest: +SKIP
    (1, 1792)
    """

    def __init__(self, model, tokenizer, info: ModelInfo, *, device, dtype,
                 batch_tokens: int = 16384, do_lower_case: bool = False,
                 include_prompt: bool = True) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.device = device
        self.dtype = dtype
        self.batch_tokens = batch_tokens
        self.do_lower_case = do_lower_case
        self.include_prompt = include_prompt

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
    ) -> "Embedder":
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        root, revision = resolve_model_dir(name_or_path)
        modules = _read_json(root / "modules.json")
        module_list = modules if isinstance(modules, list) else []
        tf_path, pool_path, normalize = "", None, False
        for m in module_list:
            kind = str(m.get("type", ""))
            if kind.endswith("Transformer"):
                tf_path = m.get("path", "")
            elif kind.endswith("Pooling"):
                pool_path = m.get("path", "")
            elif kind.endswith("Normalize"):
                normalize = True
        tf_dir = root / tf_path if tf_path else root
        st_config = _read_json(tf_dir / "sentence_bert_config.json") or _read_json(root / "sentence_bert_config.json")
        pool_cfg = _read_json(root / pool_path / "config.json") if pool_path is not None else {}
        pooling = "mean"
        for mode in POOLING_MODES:
            if pool_cfg.get(f"pooling_mode_{mode}") or pool_cfg.get(f"pooling_mode_{mode}_tokens"):
                pooling = mode
                break
        if pool_cfg.get("pooling_mode") in POOLING_MODES:
            pooling = pool_cfg["pooling_mode"]
        include_prompt = bool(pool_cfg.get("include_prompt", True))
        st_meta = _read_json(root / "config_sentence_transformers.json")
        prompts = {k: v for k, v in (st_meta.get("prompts") or {}).items() if isinstance(v, str)}

        try:
            config = AutoConfig.from_pretrained(tf_dir, trust_remote_code=trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(tf_dir, trust_remote_code=trust_remote_code)
        except ValueError as exc:
            if "trust_remote_code" in str(exc):
                raise ModelError(
                    f"model {name_or_path!r} needs its own code to load; if you trust it, "
                    "pass trust_remote_code=True (CLI: --trust-remote-code)"
                ) from None
            raise ModelError(f"cannot load model {name_or_path!r}: {exc}") from None
        except OSError as exc:
            raise ModelError(
                f"cannot load model {name_or_path!r}: {exc}. The directory must hold config.json, "
                "the weights and the tokenizer files (a sentence-transformers or transformers model)."
            ) from None
        if tokenizer.pad_token is None:
            # Padding positions are masked out; any id works, but it must exist.
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token

        dev = _pick_device(device)
        torch_dtype = _pick_dtype(dtype, dev)
        kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
        if dev.type == "cuda":
            kwargs["attn_implementation"] = "sdpa"
        from transformers.utils import logging as hf_logging

        # A causal-LM checkpoint loaded as its base model reports its unused
        # lm_head as "UNEXPECTED": expected here, and noise for our users.
        previous = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = AutoModel.from_pretrained(tf_dir, **kwargs)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load weights of {name_or_path!r}: {exc}") from None
        finally:
            hf_logging.set_verbosity(previous)
        model.to(dev).eval()

        limits = [v for v in (
            st_config.get("max_seq_length"),
            getattr(config, "max_position_embeddings", None),
            tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else None,
        ) if v]
        model_max = int(st_config.get("max_seq_length") or min(limits)) if limits else 512
        max_len = min(max_length, model_max) if max_length else model_max
        dim = int(getattr(config, "hidden_size", 0) or pool_cfg.get("word_embedding_dimension", 0))
        info = ModelInfo(
            name=name_or_path,
            revision=revision,
            dim=dim,
            pooling=pooling,
            normalize=True,  # mitsuke always searches by cosine; Normalize is idempotent
            max_length=max_len,
            prompts=prompts,
        )
        log.info("embedding model %s on %s (%s), pooling %s, max_length %d",
                 name_or_path, dev, str(torch_dtype).replace("torch.", ""), pooling, max_len)
        return cls(model, tokenizer, info, device=dev, dtype=torch_dtype, batch_tokens=batch_tokens,
                   do_lower_case=bool(st_config.get("do_lower_case")), include_prompt=include_prompt)

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def max_length(self) -> int:
        return self.info.max_length

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    # ------------------------------------------------------------------ tokens
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text without special tokens (the chunker's budget unit)."""
        if not texts:
            return []
        enc = self.tokenizer(list(texts), add_special_tokens=False, truncation=False)
        return [len(ids) for ids in enc["input_ids"]]

    # ------------------------------------------------------------------ encoding
    def encode_documents(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        prompt = next((self.info.prompts[k] for k in ("document", "passage", "corpus") if k in self.info.prompts), "")
        return self._encode(texts, prompt, progress)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.info.prompts.get("query", ""), None)

    def _prompt_length(self, prompt: str) -> int:
        if not prompt:
            return 0
        ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if ids and ids[-1] in set(self.tokenizer.all_special_ids):
            return len(ids) - 1
        return len(ids)

    def _encode(self, texts: Sequence[str], prompt: str, progress: Callable[[int], None] | None) -> np.ndarray:
        import torch

        texts = [prompt + t for t in texts]
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        enc = self.tokenizer(texts, truncation="longest_first", max_length=self.max_length)
        lengths = [len(ids) for ids in enc["input_ids"]]
        order = np.argsort([-n for n in lengths], kind="stable")
        prompt_len = 0 if self.include_prompt else self._prompt_length(prompt)
        start = 0
        budget = self.batch_tokens
        with torch.inference_mode():
            while start < len(order):
                # Longest first: the batch's padded size is its first item's length.
                width = max(lengths[order[start]], 1)
                size = max(1, budget // width)
                idx = order[start:start + size]
                features = {k: [enc[k][i] for i in idx] for k in enc.keys()}
                batch = self.tokenizer.pad(features, padding=True, return_tensors="pt")
                try:
                    vecs = self._forward(batch, prompt_len)
                except torch.cuda.OutOfMemoryError:
                    if size == 1:
                        raise
                    torch.cuda.empty_cache()
                    budget = max(width, budget // 2)
                    log.warning("CUDA out of memory: batch budget lowered to %d tokens", budget)
                    continue
                out[idx] = vecs
                start += len(idx)
                if progress is not None:
                    progress(sum(lengths[i] for i in idx))
        return out

    def _forward(self, batch, prompt_len: int) -> np.ndarray:
        import torch

        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"]
        if prompt_len:
            mask = mask.clone()
            mask[:, :prompt_len] = 0
        pooled = _pool(hidden, mask, self.info.pooling)
        pooled = pooled.float()
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.cpu().numpy()


def _pool(hidden, mask, mode: str):
    import torch

    if mode == "lasttoken":
        # The last position whose mask is 1, for left or right padding alike
        # (sentence-transformers' rule); an all-zero mask gives a zero vector.
        t = mask.shape[1]
        values, idx = mask.flip(1).max(1)
        pos = t - 1 - idx
        out = hidden[torch.arange(hidden.shape[0], device=hidden.device), pos]
        return out * values.unsqueeze(-1).to(out.dtype)
    if mode == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(m == 0, -1e9).max(1).values
    summed = (hidden * m).sum(1)
    return summed / m.sum(1).clamp(min=1e-9)
