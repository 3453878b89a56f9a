"""The body of ``mitsuke index``: checks, plan, --dry-run, progress, summary and exit status.

Order of a run, so that a refusal changes nothing:

1. every input path is checked (missing, unreadable); all of them bad is an
   error before any directory is made; one of them bad refuses ``--prune``;
2. a plan (``indexer.plan``): the inputs' content hashes against the index's,
   read-only, no model. ``--prune`` with no documents found is refused here;
   ``--dry-run`` prints the plan and stops;
3. the builder opens (loads the model), counts the tokens it will embed
   (the progress total), prints an estimate, indexes, prunes, commits.

Standard input (``-``) can be read once only: it skips step 2 and the totals,
and ``--prune`` is then checked after reading (nothing was added if it is
refused).
"""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from typing import Any

import click

from mitsuke.cli.inputs import refuse_if_nothing_readable, report_failures, report_ignored, unreadable_inputs
from mitsuke.cli.options import EXIT_PARTIAL

__all__ = ["run_index"]


def _refuse_prune(reason: str) -> None:
    raise click.ClickException(f"refusing --prune: {reason}; nothing was changed. Fix the input(s), or add "
                               "--force to prune anyway")


def run_index(paths: tuple[str, ...], index_dir: str, model: str | None, *, prune: bool, force: bool,
              dry_run: bool, include: tuple[str, ...], exclude: tuple[str, ...], encoding: str | None,
              formats: Any, chunking: Any, ann: Any, embed: Any, builder_options: dict[str, Any], quiet: bool,
              progress_interval: float, as_json: bool, ray: dict[str, Any] | None = None) -> None:
    from mitsuke.cli.progress import Progress, format_duration, guess_tokens_per_second
    from mitsuke.indexer.builder import IndexBuilder
    from mitsuke.indexer.documents import Document
    from mitsuke.indexer.loaders import iter_documents
    from mitsuke.indexer.plan import embedding_token_counter, indexed_hashes, plan_run

    started = time.monotonic()
    bad = unreadable_inputs(paths)
    refuse_if_nothing_readable(paths, bad)
    if prune and bad and not force:
        p, reason = bad[0]
        _refuse_prune(f"input {p}: {reason}; pruning now would delete every document indexed from it")

    ignored: Counter[str] = Counter()

    def documents(count_ignored: bool = False):
        return iter_documents(paths, include=include, exclude=exclude, encoding=encoding, formats=formats,
                              ignored=ignored if count_ignored else None)

    plan = None
    if "-" not in paths or dry_run:
        known = indexed_hashes(index_dir)
        plan = plan_run(documents(count_ignored=True), known, prune=prune)
        report_ignored(ignored, include)
        if prune and not force and plan.documents == 0 and known:
            _refuse_prune(f"the inputs yielded no documents ({_why_empty(include, plan)}); pruning would "
                          f"delete all {len(known)} indexed documents")
    if dry_run:
        assert plan is not None  # planned above whenever dry_run is set
        _print_plan(plan, as_json)
        if plan.failed:
            sys.exit(EXIT_PARTIAL)
        return

    builder = IndexBuilder.open(index_dir, model, chunking=chunking, ann=ann, embed=embed, **builder_options)
    with builder:
        e = builder.embedder
        if e is not None and not quiet:
            attn = getattr(e.model.config, "_attn_implementation", None) or "default"
            click.echo(f"embedding with {e.info.name} on {e.device} ({e.dtype_name}, {attn} attention, "
                       f"batches of up to {e.batch_tokens} tokens)", err=True)
        tokens = None
        counter = embedding_token_counter(builder)
        if plan is not None and counter is not None and e is not None and not quiet and (plan.add or plan.update):
            wanted = set(plan.add) | set(plan.update)
            tokens = sum(counter(d) for d in documents() if isinstance(d, Document) and d.key in wanted)
            rate = guess_tokens_per_second(e)
            click.echo(f"to embed: ~{tokens:,} tokens in {len(wanted):,} documents at ~{rate:,.0f} tokens/s "
                       f"(a guess for this model on {e.device.type}) ≈ {format_duration(tokens / rate)}", err=True)
        progress = None
        if not quiet:
            progress = Progress(documents=plan.documents if plan else None, tokens=tokens,
                                interval=progress_interval)
            builder.on_progress = progress
        try:
            if ray is not None:  # mitsuke index --ray: mitsuke.indexer.distributed loads, chunks and embeds
                from mitsuke.indexer.distributed import index_with_ray

                index_with_ray(builder, paths, include=include, exclude=exclude, encoding=encoding, formats=formats,
                               **ray)
            else:
                builder.add_documents(documents(count_ignored=plan is None))
            if plan is None:
                report_ignored(ignored, include)
            if prune:
                s = builder.summary
                if not force and s.added + s.updated + s.unchanged == 0 and s.deleted == 0:
                    _refuse_prune(f"the inputs yielded no documents ({_why_empty(include, None)})")
                builder.prune()
        finally:
            if progress is not None:
                progress.close()
    if builder.salvage.lost_chunks and not as_json:
        lost = builder.salvage
        click.echo(f"{lost.lost_chunks} chunks had lost or damaged vectors: {lost.reembedded} embedded again"
                   + (f"; the damaged file is kept as {lost.kept_as}" if lost.kept_as else ""), err=True)
    _print_summary(builder.summary.to_dict(), time.monotonic() - started, lexical=builder.embedder is None,
                   as_json=as_json)


def _why_empty(include: tuple[str, ...], plan: Any) -> str:
    if plan is not None and plan.failed:
        return f"{len(plan.failed)} failed to load"
    if include:
        return f"--include {' '.join(include)} matched nothing"
    return "no readable files"


def _print_plan(plan: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"dry_run": True, **plan.to_dict()}, ensure_ascii=False))
        return
    click.echo(f"dry run: would add {len(plan.add)}, update {len(plan.update)}, leave {len(plan.unchanged)} "
               f"unchanged, delete {len(plan.delete)}; {len(plan.failed)} failed; nothing was written")
    for verb, keys in (("add", plan.add), ("update", plan.update), ("delete", plan.delete)):
        for key in keys:
            click.echo(f"  {verb:<7}{key}")
    report_failures([{"path": f.path, "reason": f.reason} for f in plan.failed])


def _print_summary(summary: dict[str, Any], seconds: float, *, lexical: bool, as_json: bool) -> None:
    summary["seconds"] = round(seconds, 3)
    failed = summary["failed"]
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
    else:
        chunks = (f"{summary['chunks_added']} chunks indexed (lexical-only)" if lexical
                  else f"{summary['chunks_embedded']} chunks embedded")
        click.echo(f"added {summary['added']}, updated {summary['updated']}, unchanged {summary['unchanged']}, "
                   f"deleted {summary['deleted']}, failed {len(failed)}; {chunks} in {summary['seconds']:.1f} s")
    report_failures(failed)
    if failed:
        click.echo(f"mitsuke: {len(failed)} input(s) failed; the other documents were committed "
                   f"(exit status {EXIT_PARTIAL})", err=True)
        sys.exit(EXIT_PARTIAL)
