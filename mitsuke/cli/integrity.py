"""``mitsuke verify`` and ``mitsuke repair``: check an index fully, fix what can be re-derived."""
from __future__ import annotations

import json
import sys

import click

from mitsuke.cli.options import CONTEXT, index_option, json_option
from mitsuke.cli.terminal import printable

__all__ = ["verify", "repair"]


@click.command(context_settings=CONTEXT)
@index_option
@json_option
def verify(index_dir, as_json):
    """Check every file of --index DIR: SQLite quick_check, checksums, ids across files, vectors.

    Prints one line per problem and exits 1 if there is any (0: healthy).
    Reads the whole index; never writes.

    \b
    Example:
      mitsuke verify --index idx
    """
    from mitsuke.indexer.verify import verify_index

    problems = verify_index(index_dir)
    if as_json:
        click.echo(json.dumps({"ok": not problems, "problems": [
            {"file": p.file, "problem": p.problem, "derived": p.derived} for p in problems]}, ensure_ascii=False))
    elif not problems:
        click.echo(f"{printable(index_dir)}: ok")
    for p in problems if not as_json else ():
        click.echo(printable(str(p)), err=True)
    if problems:
        sys.exit(1)


@click.command(context_settings=CONTEXT)
@index_option
@click.option("--device", default="auto", show_default=True, help="Device for embedding lost vectors again.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own Python code to run (off by default).")
@json_option
def repair(index_dir, device, trust_remote_code, as_json):
    """Rebuild what --index DIR can re-derive; report the rest.

    ann.faiss is rebuilt from the stored vectors; vectors that are missing or
    damaged are moved aside (the damaged file is kept) and embedded again from
    the stored text when the index's model is available, else their documents
    are marked so the next `mitsuke index` embeds them. A damaged meta.sqlite or
    manifest is reported, never recreated. Exits 1 if problems remain.

    \b
    Example:
      mitsuke repair --index idx
    """
    from mitsuke.indexer.verify import repair_index

    report = repair_index(index_dir, device=device, trust_remote_code=trust_remote_code)
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        if report.lost_chunks:
            click.echo(f"{report.lost_chunks} chunks had lost or damaged vectors"
                       + (f"; damaged file kept as {printable(report.kept_damaged_file)}"
                          if report.kept_damaged_file else ""))
        if report.reembedded:
            click.echo(f"embedded {report.reembedded} chunks again from their stored text")
        if report.marked_documents:
            click.echo(f"{report.marked_documents} documents still lack vectors: the model could not be loaded "
                       f"({printable(report.model_error or '')}); the next `mitsuke index` of them embeds them")
        if report.ann_rebuilt:
            click.echo("rebuilt ann.faiss from the stored vectors")
        if not report.remaining:
            click.echo(f"{printable(index_dir)}: ok")
        for p in report.remaining:
            click.echo(printable(str(p)), err=True)
    if report.remaining:
        sys.exit(1)
