"""LlamaIndex retriever over a mitsuke index (``pip install "mitsuke[llamaindex]"``).

>>> from mitsuke.search import Searcher
>>> from mitsuke.search.llamaindex import MitsukeRetriever
>>> retriever = MitsukeRetriever(Searcher.open("my-index"), k=5)     # doctest: +SKIP
>>> nodes = retriever.retrieve("更科蕎麦とはなんですか?")              # doctest: +SKIP
>>> nodes[0].score, nodes[0].node.metadata["doc_key"], nodes[0].node.start_char_idx  # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mitsuke.search.context import ContextPassage, retrieve_passages
from mitsuke.search.extras import require
from mitsuke.search.searcher import Searcher

if TYPE_CHECKING:
    from mitsuke.indexer.protocol import Embedder

_retrievers = require("llama_index.core.retrievers", "llamaindex", "mitsuke.search.llamaindex")
_schema = require("llama_index.core.schema", "llamaindex", "mitsuke.search.llamaindex")

BaseRetriever = _retrievers.BaseRetriever
NodeWithScore = _schema.NodeWithScore
TextNode = _schema.TextNode
QueryBundle = _schema.QueryBundle
NodeRelationship = _schema.NodeRelationship
RelatedNodeInfo = _schema.RelatedNodeInfo

__all__ = ["MitsukeRetriever", "to_node"]

# Shown to the LLM next to each passage; the other fields are for the program (citations, debugging).
LLM_METADATA_KEYS = ("title", "doc_key")


def to_node(passage: ContextPassage) -> NodeWithScore:
    """A ``NodeWithScore`` whose ``TextNode`` carries the text, offsets and citation metadata."""
    meta = passage.to_metadata()
    node = TextNode(
        id_=f"{passage.doc_key}#{passage.hit.chunk_id}",
        text=passage.text,
        metadata=meta,
        start_char_idx=passage.char_start,
        end_char_idx=passage.char_end,
        excluded_llm_metadata_keys=[k for k in meta if k not in LLM_METADATA_KEYS],
        excluded_embed_metadata_keys=list(meta),
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=passage.doc_key)},
    )
    return NodeWithScore(node=node, score=passage.score)


class MitsukeRetriever(BaseRetriever):
    """Retrieve passages from a mitsuke index as LlamaIndex ``NodeWithScore``s.

    With the defaults it returns exactly ``searcher.search(query, k, mode=mode,
    where=where)``, in that order. ``neighbors`` / ``max_chars`` switch to
    ``Searcher.retrieve_context``. Each node's ``start_char_idx`` /
    ``end_char_idx`` are the passage's offsets in its document, its source
    relationship is the document key, and ``metadata`` holds the citation
    fields, score and ranks (only title and doc_key are shown to the LLM).
    """

    def __init__(self, searcher: Searcher, *, k: int = 5, mode: str | None = None,
                 where: dict[str, Any] | None = None, neighbors: int = 0, max_chars: int | None = None,
                 callback_manager=None, verbose: bool = False, **search_kwargs: Any) -> None:
        self.searcher = searcher
        self.k = k
        self.mode = mode
        self.where = where
        self.neighbors = neighbors
        self.max_chars = max_chars
        self.search_kwargs = search_kwargs
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @classmethod
    def from_index(cls, path: str | Path, *, device: str = "auto", embedder: Embedder | None = None,
                   **kwargs: Any) -> MitsukeRetriever:
        """Open the index at ``path`` and wrap it: ``MitsukeRetriever.from_index("my-index", k=5)``."""
        return cls(Searcher.open(path, device=device, embedder=embedder), **kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        passages = retrieve_passages(self.searcher, query_bundle.query_str, k=self.k, max_chars=self.max_chars,
                                     neighbors=self.neighbors, mode=self.mode, where=self.where,
                                     **self.search_kwargs)
        return [to_node(p) for p in passages]
