"""mitsuke write side: load, chunk, embed and store Japanese documents.

>>> from indexer import IndexBuilder
>>> with IndexBuilder.open("my-index", model="none") as b:   # doctest: +SKIP
...     b.add_paths(["docs/"])
"""
from __future__ import annotations

import logging

from indexer.builder import IndexBuilder, IndexSummary
from indexer.errors import MitsukeError

__all__ = ["IndexBuilder", "IndexSummary", "MitsukeError"]
__version__ = "0.1.0"

logging.getLogger("mitsuke").addHandler(logging.NullHandler())
