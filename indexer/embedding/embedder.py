"""The :class:`Embedder`: sentence vectors equal to sentence-transformers' for the same model.

``from_pretrained`` reads the model's sentence-transformers files
(:mod:`.st_config`), loads it with plain transformers (:mod:`.transformer`) on
the chosen device and dtype (:mod:`.device`), and ``encode_documents`` /
``encode_queries`` reproduce ``SentenceTransformer.encode_document`` /
``encode_query`` (sentence-transformers 6.2) -- prompts, pooling
(:mod:`.pooling`), normalisation -- while mitsuke controls batching.

torch and transformers load when a model does, not on import.

>>> emb = Embedder.from_pretrained("path/to/model")              # doctest: +SKIP
>>> emb.encode_documents(["更科蕎麦は蕎麦の一種。"]).shape       # doctest: +SKIP
(1, 1792)
"""
from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mitsuke.indexer.embedding.device import pick_device, pick_dtype, warn_if_slow_on_cpu
from mitsuke.indexer.embedding.hub import resolve_model_dir
from mitsuke.indexer.layout import ModelInfo
from mitsuke.indexer.embedding.pooling import check_pooling_modes, pool
from mitsuke.indexer.embedding.quiet import quiet_model_loading
from mitsuke.indexer.embedding.st_config import read_recipe, st_max_length
from mitsuke.indexer.embedding.tokens import count_tokens_with
from mitsuke.indexer.embedding.transformer import check_files, load_transformer, plain_model_pooling
from mitsuke.indexer.errors import ModelError

__all__ = ["Embedder"]

log = logging.getLogger("mitsuke")

_ETA_LOG_EVERY_S = 30.0
_FLUSH_EVERY_BATCHES = 16  # device -> host copies batched, so the GPU never waits on the host


class Embedder:
    """Embeds texts into L2-normalised float32 vectors, as sentence-transformers would.

    Build one with :meth:`from_pretrained` (a model directory or hub id) or
    :meth:`from_model` (a model already in memory).

    >>> emb = Embedder.from_pretrained("path/to/model", device="cpu")      # doctest: +SKIP
    >>> emb.encode_queries(["更科蕎麦とはなんですか?"]).shape                # doctest: +SKIP
    (1, 1792)
    """

    def __init__(self, model: Any, tokenizer: Any, info: ModelInfo, *, device: Any, dtype: Any,
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
    ) -> Embedder:
        """Load a sentence-transformers (or plain transformers) model directory or hub id.

        ``dtype="auto"`` means float32 on CPU and bfloat16 (float16 without
        bf16 support) on CUDA. ``max_length`` can only lower the model's own
        limit; ``revision`` pins a hub commit (what an index recorded). Any
        failure to load raises :class:`ModelError` saying what to do.
        """
        if max_length is not None and max_length < 1:
            raise ModelError(f"max_length must be a positive number of tokens, got {max_length}")
        with quiet_model_loading():  # no "Loading weights" bar on every search (issue 12)
            return cls._from_pretrained(name_or_path, device=device, dtype=dtype, max_length=max_length,
                                        trust_remote_code=trust_remote_code, batch_tokens=batch_tokens,
                                        revision=revision)

    @classmethod
    def _from_pretrained(cls, name_or_path: str, *, device: str, dtype: str, max_length: int | None,
                         trust_remote_code: bool, batch_tokens: int, revision: str | None) -> Embedder:
        root, revision = resolve_model_dir(name_or_path, revision=revision)
        local = Path(name_or_path).expanduser().is_dir()
        recipe = read_recipe(root, name_or_path)
        tf_dir = root / recipe.transformer_path
        check_files(tf_dir, name_or_path)
        dev = pick_device(device)
        torch_dtype = pick_dtype(dtype, dev)
        warn_if_slow_on_cpu(dev, torch_dtype)
        config, tokenizer, model = load_transformer(tf_dir, name_or_path, recipe, dtype=torch_dtype,
                                                    trust_remote_code=trust_remote_code)
        pooling = recipe.pooling if recipe.has_modules else plain_model_pooling(config, tokenizer, name_or_path)
        try:
            model.to(dev)
        except RuntimeError as exc:  # e.g. CUDA out of memory while moving the weights
            raise ModelError(f"cannot move model {name_or_path!r} to {dev}: {str(exc).splitlines()[0]}; "
                             "use --device cpu or a smaller --dtype") from None
        return cls.from_model(
            model, tokenizer, name=name_or_path, revision=revision, pooling=pooling,
            include_prompt=recipe.include_prompt, normalize=True,
            max_length=min(max_length, st_max_length(recipe, tokenizer, config)) if max_length
            else st_max_length(recipe, tokenizer, config),
            query_prompt=recipe.query_prompt, document_prompt=recipe.document_prompt,
            batch_tokens=batch_tokens, path=str(root.resolve()) if local else None)

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
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
    ) -> Embedder:
        """Wrap a transformers model and tokenizer already in memory (benchmarks, tests).

        The model stays on its device and in its dtype.
        """
        modes = check_pooling_modes((pooling,) if isinstance(pooling, str) else pooling)
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
