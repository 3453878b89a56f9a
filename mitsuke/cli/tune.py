"""``mitsuke tune``: choose an index's hybrid fusion settings on the user's own questions."""
from __future__ import annotations

import json
import logging
from typing import Any

import click

from mitsuke.cli.options import CONTEXT, cache_option, index_option, json_option
from mitsuke.indexer.location import display

__all__ = ["tune", "describe_defaults"]

_METRICS = ("hit@1", "hit@5", "hit@10", "mrr@10", "objective")


def describe_defaults(record: dict[str, Any] | None, *, saved: bool = True) -> str:
    """One line for people: the hybrid settings of ``record`` (a manifest's ``search_defaults``) over mitsuke's."""
    from mitsuke.search.fusion import DEFAULT_SETTINGS, FusionSettings, resolve

    if not record:
        return f"mitsuke's defaults ({DEFAULT_SETTINGS.describe()})"
    s = resolve(FusionSettings.from_dict(record), DEFAULT_SETTINGS)
    tuned = record.get("tuned") or {}
    how = (f" (tuned on {tuned.get('questions')} questions of {tuned.get('queries')}, {tuned.get('date', '')})"
           if tuned else " (saved with the index)" if saved else "")
    return s.describe() + how


def _row(label: str, m: dict[str, float]) -> str:
    return f"{label:<44}" + "".join(f"{m[k]:>9.4f}" for k in _METRICS)


@click.command("tune", context_settings=CONTEXT)
@index_option
@cache_option
@click.option("--queries", required=True, type=click.Path(exists=True, dir_okay=False),
              help="JSONL questions in the format of `mitsuke eval` (question + answer_spans/doc_id or answers).")
@click.option("--folds", type=click.IntRange(min=2, max=100), default=5, show_default=True,
              help="Cross-validation folds.")
@click.option("--save", is_flag=True, help="Store the recommended settings as the index's search defaults.")
@click.option("--top", type=click.IntRange(min=1), default=12, show_default=True, help="Rows of the table.")
@click.option("--device", default="auto", show_default=True, help="Device for the query embeddings.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own Python code to run (as for index).")
@json_option
def tune(index_dir, cache_dir, queries, folds, save, top, device, trust_remote_code, as_json):
    """Choose hybrid fusion settings for an index on your own questions.

    Tries every fusion method (convex, rrf, weighted), weight, RRF constant,
    normalisation and candidate depth (and rerank on/off on IVF-PQ indexes),
    scores span/answer hit@1/5/10 and MRR@10, and estimates by k-fold
    cross-validation whether choosing this way beats the current defaults.
    The recommendation is the current defaults unless tuning wins
    cross-validated. With --save it becomes the index's default for search,
    eval, serve and Searcher.open (their own options still override it);
    `mitsuke info` shows it. Every line of --queries must be usable: a bad
    line stops the command (exit 1) before anything is searched or saved.

    \b
    Examples:
      mitsuke tune --index idx --queries my-questions.jsonl
      mitsuke tune --index idx --queries my-questions.jsonl --save
    """
    import time
    from pathlib import Path

    from mitsuke.search.evaluate import load_queries
    from mitsuke.search.searcher import Searcher
    from mitsuke.search.tune import save_defaults
    from mitsuke.search.tune import tune as run_tune

    log = logging.getLogger("mitsuke")
    level = log.level
    log.setLevel(logging.ERROR)  # bad lines become the one error below, not a warning each
    try:
        qs = load_queries(queries)
    finally:
        log.setLevel(level)
    if qs.problems:
        bad = sum(qs.skipped.values())
        more = f" (and {bad - 1} more bad line{'s' if bad > 2 else ''})" if bad > 1 else ""
        raise click.ClickException(f"{queries}: {qs.problems[0]}{more}; fix or remove the line and run again "
                                   "(`mitsuke eval` lists every bad line)")
    if not qs.queries:
        raise click.ClickException(f"{queries} holds no questions; one JSON object a line, as for `mitsuke eval`")
    with Searcher.open(index_dir, device=device, trust_remote_code=trust_remote_code, cache=cache_dir) as s:
        if not s.has_dense:
            raise click.ClickException(f"index {display(index_dir)} is lexical-only (built with --model none): "
                                       "there is no hybrid fusion to tune")
        report = run_tune(s, qs, folds=folds)
    saved = None
    if save:
        saved = save_defaults(index_dir, report.chosen, {
            "queries": str(Path(queries).resolve()), "questions": report.counts["scored"], "folds": report.folds,
            "date": time.strftime("%Y-%m-%d"), "cv_objective": round(report.cv_tuned["objective"], 4),
            "cv_objective_before": round(report.cv_default["objective"], 4)})
    if as_json:
        click.echo(json.dumps({**report.to_dict(), "saved": saved}, ensure_ascii=False, indent=1))
        return
    c = report.counts
    click.echo(f"{c['scored']} questions scored ({c['span']} by answer span, {c['answer']} by answer text, "
               f"{c['doc']} by document)" + (f"; {c['doc_not_in_index']} name a document not in the index"
                                             if c["doc_not_in_index"] else ""))
    click.echo("")
    click.echo(f"{'setting':<44}" + "".join(f"{h:>9}" for h in ("hit@1", "hit@5", "hit@10", "MRR@10", "mean")))
    click.echo(_row("lexical only", report.lexical))
    click.echo(_row("dense only", report.dense))
    click.echo(_row(f"current: {report.default.describe()}", report.default_metrics))
    for st, m in report.top(top):
        click.echo(_row(st.describe(), m))
    click.echo("")
    click.echo(f"{report.folds}-fold cross-validation, mean of hit@1/5/10 and MRR@10 on held-out questions: "
               f"tuned {report.cv_tuned['objective']:.4f}, current defaults {report.cv_default['objective']:.4f}")
    verdict = "recommended" if report.improved else "kept (tuning did not win cross-validated)"
    click.echo(f"{verdict}: {report.chosen.describe()}")
    click.echo(f"saved as the search defaults of {display(index_dir)}" if saved is not None
               else "run again with --save to make it the index's default")
