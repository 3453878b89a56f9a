"""The ``mitsuke`` command: index, search, info, eval, chunk."""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path

import click

from mitsuke import __version__
from mitsuke.cli_tune import describe_defaults, fusion_kwargs, fusion_options, tune_cmd
from mitsuke.indexer.errors import MitsukeError

__all__ = ["main", "cli"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

index_option = click.option(
    "--index", "index_dir", required=True, envvar="MITSUKE_INDEX", type=click.Path(file_okay=False),
    help="Index directory (env: MITSUKE_INDEX).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines instead of text.")
mode_option = click.option(
    "--mode", type=click.Choice(["hybrid", "dense", "lexical"]), default=None,
    help="hybrid (dense + BM25, default when the index has a model), dense, or lexical (default for --model none).")


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


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="mitsuke")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """mitsuke (見付け): Japanese-first semantic search.

    \b
    Examples:
      mitsuke index data/ --index idx --model none      # lexical-only, no model needed
      mitsuke index data/ --index idx --model ./my-model
      mitsuke search "豊岡市の気候は?" --index idx -k 5
      mitsuke info --index idx
    """
    _setup_logging(verbose)


# --------------------------------------------------------------------------- index

@cli.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True)
@index_option
@click.option("--model", envvar="MITSUKE_MODEL", default=None,
              help="Hub id or local model directory; 'none' for a lexical-only index. Default: the index's own "
                   "model, or sbintuitions/sarashina-embedding-v1-1b for a new index (env: MITSUKE_MODEL).")
@click.option("--prune", is_flag=True, help="Delete indexed documents that are not among this run's inputs.")
@click.option("--include", multiple=True, metavar="GLOB", help="Only files matching GLOB (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching GLOB (repeatable).")
@click.option("--encoding", default=None, help="Force a text encoding (e.g. cp932) instead of detecting it.")
@click.option("--max-tokens", type=int, default=None, help="Chunk budget in model tokens (new index only).")
@click.option("--max-chars", type=int, default=None, help="Chunk budget in characters for --model none (new index only).")
@click.option("--overlap", type=int, default=None, help="Overlap between chunks, same unit as the budget (new index only).")
@click.option("--ann", type=click.Choice(["auto", "flat", "ivfpq"]), default=None,
              help="ANN index kind: auto (flat below 50k vectors, IVF-PQ above), flat or ivfpq.")
@click.option("--nlist", type=click.IntRange(min=1), default=None,
              help="IVF cells for --ann ivfpq (default: derived from the number of vectors, see indexer.ann).")
@click.option("--batch-docs", type=click.IntRange(min=1), default=64, show_default=True,
              help="Documents per commit: progress of an interrupted run survives in steps of this size.")
@click.option("--compact-min-rows", type=click.IntRange(min=0), default=1024, hidden=True,
              help="Dead vector rows needed before compaction (tests lower it).")
@click.option("--device", default="auto", show_default=True, help="Embedding device: auto, cpu, cuda, cuda:1...")
@click.option("--dtype", default="auto", show_default=True,
              help="Embedding dtype: auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16.")
@click.option("--trust-remote-code", is_flag=True, help="Allow a model's own Python code to run (off by default).")
@json_option
def index(paths, index_dir, model, prune, include, exclude, encoding, max_tokens, max_chars, overlap, ann,
          nlist, batch_docs, compact_min_rows, device, dtype, trust_remote_code, as_json):
    """Index files, directories (recursive) or '-' (JSONL on stdin) into --index DIR.

    Unchanged documents are skipped, changed ones replaced; re-running after an
    interruption resumes without re-embedding what was committed.

    \b
    Examples:
      mitsuke index data/ --index idx --model none
      mitsuke index docs/ notes.md --index idx --model ./sarashina --dtype bfloat16
      cat dump.jsonl | mitsuke index - --index idx --model none --json
    """
    from mitsuke.indexer.builder import IndexBuilder
    from mitsuke.indexer.config import AnnConfig, ChunkConfig, EmbedConfig

    chunking = None
    if max_tokens or max_chars or overlap is not None:
        base = ChunkConfig()
        try:
            chunking = ChunkConfig(max_tokens=max_tokens or base.max_tokens, max_chars=max_chars or base.max_chars,
                                   overlap=overlap if overlap is not None else base.overlap)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    embed = EmbedConfig(device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    started = time.monotonic()
    ann_config = AnnConfig(kind=ann or "auto", nlist=nlist) if ann or nlist else None
    builder = IndexBuilder.open(index_dir, model, chunking=chunking, ann=ann_config, embed=embed,
                                batch_docs=batch_docs, compact_min_rows=compact_min_rows)
    if builder.embedder is not None and not as_json:
        e = builder.embedder
        attn = getattr(e.model.config, "_attn_implementation", None) or "default"
        click.echo(f"embedding with {e.info.name} on {e.device} ({e.dtype_name}, {attn} attention, "
                   f"batches of up to {e.batch_tokens} tokens)", err=True)
    bar = _progress(not as_json)
    if bar is not None:
        def on_progress(kind: str, n: int) -> None:
            if kind == "tokens":
                bar.set_postfix_str(f"{_tokens(bar, n)} tokens", refresh=False)
            else:
                bar.update(n)
        builder.on_progress = on_progress
    with builder:
        builder.add_paths(paths, include=include, exclude=exclude, encoding=encoding)
        if prune:
            builder.prune()
    if bar is not None:
        bar.close()
    summary = builder.summary.to_dict()
    summary["seconds"] = round(time.monotonic() - started, 3)
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
    else:
        click.echo(f"added {summary['added']}, updated {summary['updated']}, unchanged {summary['unchanged']}, "
                   f"deleted {summary['deleted']}, failed {len(summary['failed'])}; "
                   f"{summary['chunks_embedded']} chunks embedded in {summary['seconds']:.1f} s")
        for f in summary["failed"]:
            click.echo(f"  failed: {f['path']}: {f['reason']}", err=True)


def _progress(enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(unit="doc", desc="indexing", file=sys.stderr)


def _tokens(bar, n: int) -> str:
    """Tokens embedded so far and the embedding rate, for the progress bar."""
    bar.tokens = getattr(bar, "tokens", 0) + n
    elapsed = bar.format_dict.get("elapsed") or 0
    rate = f", {bar.tokens / elapsed:,.0f} tokens/s" if elapsed > 1 else ""
    return f"{bar.tokens:,}{rate}"


# --------------------------------------------------------------------------- search

@cli.command(context_settings=CONTEXT)
@click.argument("query")
@index_option
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Number of passages.")
@mode_option
@click.option("--no-rerank", is_flag=True, help="Keep the ANN order (skip exact cosine over stored vectors).")
@click.option("--where", multiple=True, metavar="KEY=VALUE",
              help="Filter on document metadata or doc_key (glob), title, source_type, source (repeatable, ANDed).")
@click.option("--nprobe", type=click.IntRange(min=1), default=None, help="IVF cells to visit (default: the manifest's).")
@fusion_options
@click.option("--device", default="auto", show_default=True, help="Device for the query embedding.")
@json_option
def search(query, index_dir, k, mode, no_rerank, where, nprobe, fusion, weights, rrf_k, norm, candidates, device,
           as_json):
    """Search --index DIR for QUERY and print ranked passages.

    Each result shows its rank, score, title, document key and character range,
    and a snippet with the query's terms marked. --json prints a list of
    objects with rank, score, doc_key, title, text, char_start, char_end,
    chunk_id, headings, metadata and the per-leg scores and ranks.

    \b
    Examples:
      mitsuke search "豊岡市の冬の降雪量は?" --index idx
      mitsuke search "清水建設" --index idx --mode lexical -k 3 --json
      mitsuke search "空港" --index idx --where 'doc_key=空*' --where lang=ja
      mitsuke search "更科蕎麦" --index idx --fusion weighted --weights 0.3,1
    """
    from mitsuke.search.filters import parse_where
    from mitsuke.search.searcher import Searcher

    fk = fusion_kwargs(fusion, weights, rrf_k, norm, candidates)
    with Searcher.open(index_dir, device=device) as s:
        hits = s.search(query, k=k, mode=mode, rerank=False if no_rerank else None,
                        where=parse_where(list(where)) or None, nprobe=nprobe, **fk)
    if as_json:
        click.echo(json.dumps([h.to_dict(rank=i) for i, h in enumerate(hits, 1)], ensure_ascii=False, indent=1))
        return
    if not hits:
        click.echo("no results")
        return
    marks = _query_marks(query)
    for i, h in enumerate(hits, 1):
        heading = " > ".join(h.headings)
        click.echo(click.style(f"{i:>2}. {h.score:.4f}  {h.title or h.doc_key}", bold=True)
                   + f"  [{h.doc_key} {h.char_start}:{h.char_end}]" + (f"  {heading}" if heading else ""))
        click.echo("    " + _snippet(h.text, marks))


def _query_marks(query: str) -> list[str]:
    """The query's lexical terms worth marking (single ASCII letters would mark noise), longest first."""
    from mitsuke.indexer.japanese import lexical_terms

    return sorted({t for t in lexical_terms(query) if len(t) > 1 or not t.isascii()}, key=len, reverse=True)


def _normalized_with_map(text: str) -> tuple[str, list[int], list[int]]:
    """NFKC + lower-cased ``text`` and, per character of it, the original [start, end) it came from."""
    import unicodedata

    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for i, ch in enumerate(text):
        n = unicodedata.normalize("NFKC", ch).lower()
        if out and n and unicodedata.combining(n[0]):
            # A half-width ﾞ/ﾟ composes with the kana before it (ｶﾞ → ガ): renormalise the pair.
            merged = unicodedata.normalize("NFKC", out[-1] + n)
            if len(merged) == 1:
                out[-1] = merged
                ends[-1] = i + 1
                continue
        for c in n:
            out.append(c)
            starts.append(i)
            ends.append(i + 1)
    return "".join(out), starts, ends


def _snippet(text: str, marks: list[str], width: int = 160) -> str:
    """``width`` characters around the first marked term, terms highlighted.

    Terms are found in the NFKC + lower-cased text (as BM25 matched them), then
    marked in the original characters, so ｶﾀｶﾅ is marked for a カタカナ query.
    """
    flat = " ".join(text.split())
    norm, starts, ends = _normalized_with_map(flat)
    spans: list[tuple[int, int]] = []
    if marks:
        pattern = re.compile("|".join(re.escape(t) for t in marks))
        for m in pattern.finditer(norm):
            if m.end() > m.start():
                spans.append((starts[m.start()], ends[m.end() - 1]))
    first = spans[0][0] if spans else 0
    start = max(0, first - width // 3)
    stop = min(len(flat), start + width)
    pieces = ["…" if start else ""]
    pos = start
    for a, b in spans:
        a, b = max(a, pos), min(b, stop)
        if a >= b:
            continue
        pieces.append(flat[pos:a])
        pieces.append(click.style(flat[a:b], fg="yellow", bold=True))
        pos = b
    pieces.append(flat[pos:stop])
    pieces.append("…" if stop < len(flat) else "")
    return "".join(pieces)


# --------------------------------------------------------------------------- info

@cli.command(context_settings=CONTEXT)
@index_option
@json_option
def info(index_dir, as_json):
    """Describe an index: counts, model, ANN parameters, generation, file sizes.

    \b
    Example:
      mitsuke info --index idx --json
    """
    from mitsuke.search.searcher import Searcher

    with Searcher.open(index_dir) as s:
        data = s.info()
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=1))
        return
    model = data["model"]["name"] if data["model"] else "none (lexical-only)"
    ann = data["ann"] or {}
    click.echo(f"index       {data['path']}")
    click.echo(f"documents   {data['documents']}")
    click.echo(f"chunks      {data['chunks']}")
    click.echo(f"model       {model}" + (f" (dim {data['dim']})" if data["dim"] else ""))
    if ann:
        params = ", ".join(f"{k} {v}" for k, v in ann.items() if k not in ("dim", "metric") and v)
        click.echo(f"ann         {params}")
    click.echo(f"generation  {data['generation']}")
    if data["model"]:
        click.echo(f"search      {describe_defaults(data.get('search_defaults'))}")
    for name, size in data["files"].items():
        click.echo(f"  {name:<18}{size:>12,} bytes")


# --------------------------------------------------------------------------- eval

@cli.command("eval", context_settings=CONTEXT)
@index_option
@click.option("--queries", required=True, type=click.Path(exists=True, dir_okay=False),
              help="JSONL with question, answers, doc_id, answer_spans (shared/eval format).")
@click.option("-k", "ks", default="1,5,10,20", show_default=True, help="Cut-offs, comma-separated.")
@mode_option
@click.option("--no-rerank", is_flag=True, help="Keep the ANN order.")
@click.option("--nprobe", type=click.IntRange(min=1), default=None, help="IVF cells to visit (default: the manifest's).")
@fusion_options
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N usable questions.")
@click.option("--per-query", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write per-question results (JSONL: ranks of the first hits, top 10) to this file.")
@click.option("--device", default="auto", show_default=True, help="Device for the query embeddings.")
@json_option
def eval_cmd(index_dir, queries, ks, mode, no_rerank, nprobe, fusion, weights, rrf_k, norm, candidates, limit,
             per_query, device, as_json):
    """Score retrieval on a QA set: span/answer/document hit@k, MRR@10, nDCG@10, latency.

    Questions are matched to documents by doc_id = the key they were indexed
    with (a JSONL corpus's doc_id/id). Questions lacking a field are left out of
    the metrics that need it and counted; answer_is_title questions are scored
    apart (document hit only); malformed lines are reported by line number.

    \b
    Example:
      mitsuke index ../shared/eval/jsquad-dev/corpus.jsonl --index jsq --model none
      mitsuke eval --index jsq --queries ../shared/eval/jsquad-dev/queries.jsonl -k 1,5,10 --mode lexical
    """
    from mitsuke.search.evaluate import evaluate, load_queries
    from mitsuke.search.searcher import Searcher

    try:
        cutoffs = [int(x) for x in ks.split(",") if x.strip()]
    except ValueError:
        raise click.UsageError(f"-k {ks!r}: expected comma-separated integers such as 1,5,10") from None
    if not cutoffs or min(cutoffs) < 1:
        raise click.UsageError(f"-k {ks!r}: cut-offs must be integers of at least 1, such as 1,5,10")
    qs = load_queries(queries)
    with Searcher.open(index_dir, device=device) as s:
        report = evaluate(s, qs, cutoffs, mode=mode, rerank=False if no_rerank else None, per_query=bool(per_query),
                          limit=limit, nprobe=nprobe, **fusion_kwargs(fusion, weights, rrf_k, norm, candidates))
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
        used = {k: st[k] for k in ("fusion", "weights", "rrf_k", "norm", "candidates") if k in st}
        lines.insert(3, f"fusion   {describe_defaults(used)}")
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


# --------------------------------------------------------------------------- chunk

@cli.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True)
@click.option("--max-tokens", type=click.IntRange(min=8), default=None,
              help="Budget per chunk: model tokens with --model, characters with --model none "
                   "(default: the ChunkConfig defaults, 256 tokens / 400 characters).")
@click.option("--max-chars", type=click.IntRange(min=8), default=None, hidden=True,
              help="Same as --max-tokens with --model none (the name `mitsuke index` uses).")
@click.option("--overlap", type=click.IntRange(min=0), default=None,
              help="Overlap between consecutive chunks, whole sentences, same unit as the budget (default 0).")
@click.option("--model", default="none", show_default=True, envvar="MITSUKE_CHUNK_MODEL",
              help="Count tokens with this model's tokenizer (hub id or local directory); 'none' counts characters.")
@click.option("--include", multiple=True, metavar="GLOB", help="Only files matching GLOB (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching GLOB (repeatable).")
@click.option("--encoding", default=None, help="Force a text encoding (e.g. cp932) instead of detecting it.")
@json_option
def chunk(paths, max_tokens, max_chars, overlap, model, include, exclude, encoding, as_json):
    """Preview how PATHs would be chunked, without building an index.

    With --json, one object per line: doc_key, chunk_index, char_start,
    char_end, token_count, headings, text (text == document[char_start:char_end]).
    Files that cannot be read are reported on stderr; the exit status is 1 if any.

    \b
    Examples:
      mitsuke chunk data/豊岡市.md --max-tokens 200
      mitsuke chunk docs/ --include '*.md' --json > chunks.jsonl
      mitsuke chunk notes.txt --model ./sarashina --max-tokens 256 --overlap 32
      cat dump.jsonl | mitsuke chunk - --json
    """
    from mitsuke.indexer.chunking import Chunker
    from mitsuke.indexer.config import ChunkConfig
    from mitsuke.indexer.loaders import LoadFailure, iter_documents

    lexical = model.lower() == "none"
    if max_chars is not None and not lexical:
        raise click.UsageError("--max-chars counts characters and only applies with --model none; "
                               "use --max-tokens with a model")
    if max_chars is not None and max_tokens is not None and max_chars != max_tokens:
        raise click.UsageError(f"--max-tokens {max_tokens} and --max-chars {max_chars} disagree; give one")
    base = ChunkConfig()
    budget = max_tokens if max_tokens is not None else max_chars
    budget = budget or (base.max_chars if lexical else base.max_tokens)
    from mitsuke.indexer.embedding import load_token_counter

    counter = None if lexical else load_token_counter(model)
    try:
        # Only one of the two budgets is used (characters without a model); the
        # Chunker checks the overlap against that one.
        config = ChunkConfig(max_tokens=budget, max_chars=budget,
                             overlap=overlap if overlap is not None else base.overlap)
        chunker = Chunker(config, counter)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    failed = 0
    for item in iter_documents(paths, include=include, exclude=exclude, encoding=encoding):
        if isinstance(item, LoadFailure):
            failed += 1
            click.echo(f"failed: {item.path}: {item.reason}", err=True)
            continue
        for c in chunker.chunk(item.text, markdown=item.source_type == "markdown"):
            if as_json:
                click.echo(json.dumps({"doc_key": item.key, **c.to_dict()}, ensure_ascii=False))
            else:
                head = " > ".join(c.headings)
                click.echo(f"{item.key}#{c.index} [{c.char_start}:{c.char_end}] {c.token_count} "
                           + (f"({head}) " if head else "") + " ".join(c.text.split())[:80])
    if failed:
        sys.exit(1)


cli.add_command(tune_cmd)


def main() -> None:
    cli(prog_name="mitsuke")


if __name__ == "__main__":
    main()
