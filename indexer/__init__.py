"""mitsuke's write side: load, chunk, embed and store Japanese documents.

>>> from mitsuke.indexer import IndexBuilder
>>> with IndexBuilder.open("my-index", model="none") as b:   # doctest: +SKIP
...     b.add_paths(["docs/"])
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mitsuke.indexer.errors import MitsukeError

if TYPE_CHECKING:
    from mitsuke.indexer.builder import IndexBuilder, IndexSummary

__all__ = ["IndexBuilder", "IndexSummary", "MitsukeError"]


def __getattr__(name: str) -> Any:
    # Lazy: `import mitsuke.indexer.embedding` (the GPU benchmark, `mitsuke --help`)
    # must not pull in SQLAlchemy and FAISS through the builder.
    if name in ("IndexBuilder", "IndexSummary"):
        from mitsuke.indexer import builder

        return getattr(builder, name)
    raise AttributeError(f"module 'mitsuke.indexer' has no attribute {name!r}")
