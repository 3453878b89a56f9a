"""LangChain retriever over a mitsuke index (``pip install "mitsuke[langchain]"``).

>>> from mitsuke.search import Searcher
>>> from mitsuke.search.langchain import MitsukeRetriever
>>> retriever = MitsukeRetriever(searcher=Searcher.open("my-index"), k=5)      # doctest: +SKIP
>>> docs = retriever.invoke("更科蕎麦とはなんですか?")                          # doctest: +SKIP
>>> docs[0].metadata["doc_key"], docs[0].metadata["char_start"], docs[0].metadata["score"]  # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mitsuke.search.context import ContextPassage, retrieve_passages
from mitsuke.search.extras import require
from mitsuke.search.searcher import Searcher

if TYPE_CHECKING:
    from mitsuke.indexer.protocol import Embedder

_retrievers = require("langchain_core.retrievers", "langchain", "mitsuke.search.langchain")
_documents = require("langchain_core.documents", "langchain", "mitsuke.search.langchain")
_callbacks = require("langchain_core.callbacks", "langchain", "mitsuke.search.langchain")
_pydantic = require("pydantic", "langchain", "mitsuke.search.langchain")

BaseRetriever = _retrievers.BaseRetriever
Document = _documents.Document
CallbackManagerForRetrieverRun = _callbacks.CallbackManagerForRetrieverRun
Field = _pydantic.Field

__all__ = ["MitsukeRetriever", "to_document"]


def to_document(passage: ContextPassage) -> Document:
    """A LangChain ``Document``: the passage text, with score and citation fields in ``metadata``."""
    return Document(page_content=passage.text, metadata=passage.to_metadata(), id=str(passage.hit.chunk_id))


class MitsukeRetriever(BaseRetriever):
    """Retrieve passages from a mitsuke index as LangChain ``Document``s.

    With the defaults it returns exactly ``searcher.search(query, k, mode=mode,
    where=where)``, in that order. ``neighbors`` / ``max_chars`` switch to
    ``Searcher.retrieve_context`` (neighbouring chunks merged, a character
    budget). ``metadata`` of each document: ``doc_key``, ``title``,
    ``char_start``, ``char_end``, ``source``, ``metadata`` (the document's
    own), ``headings``, ``chunk_ids``, ``score``, ``rank``, ``chunk_id``,
    ``dense_score``, ``lexical_score``, ``truncated``, ``pages`` (``[first, last]`` for a PDF, else None).

    One retriever (one ``Searcher``) may serve many threads at once.
    """

    searcher: Searcher
    k: int = 5
    mode: str | None = None
    where: dict[str, Any] | None = None
    neighbors: int = 0
    max_chars: int | None = None
    search_kwargs: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_index(cls, path: str | Path, *, device: str = "auto", embedder: Embedder | None = None,
                   **kwargs: Any) -> MitsukeRetriever:
        """Open the index at ``path`` and wrap it: ``MitsukeRetriever.from_index("my-index", k=5)``."""
        return cls(searcher=Searcher.open(path, device=device, embedder=embedder), **kwargs)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        passages = retrieve_passages(self.searcher, query, k=self.k, max_chars=self.max_chars,
                                     neighbors=self.neighbors, mode=self.mode, where=self.where,
                                     **self.search_kwargs)
        return [to_document(p) for p in passages]
