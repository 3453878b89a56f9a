"""``mitsuke compact``: reclaim the vector rows of deleted and replaced chunks."""
from __future__ import annotations

import json

import click

from mitsuke.cli.options import CONTEXT, index_option, json_option

__all__ = ["compact"]


@click.command(context_settings=CONTEXT)
@index_option
@json_option
def compact(index_dir, as_json):
    """Rewrite vectors.f16 without the rows of deleted or replaced chunks and rebuild the ANN index.

    Nothing is embedded again and no model is loaded. `mitsuke index` compacts
    by itself once a quarter of the rows are dead; this does it now. A
    lexical-only index has no vectors: nothing to do.

    \b
    Examples:
      mitsuke docs delete 'old/*' --index idx --yes && mitsuke compact --index idx
      mitsuke compact --index idx --json
    """
    from mitsuke.indexer.builder import IndexBuilder
    from mitsuke.indexer.location import is_url

    if is_url(index_dir):
        click.echo(json.dumps({"compacted": False, "rows_before": 0, "rows_after": 0}) if as_json else
                   "nothing to compact: a PostgreSQL index keeps no vectors file (PostgreSQL reclaims rows itself)")
        return

    with IndexBuilder.open(index_dir, load_model=False) as b:
        if b.vectors is None:
            before = after = 0
            done = False
        else:
            with b.store.snapshot() as snap:
                before, dead = snap.vector_rows(), snap.dead_vector_rows()
            done = b.maybe_compact(force=True)
            after = before - dead if done else before
    if as_json:
        click.echo(json.dumps({"compacted": done, "rows_before": before, "rows_after": after}))
    elif b.vectors is None:
        click.echo("nothing to compact: a lexical-only index has no vectors")
    elif not done:
        click.echo(f"nothing to compact: all {before:,} vector rows are live")
    else:
        click.echo(f"compacted vectors.f16: {before:,} rows -> {after:,}")
