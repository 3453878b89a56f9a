"""``mitsuke tune``, and the hybrid-fusion options that ``search``, ``eval`` and ``tune`` share."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

__all__ = ["fusion_options", "fusion_kwargs", "parse_weights", "tune_cmd", "describe_defaults"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def parse_weights(weights: str | None) -> list[float] | None:
    """``"0.3,1"`` → ``[0.3, 1.0]``; a UsageError naming the option otherwise."""
    if weights is None:
        return None
    try:
        w = [float(x) for x in weights.split(",")]
    except ValueError:
        raise click.UsageError(f"--weights {weights!r}: expected two numbers DENSE,LEXICAL such as 0.3,1") from None
    if len(w) != 2:
        raise click.UsageError(f"--weights {weights!r}: expected two numbers DENSE,LEXICAL such as 0.3,1")
    return w


def fusion_options(f: Callable) -> Callable:
    """--fusion, --weights, --rrf-k, --norm, --candidates (all default to the index's saved defaults)."""
    for opt in reversed([
        click.option("--fusion", type=click.Choice(["convex", "rrf", "weighted"]), default=None,
                     help="How hybrid mode combines the legs: convex (normalised scores, default), rrf "
                          "(reciprocal ranks) or weighted. Default: the index's saved defaults (mitsuke tune "
                          "--save), else convex."),
        click.option("--weights", default=None, metavar="DENSE,LEXICAL",
                     help="Hybrid leg weights, e.g. 0.3,1 to trust BM25 more than a weak model."),
        click.option("--rrf-k", "rrf_k", type=click.IntRange(min=0), default=None,
                     help="RRF constant (score = w / (k + rank); default 60)."),
        click.option("--norm", type=click.Choice(["tmm", "minmax"]), default=None,
                     help="Convex fusion's per-leg normalisation: theoretical-min-max (default) or min-max."),
        click.option("--candidates", type=click.IntRange(min=1), default=None,
                     help="Depth of each leg in hybrid mode / dense candidates rescored exactly (default 10 × k)."),
    ]):
        f = opt(f)
    return f


def fusion_kwargs(fusion, weights, rrf_k, norm, candidates) -> dict[str, Any]:
    return {"fusion": fusion, "weights": parse_weights(weights), "rrf_k": rrf_k, "norm": norm,
            "candidates": candidates}


def describe_defaults(record: dict[str, Any] | None) -> str:
    """The ``search defaults`` line of ``mitsuke info``."""
    from mitsuke.search.fusion import DEFAULT_SETTINGS, FusionSettings, resolve

    if not record:
        return f"mitsuke's ({DEFAULT_SETTINGS.describe()})"
    s = FusionSettings.from_dict(record)
    tuned = record.get("tuned") or {}
    how = (f" (tuned on {tuned.get('questions')} questions of {tuned.get('queries')}, "
           f"{tuned.get('date', '')})" if tuned else "")
    return resolve(s, DEFAULT_SETTINGS).describe() + how


def _row(label: str, m: dict[str, float]) -> str:
    return f"{label:<44}" + "".join(f"{m[k]:>9.4f}" for k in ("hit@1", "hit@5", "hit@10", "mrr@10", "objective"))


@click.command("tune", context_settings=CONTEXT)
@click.option("--index", "index_dir", required=True, envvar="MITSUKE_INDEX", type=click.Path(file_okay=False),
              help="Index directory (env: MITSUKE_INDEX).")
@click.option("--queries", required=True, type=click.Path(exists=True, dir_okay=False),
              help="JSONL questions, the format of `mitsuke eval` (question + answer_spans/doc_id or answers).")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True, help="Cross-validation folds.")
@click.option("--save", is_flag=True, help="Store the recommended settings as the index's search defaults.")
@click.option("--top", type=click.IntRange(min=1), default=12, show_default=True, help="Rows of the table.")
@click.option("--device", default="auto", show_default=True, help="Device for the query embeddings.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines instead of text.")
def tune_cmd(index_dir, queries, folds, save, top, device, as_json):
    """Choose hybrid fusion settings for an index on your own questions.

    Tries every fusion method (convex, rrf, weighted), weight, RRF constant,
    normalisation and candidate depth (and rerank on/off on IVF-PQ indexes),
    scores span/answer hit@1/5/10 and MRR@10, and estimates by k-fold
    cross-validation whether choosing this way beats the current defaults.
    With --save the recommendation becomes the index's default for search,
    eval, serve and Searcher.open (arguments still override it); the
    recommendation is the current defaults unless tuning wins cross-validated.

    \b
    Example:
      mitsuke tune --index idx --queries my-questions.jsonl
      mitsuke tune --index idx --queries my-questions.jsonl --save
    """
    import time
    from pathlib import Path

    from mitsuke.search.evaluate import load_queries
    from mitsuke.search.searcher import Searcher
    from mitsuke.search.tune import save_defaults, tune

    qs = load_queries(queries)
    with Searcher.open(index_dir, device=device) as s:
        if not s.has_dense:
            raise click.ClickException(f"index {index_dir} is lexical-only (built with --model none): there is "
                                       "no fusion to tune")
        report = tune(s, qs, folds=folds)
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
    verdict = "recommended" if report.chosen != report.default else "kept (tuning did not win cross-validated)"
    click.echo(f"{verdict}: {report.chosen.describe()}")
    if saved is not None:
        click.echo(f"saved as the search defaults of {index_dir}")
    else:
        click.echo("run again with --save to make it the index's default")
