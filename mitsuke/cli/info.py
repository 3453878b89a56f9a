"""``mitsuke info``: what an index holds."""
from __future__ import annotations

import json

import click

from mitsuke.cli.options import CONTEXT, cache_option, index_option, json_option
from mitsuke.cli.terminal import printable

__all__ = ["info"]


@click.command(context_settings=CONTEXT)
@index_option
@cache_option
@json_option
def info(index_dir, cache_dir, as_json):
    """Describe an index: counts, model, ANN parameters, generation, file sizes.

    \b
    Example:
      mitsuke info --index idx --json
    """
    from mitsuke.search.searcher import Searcher

    with Searcher.open(index_dir, cache=cache_dir) as s:
        data = s.info()
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=1))
        return
    model = printable(data["model"]["name"]) if data["model"] else "none (lexical-only)"
    ann = data["ann"] or {}
    click.echo(f"index       {printable(data['path'])}")
    click.echo(f"documents   {data['documents']}")
    click.echo(f"chunks      {data['chunks']}")
    click.echo(f"model       {model}" + (f" (dim {data['dim']})" if data["dim"] else ""))
    if ann:
        params = ", ".join(f"{k} {v}" for k, v in ann.items() if k not in ("dim", "metric") and v)
        click.echo(f"ann         {params}")
    tuning = data.get("ann_tuning")
    if tuning:
        verdict = "met" if tuning["met"] else "NOT met"
        low = f", 95% lower bound {tuning['recall_low']:.3f}" if tuning.get("recall_low") is not None else ""
        click.echo(f"ann recall  {tuning['recall']:.3f} mean recall@{tuning['k']}{low} vs exact (target "
                   f"{tuning['target']}: {verdict}) at nprobe {tuning['nprobe']}, rerank pool "
                   f"{tuning['k'] * tuning['candidate_factor']}; p50 {tuning['p50_ms']:.2f} ms; measured on "
                   f"{tuning['queries']} queries at {tuning['vectors']:,} vectors")
        if tuning.get("note"):
            click.echo(f"            {tuning['note']}")
    click.echo(f"generation  {data['generation']}")
    if data["model"]:
        from mitsuke.cli.tune import describe_defaults

        click.echo(f"search      {describe_defaults(data.get('search_defaults'))}")
    if data.get("cache"):
        click.echo(f"cache       {data['cache']}")
    for name, size in data["files"].items():
        click.echo(f"  {name:<18}{size:>12,} bytes")


