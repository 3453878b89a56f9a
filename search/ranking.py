"""From the legs' hits to results: the ranking a mode asks for (fused in hybrid mode), then ``Passage`` objects."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mitsuke.indexer.store import ChunkRow, Snapshot
from mitsuke.indexer.store.schema import frozen_row
from mitsuke.indexer.vectors import VectorStore
from mitsuke.search.dense import cosines
from mitsuke.search.fusion import fuse
from mitsuke.search.results import Passage
from mitsuke.search.rowmap import RowMap

if TYPE_CHECKING:
    from mitsuke.search.request import Request

__all__ = ["rank", "make_passages"]

Hits = list[tuple[int, float]]


def rank(snap: Snapshot, vectors: VectorStore | None, rowmap: RowMap | None, req: Request, qvec: np.ndarray | None,
         dense: Hits, lexical: Hits) -> tuple[Hits, dict[int, float]]:
    """The ranking ``req.mode`` asks for, and the exact cosines of lexical-only hybrid candidates."""
    if req.mode == "dense":
        return dense, {}
    if req.mode == "lexical":
        return lexical, {}
    # Lexical-only candidates get their exact cosine too: the score fusions
    # (convex, weighted) need it, and the Passage reports it.
    assert qvec is not None and vectors is not None
    have = {c for c, _ in dense}
    extra = cosines(snap, vectors, qvec, [c for c, _ in lexical if c not in have], rowmap)
    dense_all = dense + sorted(extra.items(), key=lambda x: (-x[1], x[0]))
    return fuse(dense if req.fusion == "rrf" else dense_all, lexical, req.fusion, req.weights,
                rrf_k=req.rrf_k, norm=req.norm), extra


def make_passages(rows: dict[int, ChunkRow], ranked: Hits, dense: Hits, lexical: Hits,
                  extra_dense: dict[int, float] | None = None, matches: dict[int, str] | None = None
                  ) -> list[Passage]:
    """One ``Passage`` per ranked chunk that ``rows`` holds (a chunk deleted since the ANN snapshot has none).

    Built by ``frozen_row`` (every field named): a search makes k of them.
    """
    d_rank = {c: (r, s) for r, (c, s) in enumerate(dense, 1)}
    l_rank = {c: (r, s) for r, (c, s) in enumerate(lexical, 1)} if lexical else {}
    extra_dense = extra_dense or {}
    matches = matches or {}
    out = []
    for cid, score in ranked:
        row = rows.get(cid)
        if row is None:  # deleted by a writer after the ANN snapshot
            continue
        d = d_rank.get(cid)
        lx = l_rank.get(cid)
        out.append(frozen_row(Passage, {
            "chunk_id": cid, "doc_key": row.doc_key, "title": row.title, "text": row.text, "score": float(score),
            "char_start": row.char_start, "char_end": row.char_end, "headings": row.headings,
            "metadata": row.metadata, "chunk_index": row.chunk_index, "source": row.source,
            "dense_score": d[1] if d else extra_dense.get(cid), "lexical_score": lx[1] if lx else None,
            "dense_rank": d[0] if d else None, "lexical_rank": lx[0] if lx else None, "pages": row.pages,
            "lexical_match": matches.get(cid) if lx else None,
        }))
    return out
