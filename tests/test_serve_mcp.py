"""mitsuke mcp, driven by the official MCP SDK's own stdio client."""
from __future__ import annotations

import json
import os
import sys

import anyio
import pytest

from servekit import build_lexical

mcp = pytest.importorskip("mcp")

from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402


@pytest.fixture(scope="module")
def lex_index(tmp_path_factory):
    return build_lexical(tmp_path_factory.mktemp("mcp") / "lex")


def _run(index, work, tmp_path):
    """Start `mitsuke mcp --index INDEX` over stdio and run ``work(session)``; returns its result."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mitsuke.cli", "mcp", "--index", str(index)],
        env={k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PYTHONPATH", "VIRTUAL_ENV")}
        | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})

    async def main():
        with open(tmp_path / "mcp-stderr.log", "w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    return await work(session)

    return anyio.run(main)


def test_mcp_tools_search_and_get_document(lex_index, tmp_path):
    from mitsuke.search.searcher import Searcher

    async def work(session):
        tools = {t.name: t for t in (await session.list_tools()).tools}
        found = await session.call_tool("search", {"query": "豊岡市の年間平均降雪量は？", "k": 3})
        doc = await session.call_tool("get_document", {"doc_key": "豊岡市.md"})
        bad_k = await session.call_tool("search", {"query": "空港", "k": 0})
        bad_mode = await session.call_tool("search", {"query": "空港", "mode": "dense"})
        missing = await session.call_tool("get_document", {"doc_key": "無い.txt"})
        return tools, found, doc, bad_k, bad_mode, missing

    tools, found, doc, bad_k, bad_mode, missing = _run(lex_index, work, tmp_path)

    # Typed schemas: the arguments and the structured results are described.
    assert set(tools) == {"search", "get_document"}
    search_in = tools["search"].input_schema
    assert search_in["required"] == ["query"]
    assert search_in["properties"]["k"]["maximum"] == 50 and search_in["properties"]["k"]["minimum"] == 1
    assert "passages" in tools["search"].output_schema["properties"]
    assert "text" in tools["get_document"].output_schema["properties"]

    assert not found.is_error
    with Searcher.open(lex_index) as s:
        expected = [h.to_dict(rank=i) for i, h in enumerate(s.search("豊岡市の年間平均降雪量は？", k=3), 1)]
    assert found.structured_content["passages"] == expected
    assert found.structured_content["mode"] == "lexical"
    assert json.loads(found.content[0].text)["passages"][0]["doc_key"] == "豊岡市.md"

    text = doc.structured_content["text"]
    top = expected[0]
    assert text[top["char_start"]:top["char_end"]] == top["text"]

    assert bad_k.is_error
    assert bad_mode.is_error and "lexical-only" in bad_mode.content[0].text
    assert missing.is_error and "無い.txt" in missing.content[0].text
