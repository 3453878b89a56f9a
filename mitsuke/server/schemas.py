"""Request and response bodies of the HTTP API (and the MCP tools' typed results).

Request models are built per server by ``request_models`` so that their
limits (query length, k, batch size) are the configured ones and show up in
the OpenAPI schema. Unknown fields and values of the wrong JSON type are
rejected (``extra="forbid"``, strict types).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Mode", "Fusion", "Norm", "WhereValue", "PassageOut", "SearchResponse", "BatchResponse", "BatchItem",
    "ContextResponse", "ContextPassageOut", "DocumentSummary", "DocumentList", "ChunkOut", "DocumentOut",
    "ErrorBody", "ErrorResponse", "RequestModels", "request_models",
]

Mode = Literal["hybrid", "dense", "lexical"]
Fusion = Literal["convex", "rrf", "weighted"]
Norm = Literal["tmm", "minmax"]
Scalar = Union[str, int, float, bool]
WhereValue = Union[Scalar, list[Scalar]]

_STRICT = ConfigDict(extra="forbid", strict=True)


class PassageOut(BaseModel):
    """One ranked passage: the object `mitsuke search --json` prints. ``text == document[char_start:char_end]``."""

    rank: int
    chunk_id: int
    doc_key: str
    title: str
    text: str
    score: float = Field(description="cosine (dense), BM25 (lexical) or fused score (hybrid); higher is better")
    char_start: int
    char_end: int
    headings: list[str]
    metadata: dict[str, Any]
    chunk_index: int
    source: str
    dense_score: Optional[float]
    lexical_score: Optional[float]
    dense_rank: Optional[int]
    lexical_rank: Optional[int]
    pages: Optional[list[int]] = Field(description="paged documents (PDF): [first, last] page, 1-based; else null")
    lexical_match: Optional[Literal["terms", "trigram", "both"]] = Field(
        description="what the lexical leg found the passage by: MeCab terms, a substring (trigram) or both")


class SearchResponse(BaseModel):
    query: str
    mode: Mode
    k: int
    took_ms: float = Field(description="time from receiving the request to building the response")
    passages: list[PassageOut]
    highlights: Optional[list[list[list[int]]]] = Field(
        None, description="with highlight=true: per passage, [start, end) offsets into its text of the query's terms")


class BatchItem(BaseModel):
    query: str
    passages: list[PassageOut]


class BatchResponse(BaseModel):
    mode: Mode
    k: int
    took_ms: float
    results: list[BatchItem]


class ContextPassageOut(BaseModel):
    rank: int
    score: float
    text: str
    truncated: bool
    spans: list[dict[str, int]]
    citation: dict[str, Any]
    chunk_id: int


class ContextResponse(BaseModel):
    query: str
    took_ms: float
    n_chars: int
    context: str = Field(description="numbered passages with citations, ready for a prompt")
    passages: list[ContextPassageOut]


class DocumentSummary(BaseModel):
    doc_key: str
    title: str
    source: str
    source_type: str
    n_chars: int
    chunks: int
    metadata: dict[str, Any]
    generation: int


class DocumentList(BaseModel):
    offset: int
    limit: int
    total: int
    documents: list[DocumentSummary]


class ChunkOut(BaseModel):
    chunk_id: int
    chunk_index: int
    char_start: int
    char_end: int
    headings: list[str]
    pages: Optional[list[int]] = Field(None, description="paged documents (PDF): [first, last] page of the chunk")


class DocumentOut(BaseModel):
    doc_key: str
    title: str
    source: str
    source_type: str
    n_chars: int
    metadata: dict[str, Any]
    generation: int
    page_starts: Optional[list[int]] = Field(
        None, description="paged documents (PDF): offset in text where each page begins; null when unpaged")
    text: str = Field(description="the document rebuilt from its chunks; characters no chunk covers "
                                  "(whitespace between chunks) are given as newlines and listed in gaps")
    gaps: list[list[int]]
    chunks: list[ChunkOut]


class ErrorBody(BaseModel):
    status: int
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


@dataclass(frozen=True)
class RequestModels:
    search: type[BaseModel]
    batch: type[BaseModel]
    context: type[BaseModel]


def request_models(max_query_chars: int, max_k: int, max_batch: int) -> RequestModels:
    """The request bodies with these limits."""
    Query = Field(min_length=0, max_length=max_query_chars, description=f"at most {max_query_chars} characters")
    K = Field(10, ge=1, le=max_k, description=f"passages to return (1–{max_k})")

    class SearchOptions(BaseModel):
        model_config = _STRICT
        k: int = K
        mode: Optional[Mode] = Field(None, description="default: hybrid when the index has a model, else lexical")
        rerank: Optional[bool] = Field(None, description="rescore dense candidates by exact cosine "
                                                          "(default: the index's search defaults, else true)")
        where: Optional[dict[str, WhereValue]] = Field(
            None, max_length=32, description="metadata filters, ANDed: {'doc_key': '空*', 'lang': ['ja', 'en']}")
        candidates: Optional[int] = Field(None, ge=1, le=max_k * 10)
        nprobe: Optional[int] = Field(None, ge=1, le=1 << 16)
        fusion: Optional[Fusion] = Field(None, description="default: the index's search defaults "
                                                            "(mitsuke tune --save), else convex")
        weights: Optional[list[float]] = Field(None, min_length=2, max_length=2, description="[dense, lexical]")
        rrf_k: Optional[int] = Field(None, ge=0, le=1 << 20, description="RRF constant (fusion rrf)")
        norm: Optional[Norm] = Field(None, description="convex fusion's normalisation")

    class SearchRequest(SearchOptions):
        """Same options as `mitsuke search`."""
        query: str = Query
        highlight: bool = Field(False, description="also return the offsets of the query's terms in each passage")

    class BatchRequest(SearchOptions):
        queries: list[Annotated[str, Field(max_length=max_query_chars)]] = Field(min_length=1, max_length=max_batch,
                                   description=f"1–{max_batch} queries, each searched with the same options")

    class ContextRequest(SearchOptions):
        """Options of `Searcher.retrieve_context`."""
        query: str = Query
        k: int = Field(5, ge=1, le=max_k)
        max_chars: Optional[int] = Field(None, ge=1, le=1_000_000)
        neighbors: int = Field(0, ge=0, le=10)

    for m in (SearchRequest, BatchRequest, ContextRequest):
        m.model_rebuild()
    return RequestModels(SearchRequest, BatchRequest, ContextRequest)
