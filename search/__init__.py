"""mitsuke read side: search an index built by ``indexer``.

>>> from search import Searcher
>>> hits = Searcher.open("my-index").search("更科蕎麦とはなんですか?", k=5)   # doctest: +SKIP
"""
from __future__ import annotations

from search.results import Passage
from search.searcher import Searcher

__all__ = ["Searcher", "Passage"]
