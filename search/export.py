"""Documents, chunks and vectors of an index, out as files (``mitsuke docs export``).

``export_index(searcher, out_dir)`` writes, from one consistent snapshot:

- ``documents.jsonl``: one line per document by the JSONL input rule
  (``id``, ``title``, ``source``, ``source_type``, the metadata keys, ``text``),
  so ``mitsuke index out/documents.jsonl`` rebuilds the collection. The index
  keeps chunks, not files: a document's text is its chunks put back at their
  offsets, and the whitespace between two chunks (which no chunk holds)
  becomes line breaks; chunking that text again gives the same chunks;
- ``chunks.jsonl``: ``chunk_id``, ``doc_key``, ``chunk_index``, ``char_start``,
  ``char_end``, ``token_count``, ``headings``, ``text`` (= the document's text
  ``[char_start:char_end]``);
- with a model: ``vectors.npy`` (float16, one row per chunk, in
  ``chunks.jsonl`` order) and ``vector_ids.npy`` (the chunk ids of the rows).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mitsuke.indexer.store import ChunkRow, DocumentRow
    from mitsuke.search.searcher import Searcher

__all__ = ["export_index", "document_text", "document_record"]


def document_text(n_chars: int, chunks: list[ChunkRow]) -> str:
    """A document's text from its chunks: each at its offsets, gaps (whitespace no chunk holds) as line breaks."""
    buf = ["\n"] * n_chars
    for c in chunks:
        buf[c.char_start:c.char_end] = c.text
    return "".join(buf)


def document_record(doc: DocumentRow, chunks: list[ChunkRow]) -> dict[str, Any]:
    """The JSONL line that indexes ``doc`` again under the same key, title, source and metadata."""
    rec: dict[str, Any] = {"id": doc.key, "title": doc.title, "source": doc.source, "source_type": doc.source_type}
    rec.update({k: v for k, v in doc.metadata.items() if k not in rec and k != "text"})
    rec["text"] = document_text(doc.n_chars, chunks)
    return rec


def chunk_record(c: ChunkRow) -> dict[str, Any]:
    rec = {"chunk_id": c.id, "doc_key": c.doc_key, "chunk_index": c.chunk_index, "char_start": c.char_start,
           "char_end": c.char_end, "token_count": c.token_count, "headings": list(c.headings), "text": c.text}
    if c.pages:
        rec["pages"] = list(c.pages)  # [first, last], 1-based (PDF)
    return rec


def export_index(searcher: Searcher, out_dir: str | Path, key_glob: str | None = None) -> dict[str, Any]:
    """Write the files above into ``out_dir`` (created); returns counts and the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = searcher.store
    n_docs = n_chunks = 0
    ids: list[int] = []
    rows: list[int] = []
    files = {"documents": out / "documents.jsonl", "chunks": out / "chunks.jsonl"}
    with store.snapshot() as snap, open(files["documents"], "w", encoding="utf-8") as dfh, \
            open(files["chunks"], "w", encoding="utf-8") as cfh:
        for doc in snap.documents(key_glob):
            by_id = snap.chunk_rows(snap.document_chunk_ids(doc.id))
            chunks = sorted(by_id.values(), key=lambda c: c.chunk_index)
            dfh.write(json.dumps(document_record(doc, chunks), ensure_ascii=False) + "\n")
            for c in chunks:
                cfh.write(json.dumps(chunk_record(c), ensure_ascii=False) + "\n")
                if c.vector_row is not None:
                    ids.append(c.id)
                    rows.append(c.vector_row)
            n_docs += 1
            n_chunks += len(chunks)
        if searcher.vectors is not None:
            searcher.vectors.bind(snap.vectors_epoch())
            vecs = np.zeros((len(rows), searcher.dim), dtype=np.float16)
            order = np.asarray(rows, dtype=np.int64)
            for at, block in searcher.vectors.iter_rows(order):
                vecs[at:at + len(block)] = block
            files["vectors"], files["vector_ids"] = out / "vectors.npy", out / "vector_ids.npy"
            np.save(files["vectors"], vecs)
            np.save(files["vector_ids"], np.asarray(ids, dtype=np.int64))
    return {"documents": n_docs, "chunks": n_chunks, "vectors": len(ids) if searcher.vectors is not None else 0,
            "files": {k: str(v) for k, v in files.items()}}
