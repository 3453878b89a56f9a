"""mitsuke write side: load, chunk, embed and store Japanese documents.

>>> from indexer import IndexBuilder
>>> with IndexBuilder.open("my-index", model="none") as b:   # doctest: +SKIP
...     b.add_paths(["docs/"])
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from indexer.errors import MitsukeError

if TYPE_CHECKING:
    from indexer.builder import IndexBuilder, IndexSummary

__all__ = ["IndexBuilder", "IndexSummary", "MitsukeError"]
__version__ = "0.1.0"

logging.getLogger("mitsuke").addHandler(logging.NullHandler())


def __getattr__(name: str):
    # Lazy: `import indexer.embedding` (the GPU benchmark, `mitsuke --help`) must
    # not pull in SQLAlchemy and FAISS through the builder.
    if name in ("IndexBuilder", "IndexSummary"):
        from indexer import builder

        return getattr(builder, name)
    raise AttributeError(f"module 'indexer' has no attribute {name!r}")
