"""The ``mitsuke`` command: index, search, info, eval, tune, chunk, docs, compact, serve, mcp.

The CLI sits above both sides of the library and imports downward only:
``mitsuke.cli.index`` (``index``, ``chunk``) uses the write side
(``mitsuke.indexer``), ``mitsuke.cli.search``, ``.info``, ``.evaluate`` and ``.tune`` the
read side (``mitsuke.search``), ``mitsuke.cli.serve`` (``serve``, ``mcp``) the
service above it (``mitsuke.server``); neither side imports the CLI. Each command
module defines plain ``click`` commands; this module owns the group, logging
and the one place a ``MitsukeError`` becomes a one-line message. Heavy imports
(torch, FAISS, SQLAlchemy) happen inside the commands, so ``mitsuke --help``
stays fast.
"""
from __future__ import annotations

import logging
import os
import sys

import click

from mitsuke import __version__
from mitsuke.cli import compact, docs, evaluate, index, info, integrity, search, serve, tune
from mitsuke.cli.errors import one_line
from mitsuke.cli.options import CONTEXT
from mitsuke.indexer.errors import MitsukeError

__all__ = ["main", "cli"]


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mitsuke: %(message)s"))
    logger = logging.getLogger("mitsuke")
    logger.handlers = [h for h in logger.handlers if isinstance(h, logging.NullHandler)] + [handler]
    logger.setLevel(level)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MitsukeError as exc:
            raise click.ClickException(str(exc)) from None
        except (OSError, RecursionError, MemoryError) as exc:
            raise click.ClickException(one_line(exc)) from None
        except Exception as exc:  # a SQLite error on a damaged meta.sqlite: one line, never a traceback
            message = one_line(exc)
            if message is None:
                raise
            raise click.ClickException(message) from None


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="mitsuke")
@click.option("-v", "--verbose", count=True,
              help="More log output (-v info, -vv debug); -v also shows the model libraries' own progress bars.")
@click.option("--color/--no-color", default=None,
              help="Colour the output (default: only on a terminal, never when NO_COLOR is set).")
@click.pass_context
def cli(ctx: click.Context, verbose: int, color: bool | None) -> None:
    """mitsuke (見付け): Japanese-first semantic search.

    \b
    Examples:
      mitsuke index data/ --index idx --model none      # lexical-only, no model needed
      mitsuke index data/ --index idx --model ./my-model
      mitsuke search "豊岡市の気候は?" --index idx -k 5
      mitsuke info --index idx
      mitsuke docs list --index idx

    Exit status: 0 done; 1 an error (nothing changed); 2 a usage error;
    3 some inputs failed (`index`, `chunk`: the others were committed).
    """
    _setup_logging(verbose)
    if color is None and os.environ.get("NO_COLOR"):
        color = False  # https://no-color.org
    ctx.color = color


for _command in (index.index, index.chunk, search.search, info.info, evaluate.eval_cmd, docs.docs,
                 compact.compact, serve.serve, serve.mcp, integrity.verify, integrity.repair, tune.tune):
    cli.add_command(_command)
del _command


def main() -> None:
    """Entry point of the ``mitsuke`` console script."""
    cli(prog_name="mitsuke")
