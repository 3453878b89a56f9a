"""mitsuke's read side: search an index built by ``mitsuke.indexer``.

>>> from mitsuke.search import Searcher
>>> hits = Searcher.open("my-index").search("更科蕎麦とはなんですか?", k=5)   # doctest: +SKIP
"""
from __future__ import annotations

from mitsuke.search.results import Passage
from mitsuke.search.searcher import Searcher

__all__ = ["Searcher", "Passage"]
