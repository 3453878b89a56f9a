"""The ``mitsuke`` command: index, search, info, eval, chunk."""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path

import click

from indexer import __version__
from indexer.errors import MitsukeError

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
@click.option("--device", default="auto", show_default=True, help="Embedding device: auto, cpu, cuda, cuda:1...")
@click.option("--dtype", default="auto", show_default=True,
              help="Embedding dtype: auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16.")
@click.option("--trust-remote-code", is_flag=True, help="Allow a model's own Python code to run (off by default).")
@json_option
def index(paths, index_dir, model, prune, include, exclude, encoding, max_tokens, max_chars, overlap, ann,
          device, dtype, trust_remote_code, as_json):
    """Index files, directories (recursive) or '-' (JSONL on stdin) into --index DIR.

    Unchanged documents are skipped, changed ones replaced; re-running after an
    interruption resumes without re-embedding what was committed.

    \b
    Examples:
      mitsuke index data/ --index idx --model none
      mitsuke index docs/ notes.md --index idx --model ./sarashina --dtype bfloat16
      cat dump.jsonl | mitsuke index - --index idx --model none --json
    """
    from indexer.builder import IndexBuilder
    from indexer.config import AnnConfig, ChunkConfig, EmbedConfig

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
    builder = IndexBuilder.open(index_dir, model, chunking=chunking, ann=AnnConfig(kind=ann) if ann else None,
                                embed=embed)
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
              help="Filter on document metadata or doc_key (glob), title, source_type (repeatable, ANDed).")
@click.option("--nprobe", type=click.IntRange(min=1), default=None, help="IVF cells to visit (default: the manifest's).")
@click.option("--fusion", type=click.Choice(["rrf", "weighted"]), default="rrf", show_default=True,
              help="How hybrid mode combines dense and lexical ranks.")
@click.option("--device", default="auto", show_default=True, help="Device for the query embedding.")
@json_option
def search(query, index_dir, k, mode, no_rerank, where, nprobe, fusion, device, as_json):
    """Search --index DIR for QUERY and print ranked passages.

    \b
    Examples:
      mitsuke search "豊岡市の冬の降雪量は?" --index idx
      mitsuke search "清水建設" --index idx --mode lexical -k 3 --json
      mitsuke search "空港" --index idx --where doc_key='空*'
    """
    from search.filters import parse_where
    from search.searcher import Searcher

    with Searcher.open(index_dir, device=device) as s:
        hits = s.search(query, k=k, mode=mode, rerank=not no_rerank, where=parse_where(list(where)) or None,
                        nprobe=nprobe, fusion=fusion)
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
    from indexer.japanese import lexical_terms

    return sorted({t for t in lexical_terms(query) if len(t) > 1 or not t.isascii()}, key=len, reverse=True)


def _snippet(text: str, marks: list[str], width: int = 160) -> str:
    flat = " ".join(text.split())
    first = min((m.start() for t in marks for m in [re.search(re.escape(t), flat, re.I)] if m), default=0)
    start = max(0, first - width // 3)
    snip = ("…" if start else "") + flat[start:start + width] + ("…" if start + width < len(flat) else "")
    if marks:
        pattern = re.compile("|".join(re.escape(t) for t in marks), re.I)
        snip = pattern.sub(lambda m: click.style(m.group(0), fg="yellow", bold=True), snip)
    return snip


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
    from search.searcher import Searcher

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
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N usable questions.")
@click.option("--per-query", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write per-question results (JSONL) to this file for error analysis.")
@json_option
def eval_cmd(index_dir, queries, ks, mode, no_rerank, limit, per_query, as_json):
    """Score retrieval on a QA set: span/answer/document hit@k, MRR@10, nDCG@10, latency.

    \b
    Example:
      mitsuke eval --index idx --queries ../shared/eval/jsquad-dev/queries.jsonl -k 1,5,10 --mode lexical
    """
    from search.evaluate import evaluate, load_queries
    from search.searcher import Searcher

    try:
        cutoffs = [int(x) for x in ks.split(",") if x.strip()]
    except ValueError:
        raise click.UsageError(f"-k {ks!r}: expected comma-separated integers such as 1,5,10") from None
    qs, skipped = load_queries(queries)
    if limit:
        qs = qs[:limit]
    with Searcher.open(index_dir) as s:
        report = evaluate(s, qs, cutoffs, skipped=skipped, per_query=bool(per_query), mode=mode,
                          rerank=not no_rerank)
    if per_query:
        with open(per_query, "w", encoding="utf-8") as fh:
            for row in report.per_query:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=1))
        return
    click.echo(f"{report.n_queries} questions scored; skipped: {report.skipped or 'none'}")
    for key, value in report.metrics.items():
        click.echo(f"  {key:<16}{value:>10.4f}")


# --------------------------------------------------------------------------- chunk

@cli.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True)
@click.option("--max-tokens", type=int, default=None, help="Budget in model tokens (with --model).")
@click.option("--max-chars", type=int, default=None, help="Budget in characters (with --model none).")
@click.option("--overlap", type=int, default=0, show_default=True, help="Overlap, same unit as the budget.")
@click.option("--model", default="none", show_default=True,
              help="Count tokens with this model's tokenizer; 'none' counts characters.")
@click.option("--encoding", default=None, help="Force a text encoding.")
@json_option
def chunk(paths, max_tokens, max_chars, overlap, model, encoding, as_json):
    """Preview chunking without building an index (one JSON object per line with --json).

    \b
    Example:
      mitsuke chunk data/豊岡市.md --max-chars 200 --json
    """
    from indexer.chunking import Chunker
    from indexer.config import ChunkConfig
    from indexer.loaders import LoadFailure, iter_documents

    base = ChunkConfig()
    try:
        config = ChunkConfig(max_tokens=max_tokens or base.max_tokens, max_chars=max_chars or base.max_chars,
                             overlap=overlap)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    counter = None
    if model.lower() != "none":
        from transformers import AutoTokenizer

        from indexer.embedding import resolve_model_dir

        root, _ = resolve_model_dir(model)
        tok = AutoTokenizer.from_pretrained(root)
        counter = lambda texts: [len(x) for x in tok(list(texts), add_special_tokens=False)["input_ids"]]  # noqa: E731
    chunker = Chunker(config, counter)
    failed = 0
    for item in iter_documents(paths, encoding=encoding):
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


def main() -> None:
    cli(prog_name="mitsuke")


if __name__ == "__main__":
    main()
