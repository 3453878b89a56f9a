"""``mitsuke index`` and ``mitsuke chunk``: the write side's commands."""
from __future__ import annotations

import json
import sys
from collections import Counter

import click

from mitsuke.cli.formats import format_config, format_options
from mitsuke.cli.inputs import refuse_if_nothing_readable, report_ignored, unreadable_inputs
from mitsuke.cli.options import CONTEXT, EXIT_PARTIAL, index_option, json_option

__all__ = ["index", "chunk"]


@click.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True)
@index_option
@click.option("--model", envvar="MITSUKE_MODEL", default=None,
              help="Hub id or local model directory; 'none' for a lexical-only index. Default: the index's own "
                   "model, or sbintuitions/sarashina-embedding-v1-1b for a new index (env: MITSUKE_MODEL).")
@click.option("--prune", is_flag=True,
              help="Delete indexed documents that are not among this run's inputs. Refused when an input path is "
                   "missing or unreadable, or the inputs yield no documents (see --force).")
@click.option("--force", is_flag=True, help="With --prune: prune even when an input is missing or yields nothing.")
@click.option("--dry-run", is_flag=True,
              help="Print what would be added, updated and deleted (content hashes against the index); "
                   "write nothing, load no model.")
@click.option("--include", multiple=True, metavar="GLOB", help="Only files matching GLOB (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching GLOB (repeatable).")
@click.option("--encoding", default=None, help="Force a text encoding (e.g. cp932) instead of detecting it.")
@click.option("--max-tokens", type=int, default=None, help="Chunk budget in model tokens (new index only).")
@click.option("--max-chars", type=int, default=None,
              help="Chunk budget in characters for --model none (new index only).")
@click.option("--overlap", type=int, default=None,
              help="Overlap between chunks, same unit as the budget (new index only).")
@click.option("--ann", type=click.Choice(["auto", "flat", "ivfpq"]), default=None,
              help="ANN index kind: auto (flat below 50k vectors, IVF-PQ above), flat or ivfpq.")
@click.option("--nlist", type=click.IntRange(min=1), default=None,
              help="IVF cells for --ann ivfpq (default: derived from the number of vectors, see indexer.ann).")
@click.option("--pq-bits", type=click.Choice(["4", "8"]), default=None,
              help="IVF-PQ code bits: 8 (IndexIVFPQ, GPU-ready) or 4 (SIMD fast-scan on CPUs; "
                   "a GPU reader converts).")
@click.option("--recall-target", type=click.FloatRange(min=0, max=1, min_open=True), default=None,
              help="Mean recall@10 (vs exact search) that the measured IVF-PQ nprobe / rerank pool must reach "
                   "[default: 0.97, kept with the index].")
@click.option("--batch-docs", type=click.IntRange(min=1), default=64, show_default=True,
              help="Documents per commit: progress of an interrupted run survives in steps of this size.")
@click.option("--compact-min-rows", type=click.IntRange(min=0), default=1024, hidden=True,
              help="Dead vector rows needed before compaction (tests lower it).")
@click.option("--device", default="auto", show_default=True, help="Embedding device: auto, cpu, cuda, cuda:1...")
@click.option("--dtype", default="auto", show_default=True,
              help="Embedding dtype: auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16.")
@click.option("--trust-remote-code", is_flag=True, help="Allow a model's own Python code to run (off by default).")
@click.option("-q", "--quiet", is_flag=True, help="No progress, no estimate: only the summary, warnings and failures.")
@click.option("--progress-interval", type=click.FloatRange(min=0), default=10.0, show_default=True,
              envvar="MITSUKE_PROGRESS_INTERVAL", metavar="SECONDS",
              help="When stderr is not a terminal: a progress line with ETA every SECONDS "
                   "(env: MITSUKE_PROGRESS_INTERVAL).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Index on Ray (pip install 'mitsuke[ray]'): alone, a local cluster on 127.0.0.1 using all GPUs "
                   "or CPUs; with host:port, join that cluster. Put it after the paths, or write --ray=ADDRESS.")
@click.option("--actors", type=click.IntRange(min=1), default=None,
              help="With --ray: embedding actors (default: one per GPU, else one CPU actor).")
@format_options
@json_option
def index(paths, index_dir, model, prune, force, dry_run, include, exclude, encoding, max_tokens, max_chars,
          overlap, ann, nlist, pq_bits, recall_target, batch_docs, compact_min_rows, device, dtype, trust_remote_code,
          quiet, progress_interval, ray_address, actors, as_json, csv_mode, csv_column, pdf_max_pages):
    """Index files, directories (recursive) or '-' (JSONL on stdin) into --index DIR.

    Unchanged documents are skipped, changed ones replaced; re-running after an
    interruption resumes without re-embedding what was committed.

    Exit status: 0 all inputs indexed; 3 some inputs failed (listed on stderr;
    the others are committed); 1 an error (nothing changed, e.g. --prune
    refused); 2 a usage error.

    \b
    Examples:
      mitsuke index data/ --index idx --model none
      mitsuke index docs/ notes.md --index idx --model ./sarashina --dtype bfloat16
      mitsuke index docs/ --index idx --prune --dry-run      # what would change
      cat dump.jsonl | mitsuke index - --index idx --model none --json
      mitsuke index corpus/ --index idx --model ./sarashina --ray          # every GPU of this machine
      mitsuke index corpus/ --index idx --ray=10.0.0.5:6379 --actors 16    # join a Ray cluster
    """
    from mitsuke.cli.indexrun import run_index
    from mitsuke.indexer.config import AnnConfig, ChunkConfig, EmbedConfig

    chunking = None
    if max_tokens or max_chars or overlap is not None:
        base = ChunkConfig()
        try:
            chunking = ChunkConfig(max_tokens=max_tokens or base.max_tokens, max_chars=max_chars or base.max_chars,
                                   overlap=overlap if overlap is not None else base.overlap)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    if force and not prune:
        raise click.UsageError("--force only applies to --prune")
    if actors is not None and ray_address is None:
        raise click.UsageError("--actors sets the size of the Ray actor pool: add --ray")
    formats = format_config(csv_mode, csv_column, pdf_max_pages)
    ann_config = (AnnConfig(kind=ann or "auto", nlist=nlist, nbits=int(pq_bits) if pq_bits else None)
                  if ann or nlist or pq_bits else None)
    run_index(
        paths, index_dir, model, prune=prune, force=force, dry_run=dry_run, include=include, exclude=exclude,
        encoding=encoding, formats=formats, chunking=chunking, ann=ann_config,
        # With --ray the driver only describes the model: its copy stays on the CPU, off the GPUs.
        embed=EmbedConfig(device="cpu" if ray_address else device, dtype="float32" if ray_address else dtype,
                          trust_remote_code=trust_remote_code),
        builder_options={"batch_docs": batch_docs, "compact_min_rows": compact_min_rows,
                         "recall_target": recall_target},
        quiet=quiet, progress_interval=progress_interval, as_json=as_json,
        ray={"address": None if ray_address == "local" else ray_address, "actors": actors, "device": device,
             "dtype": dtype, "trust_remote_code": trust_remote_code} if ray_address else None)


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
    Files that cannot be read are reported on stderr; the exit status is then 3
    (as for `mitsuke index`); 1 when no input path exists at all.

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
    bad = unreadable_inputs(paths)
    refuse_if_nothing_readable(paths, bad)
    failed = 0
    formats = format_config(csv_mode, csv_column, pdf_max_pages)
    ignored: Counter[str] = Counter()
    for item in iter_documents(paths, include=include, exclude=exclude, encoding=encoding, formats=formats,
                               ignored=ignored):
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
    report_ignored(ignored, include)
    if failed:
        click.echo(f"mitsuke: {failed} input(s) failed (exit status {EXIT_PARTIAL})", err=True)
        sys.exit(EXIT_PARTIAL)


