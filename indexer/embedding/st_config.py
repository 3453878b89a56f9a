"""A model's sentence-transformers settings: modules.json, the Pooling config, prompts, max length.

:func:`read_recipe` turns the files ``SentenceTransformer(model)`` reads
(sentence-transformers 6.2) into a :class:`Recipe`: which directory holds the
transformer, which pooling, prompts and normalisation apply, and how the
tokenizer is set up. Only the standard library is imported at module level.

>>> read_recipe(Path("path/to/model"), "path/to/model").pooling        # doctest: +SKIP
('lasttoken',)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mitsuke.indexer.embedding.pooling import check_pooling_modes
from mitsuke.indexer.errors import ModelError

__all__ = ["Recipe", "read_recipe", "st_max_length", "apply_lower_case"]

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


@dataclass(frozen=True)
class Recipe:
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


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}; the model directory is damaged, download it again") from None


def _pooling_modes(cfg: dict[str, Any]) -> tuple[str, ...]:
    mode = cfg.get("pooling_mode")
    if mode is None:
        modes = tuple(m for k, m in _LEGACY_POOLING_KEYS.items() if cfg.get(k))
        modes = modes or ("mean",)
    else:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    return check_pooling_modes(modes)


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


def read_recipe(root: Path, name_or_path: str) -> Recipe:
    """The sentence-transformers settings of the model in ``root`` (``name_or_path`` names it in errors).

    A directory without modules.json gives ``Recipe(has_modules=False)``: a
    plain transformers model. A module mitsuke does not reproduce, a task other
    than feature extraction or a non-text modality raises :class:`ModelError`.
    """
    modules = _read_json(root / "modules.json")
    if not modules:
        return Recipe(has_modules=False)
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
    return Recipe(
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


def st_max_length(recipe: Recipe, tokenizer: Any, config: Any) -> int:
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


def apply_lower_case(tokenizer: Any) -> None:
    """Lower-case inside the tokenizer, exactly as sentence-transformers' ``do_lower_case`` does."""
    if getattr(tokenizer, "is_fast", False):
        from tokenizers.normalizers import Lowercase
        from tokenizers.normalizers import Sequence as NormalizerSequence

        normalizer = tokenizer.backend_tokenizer.normalizer
        has = isinstance(normalizer, Lowercase) or (
            isinstance(normalizer, NormalizerSequence)
            and any(isinstance(n, Lowercase) for n in normalizer))  # type: ignore[attr-defined]  # iterable at run time
        if not has:
            parts = [Lowercase()]
            if isinstance(normalizer, NormalizerSequence):
                parts += list(normalizer)  # type: ignore[call-overload]  # iterable at run time
            elif normalizer is not None:
                parts.append(normalizer)
            tokenizer.backend_tokenizer.normalizer = NormalizerSequence(parts)
    else:
        try:
            tokenizer.do_lower_case = True
        except AttributeError:
            tokenizer.basic_tokenizer.do_lower_case = True
