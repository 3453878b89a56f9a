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


# --------------------------------------------------------------------------- hybrid fusion (search, eval, tune)
__all__ += ["fusion_options", "fusion_kwargs", "parse_weights"]

_WEIGHTS_HINT = "expected two numbers DENSE,LEXICAL (>= 0, not both 0) such as 0.2,0.8"


def parse_weights(weights: str | None) -> list[float] | None:
    """``"0.3,1"`` -> ``[0.3, 1.0]``; a UsageError (exit 2) naming the option otherwise."""
    if weights is None:
        return None
    from mitsuke.indexer.errors import QueryError
    from mitsuke.search.fusion import check_weights

    try:
        return check_weights([float(x) for x in weights.split(",")])
    except (ValueError, QueryError):
        raise click.UsageError(f"--weights {weights!r}: {_WEIGHTS_HINT}") from None


def fusion_options(f):
    """--fusion, --weights, --rrf-k, --norm, --candidates: left out, the index's saved defaults apply."""
    for opt in reversed([
        click.option("--fusion", type=click.Choice(["convex", "rrf", "weighted"]), default=None,
                     help="How hybrid mode combines the legs: convex (normalised scores), rrf (reciprocal ranks) "
                          "or weighted. Default: the index's search defaults (mitsuke tune --save), else convex."),
        click.option("--weights", default=None, metavar="DENSE,LEXICAL",
                     help="Hybrid leg weights, e.g. 0.2,0.8 (convex default) to trust BM25 more than a weak model."),
        click.option("--rrf-k", "rrf_k", type=click.IntRange(min=0, max=1 << 20), default=None,
                     help="RRF constant: score = weight / (k + rank) (default 60)."),
        click.option("--norm", type=click.Choice(["tmm", "minmax"]), default=None,
                     help="Convex fusion's per-leg normalisation: theoretical-min-max (default) or min-max."),
        click.option("--candidates", type=click.IntRange(min=1, max=MAX_K * 10), default=None,
                     help="Depth of each leg in hybrid mode / dense candidates rescored exactly (default: 10 × k)."),
    ]):
        f = opt(f)
    return f


def fusion_kwargs(fusion, weights, rrf_k, norm, candidates) -> dict:
    """The fusion options as ``Searcher.search`` keywords (weights parsed and checked)."""
    return {"fusion": fusion, "weights": parse_weights(weights), "rrf_k": rrf_k, "norm": norm,
            "candidates": candidates}
