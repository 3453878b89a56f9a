"""The search service behind the HTTP API and the MCP tools: one Searcher, warmed once, micro-batched."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from mitsuke.indexer.errors import MitsukeError, QueryError
from mitsuke.indexer.location import display
from mitsuke.search.highlight import query_terms, term_spans

__all__ = ["SearchService", "NotFound", "NotReady", "rebuild_text"]

log = logging.getLogger("mitsuke")

# The query that warms the model, the ANN index and the tokenizers at start-up.
WARM_QUERY = "検索の準備をしています"


class NotFound(MitsukeError):
    """No such document."""


class NotReady(MitsukeError):
    """The model is still loading (or failed to load)."""


def rebuild_text(n_chars: int, rows) -> tuple[str, list[list[int]]]:
    """A document's text from its chunks (``row.text == document[row.char_start:row.char_end]``).

    Characters no chunk covers (whitespace the chunker left between chunks)
    become newlines; their ranges are returned as gaps, so every offset stays exact.
    """
    pieces: list[str] = []
    gaps: list[list[int]] = []
    pos = 0
    for r in sorted(rows, key=lambda r: (r.char_start, r.char_end)):
        if r.char_end <= pos:
            continue
        if r.char_start > pos:
            gaps.append([pos, r.char_start])
            pieces.append("\n" * (r.char_start - pos))
            pos = r.char_start
        pieces.append(r.text[pos - r.char_start:])
        pos = r.char_end
    if n_chars > pos:
        gaps.append([pos, n_chars])
        pieces.append("\n" * (n_chars - pos))
    return "".join(pieces), gaps


class SearchService:
    """Answers searches, context, documents and info for one index; thread-safe."""

    def __init__(self, index: str | Path, *, device: str = "auto", searcher=None) -> None:
        from mitsuke.search.searcher import Searcher

        self.searcher = searcher if searcher is not None else Searcher.open(index, device=device)
        self.index = display(index)  # a directory as given, a URL without its password
        self.ready = threading.Event()
        self.warm_error: str | None = None
        self.warm_seconds: float | None = None

    @property
    def default_mode(self) -> str:
        return "hybrid" if self.searcher.has_dense else "lexical"

    def close(self) -> None:
        self.searcher.close()

    # ------------------------------------------------------------------ warm-up
    def warm(self) -> None:
        """Load the model and run one query in the default mode (ANN loaded, tokenizers and MeCab warm)."""
        started = time.monotonic()
        try:
            if self.searcher.has_dense:
                _ = self.searcher.embedder
            self.searcher.search_batch([WARM_QUERY, WARM_QUERY + "。"], k=1, mode=self.default_mode)
            query_terms(WARM_QUERY)
        except Exception as exc:  # kept for /readyz; the server stays up to say why
            self.warm_error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, MitsukeError) else str(exc)
            log.error("warm-up failed: %s", self.warm_error)
            return
        self.warm_seconds = time.monotonic() - started
        log.info("model and index warm in %.1f s", self.warm_seconds)
        self.ready.set()

    def check_ready(self) -> None:
        if not self.ready.is_set():
            raise NotReady(f"not ready: {self.warm_error}" if self.warm_error else
                           "the model is still loading; retry when /readyz answers 200")

    def readiness(self) -> dict[str, Any]:
        """What ``/readyz`` reports; raises NotReady while loading."""
        self.check_ready()
        with self.searcher.store.snapshot() as snap:
            generation = snap.generation
        return {"ready": True, "generation": generation, "model": self.searcher.model_name,
                "warm_seconds": round(self.warm_seconds or 0.0, 3)}

    # ------------------------------------------------------------------ search
    def mode_of(self, mode: str | None) -> str:
        return mode or self.default_mode

    def search_batch(self, queries: list[str], options: dict[str, Any]) -> list[list[Any]]:
        return self.searcher.search_batch(queries, **options)

    @staticmethod
    def passages_json(hits) -> list[dict[str, Any]]:
        """The list `mitsuke search --json` prints."""
        return [h.to_dict(rank=i) for i, h in enumerate(hits, 1)]

    @staticmethod
    def highlights(query: str, hits) -> list[list[list[int]]]:
        terms = query_terms(query)
        return [term_spans(h.text, terms) for h in hits]

    def context(self, query: str, options: dict[str, Any]) -> dict[str, Any]:
        ctx = self.searcher.retrieve_context(query, **options)
        return {"query": query, "n_chars": ctx.n_chars, "context": ctx.render(),
                "passages": [p.to_dict() for p in ctx]}

    # ------------------------------------------------------------------ documents
    def documents(self, offset: int, limit: int, prefix: str | None) -> dict[str, Any]:
        with self.searcher.store.snapshot() as snap:  # the count and the page of one commit
            total = snap.count_documents(prefix)
            docs = snap.list_documents(offset=offset, limit=limit, prefix=prefix)
        return {"offset": offset, "limit": limit, "total": total, "documents": docs}

    def document(self, key: str) -> dict[str, Any]:
        with self.searcher.store.snapshot() as snap:
            found = snap.document_chunks(key)
        if found is None:
            raise NotFound(f"no document {key!r} in {self.index}; GET /documents lists the keys")
        info, rows = found
        text, gaps = rebuild_text(int(info["n_chars"]), rows)
        chunks = [{"chunk_id": r.id, "chunk_index": r.chunk_index, "char_start": r.char_start,
                   "char_end": r.char_end, "headings": list(r.headings),
                   "pages": list(r.pages) if r.pages else None} for r in rows]
        out = {k: v for k, v in info.items() if k != "chunks"}
        return {**out, "text": text, "gaps": gaps, "chunks": chunks}

    def info(self) -> dict[str, Any]:
        data = self.searcher.info()
        data["default_mode"] = self.default_mode
        data["ready"] = self.ready.is_set()
        return data


def check_query(query: str) -> None:
    """Reject lone surrogates: no tokenizer or JSON encoder can carry them."""
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:
        raise QueryError("the query holds a lone UTF-16 surrogate (\\ud800-\\udfff): send valid Unicode text") from None
