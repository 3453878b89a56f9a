"""Loading the transformers model and tokenizer, as sentence-transformers' Transformer module does.

Every failure becomes a :class:`ModelError` that names the missing file or the
way out; transformers' own warnings about an unused causal-LM head are kept quiet.

>>> config, tokenizer, model = load_transformer(                   # doctest: +SKIP
...     tf_dir, "path/to/model", recipe, dtype=torch.float32)
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mitsuke.indexer.embedding.st_config import Recipe, apply_lower_case
from mitsuke.indexer.errors import ModelError

__all__ = ["check_files", "load_transformer", "plain_model_pooling"]

log = logging.getLogger("mitsuke")

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json", "spiece.model",
                    "sentencepiece.bpe.model", "tokenizer_config.json")


def check_files(tf_dir: Path, name_or_path: str) -> None:
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


def load_transformer(tf_dir: Path, name_or_path: str, recipe: Recipe, *, dtype: Any,
                     trust_remote_code: bool = False) -> tuple[Any, Any, Any]:
    """``(config, tokenizer, model)`` from ``tf_dir`` in ``dtype``, set up as ``recipe`` says (on the CPU)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer
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
        model = AutoModel.from_pretrained(tf_dir, config=config, dtype=dtype,
                                          trust_remote_code=trust_remote_code)
    except ModelError:
        raise
    except Exception as exc:
        text = str(exc)
        # torch loads .bin weights with weights_only=True and refuses a pickled payload (UnpicklingError).
        unsafe = type(exc).__name__ in ("UnpicklingError", "EOFError") or "weights_only" in text
        if not unsafe and not isinstance(exc, (ValueError, OSError, KeyError, ImportError, RuntimeError)):
            raise
        if unsafe:
            raise ModelError(
                f"model {name_or_path!r}: its pytorch_model.bin is a pickle that cannot be loaded safely "
                f"({type(exc).__name__}); mitsuke loads only plain tensors: use a model with model.safetensors, "
                "or convert the weights") from None
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
        apply_lower_case(tokenizer)
    return config, tokenizer, model


def plain_model_pooling(config: Any, tokenizer: Any, name_or_path: str) -> tuple[str, ...]:
    """sentence-transformers' fallback pooling for a plain transformers model (no modules.json).

    Last-token pooling for a causal LM, mean pooling otherwise; logged, since
    the model's authors did not choose it.
    """
    archs = getattr(config, "architectures", None) or []
    causal = bool(archs) and archs[0].endswith("ForCausalLM") and getattr(config, "is_causal", True)
    pooling = ("lasttoken",) if causal else ("mean",)
    log.warning("%s has no modules.json: using %s pooling, as sentence-transformers would",
                name_or_path, pooling[0])
    if getattr(tokenizer, "chat_template", None):
        log.warning("%s has a chat template, which sentence-transformers would apply to plain-model "
                    "inputs; mitsuke embeds the raw text", name_or_path)
    return pooling
