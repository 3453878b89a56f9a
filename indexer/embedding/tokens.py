"""Token counts in a model's own tokens: the chunker's budget unit.

>>> count = load_token_counter("path/to/model")                   # doctest: +SKIP
>>> count(["東京", ""])                                            # doctest: +SKIP
[2, 0]
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from mitsuke.indexer.embedding.hub import resolve_model_dir
from mitsuke.indexer.embedding.st_config import apply_lower_case, read_recipe
from mitsuke.indexer.errors import ModelError

__all__ = ["count_tokens_with", "load_token_counter"]


def count_tokens_with(tokenizer: Any, texts: Sequence[str]) -> list[int]:
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
    recipe = read_recipe(root, name_or_path)
    tf_dir = root / recipe.transformer_path if recipe.transformer_path else root
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tf_dir)
    except Exception as exc:  # a directory without tokenizer files, a broken one...
        raise ModelError(f"cannot load a tokenizer from {name_or_path!r} ({tf_dir}): {type(exc).__name__}: {exc}. "
                         "Give a model directory with tokenizer files, or --model none to count characters") from None
    if recipe.do_lower_case:
        apply_lower_case(tokenizer)
    return functools.partial(count_tokens_with, tokenizer)
