"""``mitsuke eval``: retrieval metrics on a QA set, as a table or JSON."""
from __future__ import annotations

import json

import click

from mitsuke.cli.options import (
    CONTEXT,
    cache_option,
    fusion_kwargs,
    fusion_options,
    index_option,
    json_option,
    mode_option,
)

__all__ = ["eval_cmd"]


@click.command("eval", context_settings=CONTEXT)
@index_option
@cache_option
@click.option("--queries", required=True, type=click.Path(exists=True, dir_okay=False),
              help="JSONL, one question a line: question, answers, doc_id, answer_spans "
                   "(README \"Measure it on your data\").")
@click.option("-k", "ks", default="1,5,10,20", show_default=True, help="Cut-offs, comma-separated.")
@mode_option
@click.option("--no-rerank", is_flag=True, help="Keep the ANN order.")
@click.option("--nprobe", type=click.IntRange(min=1), default=None,
              help="IVF cells to visit (default: the manifest's).")
@fusion_options
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N usable questions.")
@click.option("--per-query", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write per-question results (JSONL: ranks of the first hits, top 10) to this file.")
@click.option("--device", default="auto", show_default=True, help="Device for the query embeddings.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own Python code to run (as for index).")
@json_option
def eval_cmd(index_dir, cache_dir, queries, ks, mode, no_rerank, nprobe, fusion, weights, rrf_k, norm, candidates,
             limit, per_query, device, trust_remote_code, as_json):
    """Score retrieval on a QA set: span/answer/document hit@k, MRR@10, nDCG@10, latency.

    Questions are matched to documents by doc_id = the key they were indexed
    with (a JSONL corpus's doc_id/id). Questions lacking a field are left out of
    the metrics that need it and counted; answer_is_title questions are scored
    apart (document hit only); malformed lines are reported by line number.

    A question line (answer_spans: [start, end) character offsets into the
    document indexed under doc_id):

    \b
      {"qid": "1", "question": "豊岡市の年間平均降雪量は？", "answers": ["312cm"],
       "doc_id": "豊岡市.md", "answer_spans": [[323, 328]]}

    \b
    Example:
      mitsuke index data --index demo-idx --model none
      mitsuke eval --index demo-idx --queries questions.jsonl -k 1,5,10 --mode lexical
      mitsuke eval --index idx --queries questions.jsonl --fusion rrf --weights 0.3,1

    Hybrid settings left out come from the index's search defaults (`mitsuke
    tune --save`), else mitsuke's; the settings used are in the table and JSON.
    """
    from mitsuke.search.evaluate import evaluate, load_queries
    from mitsuke.search.searcher import Searcher

    try:
        cutoffs = [int(x) for x in ks.split(",") if x.strip()]
    except ValueError:
        raise click.UsageError(f"-k {ks!r}: expected comma-separated integers such as 1,5,10") from None
    if not cutoffs or min(cutoffs) < 1:
        raise click.UsageError(f"-k {ks!r}: cut-offs must be integers of at least 1, such as 1,5,10")
    fk = fusion_kwargs(fusion, weights, rrf_k, norm, candidates)
    qs = load_queries(queries)
    with Searcher.open(index_dir, device=device, trust_remote_code=trust_remote_code,
                      cache=cache_dir) as s:
        report = evaluate(s, qs, cutoffs, mode=mode, rerank=False if no_rerank else None, per_query=bool(per_query),
                          limit=limit, nprobe=nprobe, **fk)
    if per_query:
        with open(per_query, "w", encoding="utf-8") as fh:
            for row in report.per_query:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=1))
        return
    for line in _eval_table(report):
        click.echo(line)


def _eval_table(report) -> list[str]:
    """The report as a readable table: one row per family, one column per cut-off."""
    st, c, m = report.settings, report.counts, report.metrics
    rerank = "" if st["rerank"] is None else ("  rerank on" if st["rerank"] else "  rerank off")
    lines = [f"index    {st['index']}  ({st['model'] or 'lexical-only'})",
             f"queries  {st['queries']}: {c['lines']} lines, {c['scored']} scored"
             + (f", {c['title_questions']} answer_is_title scored apart" if c["title_questions"] else ""),
             f"mode     {st['mode']}{rerank}  depth {st['depth']}" + (f"  limit {st['limit']}" if st["limit"] else ""),
             ""]
    if st.get("fusion"):
        from mitsuke.cli.tune import describe_defaults

        used = {k: st[k] for k in ("fusion", "weights", "rrf_k", "norm", "candidates") if k in st}
        lines.insert(3, f"fusion   {describe_defaults(used, saved=False)}")
    ks = st["ks"]
    lines.append(f"{'':<14}{'n':>6}" + "".join(f"{'@' + str(k):>9}" for k in ks))
    for family, label in (("span", "span hit"), ("answer", "answer hit"), ("doc", "doc hit")):
        if c[family]:
            lines.append(f"{label:<14}{c[family]:>6}" + "".join(f"{m[f'{family}_hit@{k}']:>9.4f}" for k in ks))
    if c["span"]:
        lines.append(f"{'MRR@10':<14}{c['span']:>6}{m['mrr@10']:>9.4f}")
        lines.append(f"{'nDCG@10':<14}{c['span']:>6}{m['ndcg@10']:>9.4f}")
    t = report.title_questions
    if t:
        lines.append(f"{'title doc hit':<14}{t['n']:>6}" + "".join(f"{t[f'doc_hit@{k}']:>9.4f}" for k in ks))
    if "latency_p50_ms" in m:
        lines.append(f"latency  p50 {m['latency_p50_ms']:.2f} ms  p95 {m['latency_p95_ms']:.2f} ms")
    if c["span_unreachable"]:
        lines.append(f"span_unreachable {c['span_unreachable']} (no chunk of the document contains an answer span)")
    if report.skipped:
        lines.append("skipped  " + ", ".join(f"{k} {v}" for k, v in sorted(report.skipped.items())))
    lines.extend(f"  {p}" for p in report.problems)
    return lines


