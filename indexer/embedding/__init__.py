"""Sentence embeddings that equal sentence-transformers' for the same model.

Reads the model's sentence-transformers files (modules.json, the Pooling
config, sentence_bert_config.json, config_sentence_transformers.json) and
reproduces what ``SentenceTransformer(model).encode_query/encode_document``
(sentence-transformers 6.2) computes -- tokenisation, prompts, pooling,
normalisation -- with plain transformers, so that mitsuke controls batching,
dtype and devices. One module per concern:

- :mod:`.hub` -- a local directory for a model name (hub download, cache, offline errors)
- :mod:`.st_config` -- the sentence-transformers settings (modules, pooling config, prompts, max length)
- :mod:`.transformer` -- loading the transformers model and tokenizer
- :mod:`.device` -- device and dtype choice
- :mod:`.pooling` -- token vectors to a sentence vector
- :mod:`.tokens` -- token counting for the chunker
- :class:`ModelInfo` (what an index records about its model) lives in :mod:`mitsuke.indexer.layout`
- :mod:`.embedder` -- :class:`Embedder`: batching, ``encode_documents`` / ``encode_queries``

Only numpy and the standard library are imported here: torch and
transformers load when a model does, so ``import mitsuke.indexer.embedding``
stays cheap (the GPU benchmark relies on it).

>>> emb = Embedder.from_pretrained("path/to/model")              # doctest: +SKIP
>>> emb.encode_documents(["更科蕎麦は蕎麦の一種。"]).shape       # doctest: +SKIP
(1, 1792)
"""
from __future__ import annotations

from mitsuke.indexer.embedding.embedder import Embedder
from mitsuke.indexer.embedding.hub import resolve_model_dir
from mitsuke.indexer.layout import ModelInfo
from mitsuke.indexer.embedding.pooling import POOLING_MODES, exclude_prompt, pool
from mitsuke.indexer.embedding.tokens import count_tokens_with, load_token_counter

__all__ = ["Embedder", "ModelInfo", "resolve_model_dir", "load_token_counter", "count_tokens_with", "POOLING_MODES",
           "exclude_prompt", "pool"]
