"""The FastAPI application of ``mitsuke serve``.

This module does not use ``from __future__ import annotations``: FastAPI reads
the endpoints' parameter types at run time, and the request models are built
per app (with its limits) inside ``create_app``.
"""
import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from functools import partial
from http import HTTPStatus
from importlib import resources
from typing import Any, Optional

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mitsuke import __version__
from mitsuke.indexer.errors import MitsukeError, QueryError
from mitsuke.server.batcher import MicroBatcher
from mitsuke.server.config import ServeConfig
from mitsuke.server.metrics import Metrics
from mitsuke.server.middleware import GuardMiddleware, MetricsMiddleware
from mitsuke.server.schemas import (
    BatchResponse,
    ContextResponse,
    DocumentList,
    DocumentOut,
    ErrorResponse,
    SearchResponse,
    request_models,
)
from mitsuke.server.service import NotFound, NotReady, SearchService, check_query

__all__ = ["create_app", "SafeJSONResponse"]

log = logging.getLogger("mitsuke")

_SEARCH_OPTIONS = ("k", "mode", "rerank", "where", "candidates", "nprobe", "fusion", "weights", "rrf_k", "norm")
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
    422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}


class SafeJSONResponse(JSONResponse):
    """UTF-8 JSON; text that cannot be UTF-8 (a lone surrogate) is sent \\u-escaped instead of failing."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _error(status: int, kind: str, message: str, headers: Optional[dict] = None) -> SafeJSONResponse:
    return SafeJSONResponse({"error": {"status": status, "type": kind, "message": message}}, status_code=status,
                            headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        msg = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":
            msg = "the body is not valid JSON (" + str(err.get("ctx", {}).get("error", "parse error")) + ")"
            parts.append(msg)
            continue
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        given = err.get("input")
        shown = "" if isinstance(given, (dict, list)) or given is None else f" (got {repr(given)[:60]})"
        parts.append(f"{loc}: {msg}{shown}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _options(req: Any) -> dict[str, Any]:
    return {name: getattr(req, name) for name in _SEARCH_OPTIONS}


def create_app(config: ServeConfig, service: Optional[SearchService] = None) -> FastAPI:
    """The ASGI app serving ``config.index`` (opened here unless ``service`` is given)."""
    service = service or SearchService(config.index, device=config.device)
    metrics = Metrics()
    batcher = MicroBatcher(service.search_batch, max_batch=config.batch_max, on_batch=metrics.observe_batch)
    models = request_models(config.max_query_chars, config.max_k, config.max_batch)
    page = resources.files("mitsuke.server").joinpath("static/index.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if config.warm:
            threading.Thread(target=service.warm, name="mitsuke-warm", daemon=True).start()
        else:
            service.ready.set()
        yield
        await batcher.close()

    app = FastAPI(
        title="mitsuke", version=__version__, lifespan=lifespan, default_response_class=SafeJSONResponse,
        description="Japanese-first semantic search over one mitsuke index. `POST /search` returns the passages "
                    "of `mitsuke search --json`; errors are `{\"error\": {\"status\", \"type\", \"message\"}}`.")
    app.state.service = service
    app.state.metrics = metrics
    app.state.batcher = batcher

    # ------------------------------------------------------------------ errors
    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError):
        return _error(422, "validation_error", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail, ensure_ascii=False)
        if exc.status_code == 400 and message == "There was an error parsing the body":
            message = "the body could not be read as JSON: send UTF-8 JSON with Content-Type: application/json"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
        return _error(exc.status_code, "http_error", message, getattr(exc, "headers", None))

    @app.exception_handler(MitsukeError)
    async def on_mitsuke(request: Request, exc: MitsukeError):
        if isinstance(exc, NotReady):
            return _error(503, "not_ready", str(exc), {"Retry-After": "1"})
        if isinstance(exc, NotFound):
            return _error(404, "not_found", str(exc))
        if isinstance(exc, QueryError):
            return _error(400, "bad_query", str(exc))
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return _error(HTTPStatus.INTERNAL_SERVER_ERROR.value, type(exc).__name__, str(exc))

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(HTTPStatus.INTERNAL_SERVER_ERROR.value, "internal_error",
                      f"internal error ({type(exc).__name__}); the server log has the details")

    # ------------------------------------------------------------------ page and health
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index_page():
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is alive (the model may still be loading)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"model": ErrorResponse}})
    async def readyz() -> dict[str, Any]:
        """200 once the index is open and the model warm; 503 before (or if warm-up failed)."""
        return await run_in_threadpool(service.readiness)

    @app.get("/info", tags=["index"])
    async def info() -> dict[str, Any]:
        """Counts, model, ANN parameters and generation of the index (as `mitsuke info --json`), plus limits."""
        data = await run_in_threadpool(service.info)
        data["version"] = __version__
        data["limits"] = {"max_query_chars": config.max_query_chars, "max_k": config.max_k,
                          "max_batch": config.max_batch, "max_body_bytes": config.max_body_bytes}
        return data

    @app.get("/metrics", response_class=PlainTextResponse, tags=["health"])
    async def prometheus():
        """Prometheus text format: requests by route and status, errors, latency and batch-size histograms."""
        return PlainTextResponse(metrics.render({"mitsuke_ready": int(service.ready.is_set())}),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    # ------------------------------------------------------------------ search
    @app.post("/search", response_model=SearchResponse, responses=_ERRORS, tags=["search"])
    async def search(req: models.search):  # type: ignore[name-defined]  # built at run time
        """Top k passages for a query: the same passages, fields and order as `mitsuke search --json`."""
        started = time.perf_counter()
        service.check_ready()
        check_query(req.query)
        options = _options(req)
        mode = service.mode_of(req.mode)
        if mode == "lexical" or not req.query.strip():
            hits = await run_in_threadpool(partial(service.searcher.search, req.query, **options))
        else:
            hits = await batcher.submit(req.query, options)
        body: dict[str, Any] = {"query": req.query, "mode": mode, "k": req.k, "took_ms": 0.0,
                                "passages": service.passages_json(hits)}
        if req.highlight:
            body["highlights"] = await run_in_threadpool(service.highlights, req.query, hits)
        body["took_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return SafeJSONResponse(body)

    @app.post("/search/batch", response_model=BatchResponse, responses=_ERRORS, tags=["search"])
    async def search_batch(req: models.batch):  # type: ignore[name-defined]  # built at run time
        """Many queries with the same options, embedded together: one result list per query, in order."""
        started = time.perf_counter()
        service.check_ready()
        for q in req.queries:
            check_query(q)
        results = await run_in_threadpool(service.search_batch, req.queries, _options(req))
        return SafeJSONResponse({
            "mode": service.mode_of(req.mode), "k": req.k,
            "took_ms": round((time.perf_counter() - started) * 1000, 3),
            "results": [{"query": q, "passages": service.passages_json(h)} for q, h in zip(req.queries, results)]})

    @app.post("/context", response_model=ContextResponse, responses=_ERRORS, tags=["search"])
    async def context(req: models.context):  # type: ignore[name-defined]  # built at run time
        """Passages for an LLM prompt (`Searcher.retrieve_context`): widened, deduplicated, within max_chars, cited."""
        started = time.perf_counter()
        service.check_ready()
        check_query(req.query)
        options = {**_options(req), "max_chars": req.max_chars, "neighbors": req.neighbors}
        body = await run_in_threadpool(service.context, req.query, options)
        return SafeJSONResponse({"query": body["query"], "took_ms": round((time.perf_counter() - started) * 1000, 3),
                                 "n_chars": body["n_chars"], "context": body["context"], "passages": body["passages"]})

    # ------------------------------------------------------------------ documents
    @app.get("/documents", response_model=DocumentList, responses=_ERRORS, tags=["index"])
    async def documents(offset: int = Query(0, ge=0, le=1 << 40), limit: int = Query(100, ge=1, le=1000),
                        prefix: Optional[str] = Query(None, max_length=1000, description="keys starting with this")):
        """Documents by key, a page at a time."""
        return SafeJSONResponse(await run_in_threadpool(service.documents, offset, limit, prefix))

    @app.get("/documents/{key:path}", response_model=DocumentOut, responses={404: {"model": ErrorResponse}},
             tags=["index"])
    async def document(key: str):
        """One document: its text (rebuilt from the chunks, offsets exact), its chunks' offsets and headings."""
        check_query(key)
        return SafeJSONResponse(await run_in_threadpool(service.document, key))

    # Outermost last: metrics see every response, CORS headers reach even 401s.
    app.add_middleware(GuardMiddleware, api_key=config.api_key, max_body_bytes=config.max_body_bytes)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
