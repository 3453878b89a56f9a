"""What runs on the Ray workers: preparing documents (tasks) and embedding them (an actor pool).

Rows flow as dictionaries of columns (Ray Data's numpy batch format):

- in: ``seq`` (the input's position), ``item`` (a pickled pair: a ``FileInput``
  with its path as given, or a ``Document`` from standard input, or a
  ``LoadFailure`` found while listing, and ``None``);
- after :func:`prepare_batch`: one row per document (or per failure, or one
  empty row for an input that held no document) with ``seq``, ``last`` (the
  last row of its input: progress), ``payload`` (a pickled
  ``PreparedDocument`` or ``LoadFailure``), ``texts`` (the pickled embedding
  inputs of its chunks) and ``tokens``;
- after :class:`EmbedWorker`: the same rows with vectors inside the payload,
  ``texts`` emptied (they never travel back) and ``tokens`` counted.

Both stages call the functions the single-process builder calls
(:func:`mitsuke.indexer.prepared.prepare_document`, ``Embedder``), so the
index is the same.
"""
from __future__ import annotations

import logging
import pickle
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from mitsuke.indexer.chunking import Chunker
from mitsuke.indexer.config import ChunkConfig
from mitsuke.indexer.documents import Document, LoadFailure
from mitsuke.indexer.loaders import FileInput, FormatOptions, load_input
from mitsuke.indexer.prepared import PreparedDocument, prepare_document

__all__ = ["prepare_batch", "EmbedWorker", "OUTPUT_COLUMNS"]

log = logging.getLogger("mitsuke")

OUTPUT_COLUMNS = ("seq", "last", "payload", "texts", "tokens")

# Per worker process: the chunker (its tokenizer loads once) and the index's known hashes.
_CHUNKERS: dict[tuple, Chunker] = {}
_KNOWN: dict[str, dict[str, str]] = {}


def _chunker(model_source: str | None, revision: str | None, chunking: dict[str, Any]) -> Chunker:
    key = (model_source, revision, tuple(sorted(chunking.items())))
    if key not in _CHUNKERS:
        count = None
        if model_source is not None:
            from mitsuke.indexer.embedding import load_token_counter

            count = load_token_counter(model_source)  # counts exactly as Embedder.count_tokens
        _CHUNKERS[key] = Chunker(ChunkConfig(**chunking), count)
    return _CHUNKERS[key]


def _known_hashes(ref_box: list) -> dict[str, str]:
    import ray

    ref = ref_box[0]
    key = ref.hex()
    if key not in _KNOWN:
        _KNOWN.clear()  # one index per run: drop another run's table
        _KNOWN[key] = ray.get(ref)
    return _KNOWN[key]


def prepare_batch(batch: dict[str, np.ndarray], *, known: list, model_source: str | None, revision: str | None,
                  chunking: dict[str, Any], encoding: str | None, embed: bool,
                  formats: FormatOptions | None = None) -> dict[str, list]:
    """Load, decode, hash, chunk and analyse a batch of inputs (a Ray Data task).

    A document whose key and content hash the index already holds is not
    chunked: only its key and hash go on (the builder counts it unchanged).
    ``known`` is ``[ObjectRef]`` of the index's ``{key: content_hash}``.
    """
    hashes = _known_hashes(known)
    chunker = _chunker(model_source, revision, chunking)
    out: dict[str, list] = {c: [] for c in OUTPUT_COLUMNS}

    def emit(seq: int, payload: Any, texts: list[str] | None, last: bool = False) -> None:
        out["seq"].append(seq)
        out["last"].append(last)
        out["payload"].append(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL) if payload is not None else b"")
        out["texts"].append(pickle.dumps(texts, protocol=pickle.HIGHEST_PROTOCOL) if texts else b"")
        out["tokens"].append(0)

    for seq, raw in zip(batch["seq"], batch["item"]):
        seq = int(seq)
        item, shown = pickle.loads(raw)
        docs = ([item] if not isinstance(item, FileInput)
                else _as_given(load_input(item, encoding, formats), item.path, shown))
        n_before = len(out["seq"])
        for doc in docs:
            if isinstance(doc, LoadFailure):
                emit(seq, doc, None)
            elif hashes.get(doc.key) == doc.content_hash:
                emit(seq, PreparedDocument(key=doc.key, content_hash=doc.content_hash, source=doc.source), None)
            else:
                emit(seq, *_prepare(doc, chunker, chunking))
        if len(out["seq"]) == n_before:
            emit(seq, None, None)  # an input without documents (an empty JSONL file) still counts as done
        out["last"][-1] = True
        if not embed:
            out["texts"][n_before:] = [b""] * (len(out["seq"]) - n_before)
    return out


def _as_given(docs: Iterable[Document | LoadFailure], real: str, shown: str | None
              ) -> Iterator[Document | LoadFailure]:
    """Documents and failures naming the path as the user gave it (``source``), not the absolute one read."""
    for doc in docs:
        if shown is None or shown == real:
            yield doc
        elif isinstance(doc, LoadFailure):
            yield LoadFailure(shown + doc.path[len(real):] if doc.path.startswith(real) else doc.path, doc.reason)
        else:
            yield replace(doc, source=shown) if doc.source == real else doc


def _prepare(doc: Document, chunker: Chunker, chunking: dict[str, Any]) -> tuple[Any, list[str] | None]:
    try:
        return prepare_document(doc, chunker, title_context=bool(chunking.get("title_context", True)))
    except Exception as exc:  # a chunker bug on one document must not end the run (as in the builder)
        log.exception("chunking failed for %s", doc.key)
        return LoadFailure(doc.source or doc.key, f"chunking failed: {type(exc).__name__}: {exc}"), None


class EmbedWorker:
    """Embeds the prepared documents of a batch (one Ray actor: one GPU, or some CPUs).

    Uses mitsuke's :class:`Embedder` (token-budget batching, dtype rules,
    sentence-transformers equivalence); vectors travel back as float16, the
    dtype ``vectors.f16`` stores.
    """

    def __init__(self, source: str, *, revision: str | None, device: str, dtype: str, max_length: int | None,
                 batch_tokens: int, trust_remote_code: bool, threads: int | None = None) -> None:
        import torch

        from mitsuke.indexer.embedding import Embedder

        if threads:
            torch.set_num_threads(threads)
        self.embedder = Embedder.from_pretrained(source, device=device, dtype=dtype, max_length=max_length,
                                                 trust_remote_code=trust_remote_code, batch_tokens=batch_tokens,
                                                 revision=revision)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from mitsuke.indexer.builder import record_embedding

        rows = [i for i, t in enumerate(batch["texts"]) if len(t)]
        payload = list(batch["payload"])
        tokens = np.zeros(len(payload), dtype=np.int64)
        if rows:
            docs = [pickle.loads(payload[i]) for i in rows]
            texts = [pickle.loads(batch["texts"][i]) for i in rows]
            record_embedding((d.key, d.content_hash) for d in docs)
            counted: list[int] = []
            vecs = self.embedder.encode_documents([t for ts in texts for t in ts], progress=counted.append)
            vecs = vecs.astype(np.float16)
            start = 0
            for i, doc, ts in zip(rows, docs, texts):
                doc.vectors = vecs[start:start + len(ts)]
                start += len(ts)
                payload[i] = pickle.dumps(doc, protocol=pickle.HIGHEST_PROTOCOL)
            tokens[rows[-1]] = sum(counted)
        for i, doc_bytes in enumerate(payload):
            # Prepared documents without chunks (nothing to embed) still need a (0, dim) block.
            if not len(batch["texts"][i]) and doc_bytes:
                doc = pickle.loads(doc_bytes)
                if isinstance(doc, PreparedDocument) and doc.chunks is not None and doc.vectors is None:
                    doc.vectors = np.zeros((0, self.embedder.dim), dtype=np.float16)
                    payload[i] = pickle.dumps(doc, protocol=pickle.HIGHEST_PROTOCOL)
        return {"seq": batch["seq"], "last": batch["last"], "payload": payload,
                "texts": [b""] * len(payload), "tokens": tokens}
