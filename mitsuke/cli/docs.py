"""``mitsuke docs list|show|delete|export``: the documents of an index."""
from __future__ import annotations

import json
import sys

import click

from mitsuke.cli.options import CONTEXT, index_option, json_option
from mitsuke.indexer.location import display

__all__ = ["docs"]


def _width(text: str) -> int:
    """Terminal columns of ``text``: full-width (CJK) characters take two."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(width - _width(text), 0)


def _glob_chars(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


@click.group(context_settings=CONTEXT)
def docs() -> None:
    """List, show, delete and export the documents of an index.

    \b
    Examples:
      mitsuke docs list --index idx
      mitsuke docs show 豊岡市.md --index idx
      mitsuke docs delete 'news/2019-*' --index idx --dry-run
      mitsuke docs export --index idx --out dump/
    """


@docs.command("list", context_settings=CONTEXT)
@click.argument("pattern", required=False)
@index_option
@json_option
def list_cmd(pattern, index_dir, as_json):
    """List documents (all, or keys matching the glob PATTERN): key, title, chunks, characters.

    \b
    Examples:
      mitsuke docs list --index idx
      mitsuke docs list 'news/*' --index idx --json
    """
    from mitsuke.search.searcher import Searcher

    with Searcher.open(index_dir) as s, s.store.snapshot() as snap:
        rows = snap.documents(pattern)
    if as_json:
        click.echo(json.dumps([{"key": d.key, "title": d.title, "chunks": d.chunks, "chars": d.n_chars,
                                "source": d.source, "source_type": d.source_type, "metadata": d.metadata}
                               for d in rows], ensure_ascii=False, indent=1))
        return
    if not rows:
        click.echo("no documents" + (f" match {pattern!r}" if pattern else ""))
        return
    width = min(max(_width(d.key) for d in rows), 40)
    click.echo(_pad("key", width) + f"  {'chunks':>6}  {'chars':>8}  title")
    for d in rows:
        click.echo(_pad(d.key, width) + f"  {d.chunks:>6}  {d.n_chars:>8,}  {d.title}")
    click.echo(f"{len(rows)} document{'s' if len(rows) != 1 else ''}")


@docs.command("show", context_settings=CONTEXT)
@click.argument("key")
@index_option
@click.option("--text", "with_text", is_flag=True, help="Also print the document's text (rebuilt from its chunks).")
@json_option
def show_cmd(key, index_dir, with_text, as_json):
    """Show one document: its fields, metadata and chunks with their character offsets.

    The index stores chunks, not files: the text is the chunks at their
    offsets, with line breaks where only whitespace was between them.

    \b
    Examples:
      mitsuke docs show 豊岡市.md --index idx
      mitsuke docs show 豊岡市.md --index idx --json | jq '.chunks[0]'
    """
    from mitsuke.search.export import chunk_record, document_text
    from mitsuke.search.searcher import Searcher

    with Searcher.open(index_dir) as s, s.store.snapshot() as snap:
        found = [d for d in snap.documents(_escape_glob(key)) if d.key == key]
        if not found:
            raise click.ClickException(f"no document with key {key!r} in {display(index_dir)}; "
                                       "`mitsuke docs list --index DIR` lists the keys")
        doc = found[0]
        chunks = sorted(snap.chunk_rows(snap.document_chunk_ids(doc.id)).values(),
                        key=lambda c: c.chunk_index)
        unit = "tokens" if s.has_dense else "chars"
    text = document_text(doc.n_chars, chunks)
    if as_json:
        click.echo(json.dumps({"key": doc.key, "title": doc.title, "source": doc.source,
                               "source_type": doc.source_type, "encoding": doc.encoding, "chars": doc.n_chars,
                               "metadata": doc.metadata, "text": text,
                               "chunks": [chunk_record(c) for c in chunks]}, ensure_ascii=False, indent=1))
        return
    click.echo(click.style(doc.title or doc.key, bold=True) + f"  [{doc.key}]")
    click.echo(f"source    {doc.source or '-'} ({doc.source_type}, {doc.encoding})")
    click.echo(f"chars     {doc.n_chars:,}")
    for k, v in doc.metadata.items():
        click.echo(f"meta      {k} = {json.dumps(v, ensure_ascii=False)}")
    click.echo(f"chunks    {len(chunks)}")
    for c in chunks:
        head = " > ".join(c.headings)
        pages = getattr(c, "pages", None)
        page = f" p.{pages[0]}" + (f"-{pages[1]}" if pages[1] != pages[0] else "") if pages else ""
        click.echo(f"  #{c.chunk_index} [{c.char_start}:{c.char_end}{page}] {c.token_count} {unit}"
                   + (f"  ({head})" if head else ""))
        click.echo("    " + " ".join(c.text.split()))
    if with_text:
        click.echo("")
        click.echo(text)


def _escape_glob(key: str) -> str:
    """A GLOB pattern matching exactly ``key`` (``*?[`` bracketed)."""
    return "".join(f"[{ch}]" if ch in "*?[" else ch for ch in key)


@docs.command("delete", context_settings=CONTEXT)
@click.argument("keys", nargs=-1, required=True)
@index_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Print what would be deleted; delete nothing.")
@json_option
def delete_cmd(keys, index_dir, yes, dry_run, as_json):
    """Delete documents by KEY or glob (e.g. 'news/*'): their chunks, terms and vectors.

    Asks before deleting unless --yes. A KEY that matches nothing is an error
    (exit 1), and nothing is deleted.

    \b
    Examples:
      mitsuke docs delete 空港.txt --index idx --yes
      mitsuke docs delete 'news/2019-*' --index idx --dry-run
    """
    from mitsuke.indexer.builder import IndexBuilder
    from mitsuke.search.searcher import Searcher

    matched: list[str] = []
    with Searcher.open(index_dir) as s, s.store.snapshot() as snap:
        for k in keys:
            hits = [d.key for d in snap.documents(k if _glob_chars(k) else _escape_glob(k))]
            if not hits:
                raise click.ClickException(f"{k!r} matches no document key in {display(index_dir)}; nothing was "
                                           "deleted (`mitsuke docs list --index DIR` lists the keys)")
            matched += hits
    matched = list(dict.fromkeys(matched))
    if dry_run:
        if as_json:
            click.echo(json.dumps({"dry_run": True, "delete": matched}, ensure_ascii=False))
        else:
            click.echo(f"dry run: would delete {len(matched)} document(s); nothing was changed")
            for k in matched:
                click.echo(f"  delete {k}")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise click.ClickException(f"would delete {len(matched)} document(s); add --yes to confirm "
                                       "when not at a terminal (or --dry-run to list them)")
        preview = ", ".join(matched[:5]) + (" …" if len(matched) > 5 else "")
        click.confirm(f"delete {len(matched)} document(s) ({preview}) from {display(index_dir)}?", abort=True, err=True)
    with IndexBuilder.open(index_dir, load_model=False) as b:
        deleted = b.delete(matched)
    if as_json:
        click.echo(json.dumps({"deleted": deleted, "keys": matched}, ensure_ascii=False))
    else:
        click.echo(f"deleted {deleted} document(s)")


@docs.command("export", context_settings=CONTEXT)
@index_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory to write documents.jsonl, chunks.jsonl (and vectors.npy, vector_ids.npy) into.")
@click.option("--match", "pattern", default=None, metavar="GLOB", help="Only documents whose key matches GLOB.")
@json_option
def export_cmd(index_dir, out_dir, pattern, as_json):
    """Export documents and chunks as JSONL, and vectors as NumPy arrays with their chunk ids.

    documents.jsonl follows the input rule (id, title, source, source_type,
    metadata, text): `mitsuke index OUT/documents.jsonl` rebuilds the
    collection. chunks.jsonl: chunk_id, doc_key, chunk_index, char_start,
    char_end, token_count, headings, text. vectors.npy (float16, a row per
    chunk with a vector, in chunks.jsonl order) and vector_ids.npy (their
    chunk ids) when the index has a model.

    \b
    Examples:
      mitsuke docs export --index idx --out dump/
      mitsuke index dump/documents.jsonl --index idx2 --model none
      python -c "import numpy as np; print(np.load('dump/vectors.npy').shape)"
    """
    from mitsuke.search.export import export_index
    from mitsuke.search.searcher import Searcher

    with Searcher.open(index_dir) as s:
        result = export_index(s, out_dir, pattern)
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
        return
    click.echo(f"exported {result['documents']} documents, {result['chunks']} chunks, "
               f"{result['vectors']} vectors to {out_dir}")
