"""Options and settings shared by the ``mitsuke`` commands."""
from __future__ import annotations

import click

__all__ = ["CONTEXT", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_PARTIAL", "MAX_K", "index_option", "json_option",
           "mode_option", "cache_option"]

# Exit statuses of every command (README "Exit status").
EXIT_OK = 0       # everything done
EXIT_ERROR = 1    # an error; nothing was changed (or the one-line message says what was)
EXIT_USAGE = 2    # a usage error (click's own status): bad option, missing argument, empty query
EXIT_PARTIAL = 3  # some inputs failed; the others were committed and the summary counts them

# The most passages one search returns: bounds what -k may ask of FAISS and SQLite.
MAX_K = 100_000

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

index_option = click.option(
    "--index", "index_dir", required=True, envvar="MITSUKE_INDEX", type=click.Path(file_okay=False),
    help="Index directory, or a PostgreSQL URL postgresql+psycopg://USER@HOST:PORT/DB?schema=NAME "
         "(env: MITSUKE_INDEX).")
cache_option = click.option(
    "--cache", "cache_dir", default=None, type=click.Path(file_okay=False),
    help="Local cache directory of a PostgreSQL index (default: $MITSUKE_CACHE/HOST-PORT-DB-SCHEMA, "
         "else ~/.cache/mitsuke/HOST-PORT-DB-SCHEMA).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines instead of text.")
mode_option = click.option(
    "--mode", type=click.Choice(["hybrid", "dense", "lexical"]), default=None,
    help="hybrid (dense + BM25, default when the index has a model), dense, or lexical (default for --model none).")
