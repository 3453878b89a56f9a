"""``mitsuke search``: ranked passages with the query's terms marked in a snippet."""
from __future__ import annotations

import json
import re

import click

from mitsuke.cli.options import (
    CONTEXT,
    MAX_K,
    cache_option,
    fusion_kwargs,
    fusion_options,
    index_option,
    json_option,
    mode_option,
)
from mitsuke.cli.terminal import printable
from mitsuke.search.highlight import normalized_with_map, query_terms

__all__ = ["search"]


@click.command(context_settings=CONTEXT)
@click.argument("query")
@index_option
@cache_option
@click.option("-k", "k", type=click.IntRange(min=1, max=MAX_K), default=10, show_default=True,
              help="Number of passages.")
@mode_option
@click.option("--no-rerank", is_flag=True, help="Keep the ANN order (skip exact cosine over stored vectors).")
@click.option("--where", multiple=True, metavar="KEY=VALUE",
              help="Filter on document metadata or doc_key (glob), title, source_type, source (repeatable, ANDed).")
@click.option("--nprobe", type=click.IntRange(min=1, max=1 << 20), default=None,
              help="IVF cells to visit (default: the manifest's).")
@fusion_options
@click.option("--device", default="auto", show_default=True, help="Device for the query embedding.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own Python code to run (as for index).")
@json_option
def search(query, index_dir, cache_dir, k, mode, no_rerank, where, nprobe, fusion, weights, rrf_k, norm, candidates,
           device, trust_remote_code, as_json):
    """Search --index DIR for QUERY and print ranked passages.

    Each result shows its rank, score, title, document key and character range,
    and a snippet with the query's terms marked; a last line gives the search
    time. --json prints a list of objects with rank, score, doc_key, title,
    text, char_start, char_end, chunk_id, headings, metadata, pages (PDF:
    [first, last]) and the per-leg scores and ranks (a list, as always: the
    time goes to stderr as "mitsuke: N passages in X ms"). A --where key that
    no document has is warned about on stderr, with the keys that exist.

    \b
    Examples:
      mitsuke search "豊岡市の冬の降雪量は?" --index idx
      mitsuke search "清水建設" --index idx --mode lexical -k 3 --json
      mitsuke search "空港" --index idx --where 'doc_key=空*' --where lang=ja
      mitsuke search "更科蕎麦" --index idx --fusion rrf --weights 0.3,1

    Hybrid settings left out come from the index's search defaults (`mitsuke
    tune --save`, shown by `mitsuke info`), else convex tmm 0.2:0.8.
    """
    import time

    from mitsuke.cli.where import warn_unknown_keys
    from mitsuke.search.filters import parse_where
    from mitsuke.search.searcher import Searcher

    if not query.strip():
        raise click.UsageError("the query is empty; give the words to search for, e.g. mitsuke search \"豊岡市の気候\"")
    fk = fusion_kwargs(fusion, weights, rrf_k, norm, candidates)
    filters = parse_where(list(where)) or None
    with Searcher.open(index_dir, device=device, trust_remote_code=trust_remote_code,
                       cache=cache_dir) as s:
        if filters:
            warn_unknown_keys(s, filters)
        if s.has_dense and mode != "lexical":
            s.embedder  # noqa: B018 -- load the model first: the time shown is the search's own
        started = time.perf_counter()
        hits = s.search(query, k=k, mode=mode, rerank=False if no_rerank else None, where=filters, nprobe=nprobe,
                        **fk)
        took_ms = (time.perf_counter() - started) * 1000
    took = f"{len(hits)} passage{'s' if len(hits) != 1 else ''} in {took_ms:.1f} ms"
    if as_json:
        click.echo(json.dumps([h.to_dict(rank=i) for i, h in enumerate(hits, 1)], ensure_ascii=False, indent=1))
        click.echo(f"mitsuke: {took}", err=True)
        return
    if not hits:
        click.echo(f"no results ({took_ms:.1f} ms)")
        return
    marks = query_terms(query)
    for i, h in enumerate(hits, 1):
        heading = printable(" > ".join(h.headings))
        page = "" if not h.pages else f" p.{h.pages[0]}" + (f"-{h.pages[1]}" if h.pages[1] != h.pages[0] else "")
        where = f"  [{printable(h.doc_key)} {h.char_start}:{h.char_end}{page}]"
        click.echo(click.style(f"{i:>2}. {h.score:.4f}  {printable(h.title or h.doc_key)}", bold=True)
                   + where + (f"  {heading}" if heading else ""))
        click.echo("    " + _snippet(printable(h.text), marks))
    click.echo(took)


def _snippet(text: str, marks: list[str], width: int = 160) -> str:
    """``width`` characters around the first marked term, terms highlighted.

    Terms are found in the NFKC + lower-cased text (as BM25 matched them), then
    marked in the original characters, so ｶﾀｶﾅ is marked for a カタカナ query.
    """
    flat = " ".join(text.split())
    norm, starts, ends = normalized_with_map(flat)
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


