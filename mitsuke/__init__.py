"""mitsuke (見付け): Japanese-first semantic search.

>>> from mitsuke import IndexBuilder, Searcher
>>> with IndexBuilder.open("my-index", model="none") as b:          # doctest: +SKIP
...     b.add_paths(["docs/"])
>>> hits = Searcher.open("my-index").search("豊岡市の冬は?", k=5)   # doctest: +SKIP

The installed packages are ``mitsuke.indexer`` (write side: load, chunk,
embed, store) and ``mitsuke.search`` (read side). Importing ``mitsuke`` is
cheap: the builder, the searcher and their dependencies (FAISS, SQLAlchemy,
torch) load on first use of the names below. ``Embedder`` is the protocol a
custom model implements to be used with ``embedder=`` (see ``mitsuke.indexer.protocol``).
"""
from __future__ import annotations

import logging
from importlib import import_module
from typing import TYPE_CHECKING, Any

from mitsuke.indexer.errors import (
    IndexFormatError,
    LoadError,
    LockedError,
    MitsukeError,
    ModelError,
    ModelMismatchError,
    QueryError,
)

if TYPE_CHECKING:
    from mitsuke.indexer.builder import IndexBuilder, IndexSummary
    from mitsuke.indexer.loaders import Document
    from mitsuke.indexer.protocol import Embedder, EmbedderInfo
    from mitsuke.search.results import Passage
    from mitsuke.search.searcher import Searcher

__version__ = "0.1.0"

__all__ = [
    "IndexBuilder", "IndexSummary", "Searcher", "Passage", "Document", "Embedder", "EmbedderInfo",
    "MitsukeError", "LoadError", "ModelError", "IndexFormatError", "ModelMismatchError", "LockedError",
    "QueryError", "__version__",
]

logging.getLogger("mitsuke").addHandler(logging.NullHandler())

_LAZY = {
    "IndexBuilder": "mitsuke.indexer.builder",
    "IndexSummary": "mitsuke.indexer.builder",
    "Document": "mitsuke.indexer.loaders",
    "Searcher": "mitsuke.search.searcher",
    "Passage": "mitsuke.search.results",
    "Embedder": "mitsuke.indexer.protocol",
    "EmbedderInfo": "mitsuke.indexer.protocol",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mitsuke' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
