"""What an indexing run would do, worked out before it does it (``mitsuke index --dry-run``).

A plan compares the inputs' content hashes with those the index holds: which
documents would be added, updated, left unchanged or (with ``prune``)
deleted, and which inputs fail to load. Nothing is written and no model is
loaded. With a token counter it also sums the tokens the run will embed, the
total that progress and its ETA are measured against.

>>> plan = plan_run([Document(key="a", text="東京。")], {}, prune=False)
>>> plan.add, plan.documents
(['a'], 1)
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mitsuke.indexer.documents import Document, LoadFailure

if TYPE_CHECKING:
    from mitsuke.indexer.writer import IndexWriter

__all__ = ["RunPlan", "plan_run", "indexed_hashes", "embedding_token_counter"]


@dataclass
class RunPlan:
    """Keys to add, update, leave and delete; failures; tokens to embed (``None``: not counted)."""

    add: list[str] = field(default_factory=list)
    update: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    failed: list[LoadFailure] = field(default_factory=list)
    tokens: int | None = None
    indexed: int = 0

    @property
    def documents(self) -> int:
        """Documents the inputs yielded (each key once)."""
        return len(self.add) + len(self.update) + len(self.unchanged)

    def to_dict(self) -> dict[str, Any]:
        return {"add": self.add, "update": self.update, "unchanged": len(self.unchanged), "delete": self.delete,
                "failed": [{"path": f.path, "reason": f.reason} for f in self.failed],
                "documents": self.documents, "tokens": self.tokens, "indexed": self.indexed}


def indexed_hashes(index_dir: str | Path) -> dict[str, tuple[int, str]]:
    """Key -> (document id, content hash) of what ``index_dir`` holds; empty for no index. Read-only."""
    from mitsuke.indexer.layout import IndexPaths
    from mitsuke.indexer.location import is_url
    from mitsuke.indexer.store import MetadataStore

    if is_url(index_dir):
        from mitsuke.indexer.pg_builder import pg_document_hashes

        return pg_document_hashes(index_dir)

    meta = IndexPaths(index_dir).meta
    if not meta.exists():
        return {}
    store = MetadataStore(meta, readonly=True)
    try:
        with store.snapshot() as snap:
            return snap.document_hashes()
    finally:
        store.close()


def plan_run(docs: Iterable[Document | LoadFailure], known: dict[str, tuple[int, str]], *, prune: bool,
             count_tokens: Callable[[Document], int] | None = None) -> RunPlan:
    """The plan for indexing ``docs`` into an index holding ``known`` (see :func:`indexed_hashes`).

    A key seen twice fails the second time, as ``IndexBuilder`` does.
    ``count_tokens`` is asked about documents that would be embedded only.
    """
    plan = RunPlan(tokens=0 if count_tokens else None, indexed=len(known))
    seen: set[str] = set()
    for item in docs:
        if isinstance(item, LoadFailure):
            plan.failed.append(item)
            continue
        if item.key in seen:
            plan.failed.append(LoadFailure(item.source or item.key,
                                           f"duplicate document key {item.key!r} in this run; kept the first"))
            continue
        seen.add(item.key)
        have = known.get(item.key)
        if have and have[1] == item.content_hash:
            plan.unchanged.append(item.key)
            continue
        (plan.update if have else plan.add).append(item.key)
        if count_tokens is not None:
            plan.tokens = (plan.tokens or 0) + count_tokens(item)
    if prune:
        plan.delete = sorted(k for k in known if k not in seen)
    return plan


def embedding_token_counter(builder: IndexWriter) -> Callable[[Document], int] | None:
    """Tokens the builder's model will embed for a document (its chunks with their context); None without a model."""
    from mitsuke.indexer.builder import embedding_input

    embedder = builder.embedder
    if embedder is None:
        return None
    chunker, with_context = builder.chunker, builder.chunk_config.title_context

    def count(doc: Document) -> int:
        try:
            chunks = chunker.chunk(doc.text, markdown=doc.source_type == "markdown")
        except Exception:  # the run itself reports a chunking failure
            return 0
        texts = [embedding_input(c.text, doc.title, c.headings, with_context) for c in chunks]
        # + 2 per passage: the special tokens the model adds (what embedding progress counts)
        return sum(embedder.count_tokens(texts)) + 2 * len(texts) if texts else 0

    return count
