"""What mitsuke requires of an embedder: the ``Embedder`` protocol (``from mitsuke import Embedder``).

``IndexBuilder.open(..., embedder=obj)`` and ``Searcher.open(..., embedder=obj)``
accept any object with these members (``mitsuke.indexer.embedding.Embedder``,
the sentence-transformers loader mitsuke uses by default, is one):

- ``info``: an object with ``name`` (str: recorded in the manifest; an index
  refuses an embedder of another name) and ``to_dict()`` (the manifest's
  ``model`` record: ``name`` and ``dim`` are filled in from the embedder,
  ``revision``, ``pooling``, ``normalize``, ``max_length``, ``prompts`` are
  kept when given, other keys are dropped).
- ``dim``: the length of the vectors.
- ``count_tokens(texts) -> list[int]``: the chunker's budget unit (any count
  that grows with the text: tokens of the model, or characters).
- ``encode_documents(texts, progress=None)`` and
  ``encode_queries(texts, progress=None)``: float32 arrays
  ``(len(texts), dim)`` of **unit-length** vectors (mitsuke scores by inner
  product = cosine); ``progress``, when given, may be called with the number
  of tokens of each finished batch.

A custom model::

    import numpy as np
    from mitsuke import Embedder, IndexBuilder, Searcher

    class MyInfo:
        name = "my-encoder-v1"
        def to_dict(self):
            return {"name": self.name, "dim": 256}

    class MyEmbedder:
        info = MyInfo()
        dim = 256
        def count_tokens(self, texts):
            return [len(t) for t in texts]
        def encode_documents(self, texts, progress=None):
            v = my_model(texts)                       # (n, 256)
            return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
        encode_queries = encode_documents

    assert isinstance(MyEmbedder(), Embedder)
    with IndexBuilder.open("idx", embedder=MyEmbedder()) as b:
        b.add_paths(["docs/"])
    Searcher.open("idx", embedder=MyEmbedder()).search("豊岡市の冬は?")

An index built with a custom embedder is queried by passing the same embedder
to ``Searcher.open`` (the command line can only load sentence-transformers
models by name or directory).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mitsuke.indexer.errors import ModelError
from mitsuke.indexer.layout import ModelInfo

__all__ = ["Embedder", "EmbedderInfo", "EmbedderProtocol", "EmbedderInfoProtocol", "check_embedder", "model_info"]


@runtime_checkable
class EmbedderInfo(Protocol):
    """The model description an embedder carries (``Embedder.info`` is a ``ModelInfo``)."""

    @property
    def name(self) -> str:
        """The model's name (a hub id, a directory, or your own label)."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``model`` record (JSON-serialisable)."""
        ...


@runtime_checkable
class Embedder(Protocol):
    """Everything ``IndexBuilder`` and ``Searcher`` use of an embedder (see the module docstring)."""

    @property
    def info(self) -> EmbedderInfo:
        """Name and manifest record of the model."""
        ...

    @property
    def dim(self) -> int:
        """Length of the vectors."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Budget units of each text (the chunker fills passages up to ``max_tokens`` of them)."""
        ...

    def encode_documents(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Passage vectors, float32 ``(len(texts), dim)``, unit length."""
        ...

    def encode_queries(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Query vectors, float32 ``(len(texts), dim)``, unit length."""
        ...


# The names the protocol had on the fusion branch; same classes.
EmbedderProtocol = Embedder
EmbedderInfoProtocol = EmbedderInfo

_MEMBERS = ("info", "dim", "count_tokens", "encode_documents", "encode_queries")


def check_embedder(embedder: Any) -> None:
    """Raise a ModelError naming what ``embedder`` lacks of the protocol; return quietly if it has it all."""
    missing = [m for m in _MEMBERS if not hasattr(embedder, m)]
    if not missing:
        info = embedder.info
        missing = [f"info.{m}" for m in ("name", "to_dict") if not hasattr(info, m)]
    if missing:
        raise ModelError(f"embedder {type(embedder).__name__} lacks {', '.join(missing)}: an embedder needs "
                         f"{', '.join(_MEMBERS)} (see mitsuke.Embedder)")
    try:
        dim = int(embedder.dim)
    except (TypeError, ValueError):
        dim = 0
    if dim < 1:
        raise ModelError(f"embedder {embedder.info.name!r} has dim {embedder.dim!r}: it must be a positive integer")


def model_info(embedder: Any) -> ModelInfo:
    """The manifest's ``model`` record of ``embedder``: its ``info`` as a ``ModelInfo``, ``name`` and ``dim`` assured.

    A custom embedder's ``info.to_dict()`` may give only its name; the other
    fields get neutral values (no revision, ``pooling="custom"``, normalised,
    ``max_length`` 0 = unknown).
    """
    info = embedder.info
    if isinstance(info, ModelInfo) and info.dim == int(embedder.dim):
        return info
    try:
        record = dict(info.to_dict() or {})
    except (TypeError, ValueError) as exc:
        raise ModelError(f"embedder {info.name!r}: info.to_dict() must return a dict ({exc})") from None
    prompts = record.get("prompts") or {}
    try:
        return ModelInfo(
            name=str(info.name), revision=None if record.get("revision") is None else str(record["revision"]),
            dim=int(embedder.dim), pooling=str(record.get("pooling") or "custom"),
            normalize=bool(record.get("normalize", True)), max_length=int(record.get("max_length") or 0),
            prompts={str(k): str(v) for k, v in dict(prompts).items()},
            path=None if record.get("path") is None else str(record["path"]))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"embedder {info.name!r}: info.to_dict() has a bad value ({exc})") from None
