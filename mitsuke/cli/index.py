"""``mitsuke index`` and ``mitsuke chunk``: the write side's commands."""
from __future__ import annotations

import json
import sys
import time

import click

from mitsuke.cli.formats import format_config, format_options
from mitsuke.cli.options import CONTEXT, index_option, json_option

__all__ = ["index", "chunk"]


@click.command(context_settings=CONTEXT)
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
@format_options
@json_option
def index(paths, index_dir, model, prune, include, exclude, encoding, max_tokens, max_chars, overlap, ann,
          nlist, batch_docs, compact_min_rows, device, dtype, trust_remote_code, as_json, csv_mode, csv_column,
          pdf_max_pages):
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
    formats = format_config(csv_mode, csv_column, pdf_max_pages)
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
        builder.add_paths(paths, include=include, exclude=exclude, encoding=encoding, formats=formats)
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



@click.command(context_settings=CONTEXT)
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
@format_options
@json_option
def chunk(paths, max_tokens, max_chars, overlap, model, include, exclude, encoding, as_json, csv_mode, csv_column,
          pdf_max_pages):
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
    from mitsuke.indexer.pages import pages_of

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
    formats = format_config(csv_mode, csv_column, pdf_max_pages)
    for item in iter_documents(paths, include=include, exclude=exclude, encoding=encoding, formats=formats):
        if isinstance(item, LoadFailure):
            failed += 1
            click.echo(f"failed: {item.path}: {item.reason}", err=True)
            continue
        for c in chunker.chunk(item.text, markdown=item.has_headings, breaks=item.page_starts):
            if as_json:
                pages = pages_of(item.page_starts, c.char_start, c.char_end)
                click.echo(json.dumps({"doc_key": item.key, **c.to_dict(), **({"pages": list(pages)} if pages else {})},
                                      ensure_ascii=False))
            else:
                head = " > ".join(c.headings)
                click.echo(f"{item.key}#{c.index} [{c.char_start}:{c.char_end}] {c.token_count} "
                           + (f"({head}) " if head else "") + " ".join(c.text.split())[:80])
    if failed:
        sys.exit(1)


