"""``mitsuke serve`` (HTTP API + search page) and ``mitsuke mcp`` (MCP server on stdio)."""
from __future__ import annotations

import logging

import click

from mitsuke.cli.options import CONTEXT, index_option
from mitsuke.indexer.errors import MitsukeError
from mitsuke.indexer.location import display

__all__ = ["serve", "mcp"]

log = logging.getLogger("mitsuke")

_threads = click.option(
    "--threads", type=click.IntRange(min=1), default=None,
    help="CPU threads for the query embedding (default: torch's, all cores). With several replicas on one "
         "machine give each cores / replicas.")


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _missing(extra: str, exc: ImportError) -> click.ClickException:
    return click.ClickException(f"{exc.name or exc} is not installed: pip install 'mitsuke[{extra}]'")


@click.command(context_settings=CONTEXT)
@index_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs an API key (or --insecure).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="TCP port.")
@click.option("--api-key-file", type=click.Path(dir_okay=False), default=None,
              help="File whose first line is the API key (else env MITSUKE_API_KEY). Clients send "
                   "'Authorization: Bearer KEY'.")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without an API key.")
@click.option("--cors-origin", multiple=True, metavar="ORIGIN",
              help="Let browser pages from ORIGIN call the API (repeatable; default: CORS off).")
@click.option("--max-query-chars", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Longest query accepted (characters).")
@click.option("--max-k", type=click.IntRange(min=1), default=200, show_default=True,
              help="Most passages one request may ask for.")
@click.option("--max-batch", type=click.IntRange(min=1), default=64, show_default=True,
              help="Most queries in one POST /search/batch.")
@click.option("--max-body-bytes", type=click.IntRange(min=1024), default=1 << 20, show_default=True,
              help="Largest request body; a larger one gets 413 without being read.")
@click.option("--device", default="auto", show_default=True, help="Device for the query embedding.")
@_threads
@click.option("--batch-max", type=click.IntRange(min=1), default=64, show_default=True, hidden=True,
              help="Most concurrent queries embedded in one forward pass (1 turns micro-batching off).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True, help="uvicorn's log level (access log at info).")
def serve(index_dir, host, port, api_key_file, insecure, cors_origin, max_query_chars, max_k, max_batch,
          max_body_bytes, device, threads, batch_max, log_level):
    """Serve --index DIR over HTTP: a JSON API, OpenAPI docs at /docs, a search page at /.

    The model loads once and is warmed before GET /readyz answers 200;
    concurrent dense queries share one forward pass; new commits to the index
    are searched without a restart.

    \b
    Examples:
      mitsuke serve --index idx                                # http://127.0.0.1:8765/
      curl -s localhost:8765/search -H 'content-type: application/json' \\
           -d '{"query": "豊岡市の年間平均降雪量は？", "k": 3}'
      MITSUKE_API_KEY=$(cat key) mitsuke serve --index idx --host 0.0.0.0
    """
    from mitsuke.server.config import ServeConfig, read_api_key

    config = ServeConfig(index=index_dir, host=host, port=port, api_key=read_api_key(api_key_file),
                         insecure=insecure, device=device, max_query_chars=max_query_chars, max_k=max_k,
                         max_batch=max_batch, max_body_bytes=max_body_bytes, cors_origins=list(cors_origin),
                         batch_max=batch_max)
    config.check_bind()  # before anything loads or listens
    _set_threads(threads)
    try:
        import uvicorn

        from mitsuke.server.app import create_app
    except ImportError as exc:
        raise _missing("server", exc) from None
    from mitsuke.server.service import SearchService

    service = SearchService(index_dir, device=device)
    app = create_app(config, service)
    if config.insecure and not config.api_key and host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("serving %s on %s without an API key (--insecure)", display(index_dir), host)
    click.echo(f"mitsuke: serving {display(index_dir)} on http://{host}:{port}/ (docs at /docs; "
               f"{'API key required' if config.api_key else 'no API key'})", err=True)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                                           server_header=False, timeout_graceful_shutdown=5,
                                           # Longer than a load balancer's idle timeout (60 s is common), so
                                           # the server never closes a connection a client is about to reuse.
                                           timeout_keep_alive=75))
    try:
        server.run()
    finally:
        service.close()
    if not server.started:
        raise click.ClickException(f"could not listen on {host}:{port} (see the message above)")


@click.command(context_settings=CONTEXT)
@index_option
@click.option("--device", default="auto", show_default=True, help="Device for the query embedding.")
@_threads
def mcp(index_dir, device, threads):
    """Serve --index DIR to an MCP client on stdin/stdout: tools `search` and `get_document`.

    \b
    Client configuration (e.g. Claude Desktop's mcpServers):
      {"mitsuke": {"command": "mitsuke", "args": ["mcp", "--index", "/path/to/idx"]}}
    """
    try:
        from mitsuke.server.mcp_tools import build_mcp
    except ImportError as exc:
        raise _missing("mcp", exc) from None
    from mitsuke.server.service import SearchService

    _set_threads(threads)
    service = SearchService(index_dir, device=device)
    try:
        service.warm()
        if service.warm_error:
            raise MitsukeError(f"cannot serve {display(index_dir)}: {service.warm_error}")
        build_mcp(service).run("stdio")
    finally:
        service.close()
