"""mitsuke as a service: an HTTP API with a search page (``mitsuke serve``) and an MCP server (``mitsuke mcp``).

Needs the ``server`` extra (FastAPI + uvicorn) or the ``mcp`` extra::

    pip install 'mitsuke[server]'     # mitsuke serve
    pip install 'mitsuke[mcp]'        # mitsuke mcp

>>> from mitsuke.server import ServeConfig, create_app        # doctest: +SKIP
>>> app = create_app(ServeConfig(index="idx"))                 # an ASGI app; run it with uvicorn  # doctest: +SKIP
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mitsuke.server.config import ServeConfig, is_loopback, read_api_key

if TYPE_CHECKING:
    from mitsuke.server.app import create_app
    from mitsuke.server.service import SearchService

__all__ = ["ServeConfig", "create_app", "SearchService", "is_loopback", "read_api_key"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from mitsuke.server.app import create_app

        return create_app
    if name == "SearchService":
        from mitsuke.server.service import SearchService

        return SearchService
    raise AttributeError(f"module 'mitsuke.server' has no attribute {name!r}")
