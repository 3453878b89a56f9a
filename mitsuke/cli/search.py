"""``mitsuke search``: ranked passages with the query's terms marked in a snippet."""
from __future__ import annotations

import json
import re

import click

from mitsuke.cli.options import CONTEXT, cache_option, index_option, json_option, mode_option

__all__ = ["search"]


@click.command(context_settings=CONTEXT)
@click.argument("query")
@index_option
@cache_option
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Number of passages.")
@mode_option
@click.option("--no-rerank", is_flag=True, help="Keep the ANN order (skip exact cosine over stored vectors).")
@click.option("--where", multiple=True, metavar="KEY=VALUE",
              help="Filter on document metadata or doc_key (glob), title, source_type, source (repeatable, ANDed).")
@click.option("--candidates", type=click.IntRange(min=1), default=None,
              help="Dense candidates rescored exactly / per leg in hybrid mode (default: 10 × k).")
@click.option("--nprobe", type=click.IntRange(min=1), default=None, help="IVF cells to visit (default: the manifest's).")
@click.option("--fusion", type=click.Choice(["rrf", "weighted"]), default="rrf", show_default=True,
              help="How hybrid mode combines dense and lexical results: reciprocal ranks or normalised scores.")
@click.option("--weights", default=None, metavar="DENSE,LEXICAL",
              help="Hybrid leg weights, e.g. 0.3,1 to trust BM25 more than a weak model (default 1,1).")
@click.option("--device", default="auto", show_default=True, help="Device for the query embedding.")
@json_option
def search(query, index_dir, cache_dir, k, mode, no_rerank, where, candidates, nprobe, fusion, weights, device, as_json):
    """Search --index DIR for QUERY and print ranked passages.

    Each result shows its rank, score, title, document key and character range,
    and a snippet with the query's terms marked. --json prints a list of
    objects with rank, score, doc_key, title, text, char_start, char_end,
    chunk_id, headings, metadata, pages (PDF: [first, last]) and the per-leg scores and ranks.

    \b
    Examples:
      mitsuke search "豊岡市の冬の降雪量は?" --index idx
      mitsuke search "清水建設" --index idx --mode lexical -k 3 --json
      mitsuke search "空港" --index idx --where 'doc_key=空*' --where lang=ja
      mitsuke search "更科蕎麦" --index idx --fusion weighted --weights 0.3,1
    """
    from mitsuke.search.filters import parse_where
    from mitsuke.search.searcher import Searcher

    w = None
    if weights is not None:
        try:
            w = [float(x) for x in weights.split(",")]
        except ValueError:
            raise click.UsageError(f"--weights {weights!r}: expected two numbers DENSE,LEXICAL such as 0.3,1") from None
    with Searcher.open(index_dir, device=device, cache=cache_dir) as s:
        hits = s.search(query, k=k, mode=mode, rerank=not no_rerank, where=parse_where(list(where)) or None,
                        candidates=candidates, nprobe=nprobe, fusion=fusion, weights=w)
    if as_json:
        click.echo(json.dumps([h.to_dict(rank=i) for i, h in enumerate(hits, 1)], ensure_ascii=False, indent=1))
        return
    if not hits:
        click.echo("no results")
        return
    marks = _query_marks(query)
    for i, h in enumerate(hits, 1):
        heading = " > ".join(h.headings)
        page = "" if not h.pages else f" p.{h.pages[0]}" + (f"-{h.pages[1]}" if h.pages[1] != h.pages[0] else "")
        click.echo(click.style(f"{i:>2}. {h.score:.4f}  {h.title or h.doc_key}", bold=True)
                   + f"  [{h.doc_key} {h.char_start}:{h.char_end}{page}]" + (f"  {heading}" if heading else ""))
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


