"""``mitsuke mcp``: the index as MCP tools (``search``, ``get_document``) for agents, over stdio.

Built on the official ``mcp`` SDK (2.x, ``MCPServer``); results are typed
(pydantic models), so clients see an output schema and structured content.
"""
from __future__ import annotations

from typing import Annotated, Optional, cast

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from mitsuke import __version__
from mitsuke.indexer.errors import MitsukeError
from mitsuke.server.schemas import DocumentOut, Mode, PassageOut
from mitsuke.server.service import SearchService, check_query

__all__ = ["build_mcp", "SearchResult", "MAX_K"]

MAX_K = 50


class SearchResult(BaseModel):
    """Ranked passages; each has doc_key and [char_start, char_end) into its document, for citing."""

    query: str
    mode: Mode
    passages: list[PassageOut]


def build_mcp(service: SearchService) -> MCPServer:
    """An MCP server whose tools search ``service``'s index."""
    server = MCPServer(
        "mitsuke", version=__version__,
        instructions="Search a Japanese-first document index. Use `search` to find passages (answer from their "
                     "text and cite doc_key with char_start:char_end), `get_document` to read a whole document.")

    @server.tool()
    def search(
        query: Annotated[str, Field(description="what to look for, in Japanese or any language", max_length=2000)],
        k: Annotated[int, Field(ge=1, le=MAX_K, description="number of passages")] = 5,
        mode: Annotated[Optional[Mode], Field(description="hybrid (default with a model), dense or lexical")] = None,
        where: Annotated[Optional[dict[str, str]], Field(
            description="metadata filters ANDed, e.g. {\"doc_key\": \"news/*\", \"lang\": \"ja\"}")] = None,
    ) -> SearchResult:
        """Find the passages of the index that best answer a query, best first."""
        try:
            check_query(query)
            hits = service.searcher.search(query, k=k, mode=mode, where=where or None)
        except MitsukeError as exc:
            raise ToolError(str(exc)) from None
        return SearchResult(query=query, mode=cast(Mode, service.mode_of(mode)),
                            passages=[PassageOut(**p) for p in service.passages_json(hits)])

    @server.tool()
    def get_document(
        doc_key: Annotated[str, Field(description="a passage's doc_key", max_length=4096)],
    ) -> DocumentOut:
        """One document's full text (offsets as in search results), with its chunks and headings."""
        try:
            check_query(doc_key)
            return DocumentOut(**service.document(doc_key))
        except MitsukeError as exc:
            raise ToolError(str(exc)) from None

    return server
