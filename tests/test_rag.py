"""RAG: context assembly with citations, and the LangChain / LlamaIndex retrievers (real libraries)."""
from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO
from corpus import DATA, DEMO_QUESTIONS, HARD_QUESTIONS, data_texts
from mitsuke.indexer import IndexBuilder
from mitsuke.indexer.chunking import Chunker
from mitsuke.indexer.config import ChunkConfig
from mitsuke.indexer.errors import MitsukeError, QueryError
from mitsuke.search import Passage, Searcher
from mitsuke.search.context import (
    MIN_CUT_CHARS, SPAN_SEPARATOR, ChunkPiece, Context, assemble, retrieve_context,
)
from mitsuke.search.extras import MissingExtraError

QUESTIONS = [q for q, _ in DEMO_QUESTIONS] + HARD_QUESTIONS

# A document with the awkward characters the loaders and chunker must keep exact: CP932 on disk,
# half-width katakana, full-width digits, nested 「『』」, emoji, a very long sentence, blank lines.
AWKWARD = ("「彼は『ｶﾀｶﾅで書くな』と言った。」と母は笑った。\r\n"
           "全角の１２３４５と😀絵文字が混じる行。\r\n\r\n"
           + "長い文が続き、" * 60 + "ようやく終わる。\r\n"
           "（括弧の中に。句点がある）最後の文。空港のｶﾀｶﾅ。")


# The context and retriever tests run against both backends (a PostgreSQL index answers through its cache).
BACKENDS = ["directory", "postgresql"]


@pytest.fixture(scope="module", params=BACKENDS)
def corpus(tmp_path_factory, index_factory, request):
    """A lexical index of data/ plus a CP932 file, chunked small with overlap so neighbours overlap."""
    extra = tmp_path_factory.mktemp("rag") / "extra"
    extra.mkdir()
    (extra / "awkward.txt").write_bytes(AWKWARD.replace("😀", "").encode("cp932"))  # CP932 has no emoji
    (extra / "emoji.txt").write_text(AWKWARD, encoding="utf-8")
    path = index_factory(paths=[DATA, extra], chunking=ChunkConfig(max_chars=90, overlap=30), backend=request.param)
    docs = data_texts()
    docs["awkward.txt"] = (extra / "awkward.txt").read_bytes().decode("cp932")
    docs["emoji.txt"] = AWKWARD
    searcher = Searcher.open(path)
    yield searcher, docs
    searcher.close()


@pytest.fixture(scope="module", params=BACKENDS)
def plain(index_factory, request):
    """A lexical index of data/ with the default chunking (no overlap), shared: read only."""
    searcher = Searcher.open(index_factory(paths=[DATA], backend=request.param))
    yield searcher
    searcher.close()


def check_context(ctx: Context, docs: dict[str, str], max_chars: int | None) -> None:
    """The promises: exact offsets, no text twice, the budget kept."""
    if max_chars is not None:
        assert ctx.n_chars <= max_chars
    seen: dict[str, set[int]] = {}
    for p in ctx:
        assert p.text == SPAN_SEPARATOR.join(s.text for s in p.spans)
        assert p.spans and p.char_start == p.spans[0].char_start and p.char_end == p.spans[-1].char_end
        assert p.citation.doc_key == p.hit.doc_key and p.hit.chunk_id in p.citation.chunk_ids
        for a, b in zip(p.spans, p.spans[1:]):
            assert a.char_end < b.char_start  # touching spans would have been merged
        for s in p.spans:
            assert s.text and docs[p.doc_key][s.char_start:s.char_end] == s.text
            chars = set(range(s.char_start, s.char_end))
            assert not chars & seen.setdefault(p.doc_key, set()), "text given twice"
            seen[p.doc_key] |= chars
    assert [p.rank for p in ctx] == sorted(p.rank for p in ctx)


# ---------------------------------------------------------------------- assembly on real indexes
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=st.sampled_from(QUESTIONS), k=st.integers(1, 12), neighbors=st.integers(0, 3),
       max_chars=st.one_of(st.none(), st.integers(1, 1500)))
def test_context_keeps_budget_offsets_and_no_duplicates_on_real_documents(corpus, q, k, neighbors, max_chars):
    searcher, docs = corpus
    ctx = searcher.retrieve_context(q, k=k, neighbors=neighbors, max_chars=max_chars)
    check_context(ctx, docs, max_chars)
    if max_chars is None:
        # Nothing is lost without a budget: every hit's text is in the context.
        covered = {(p.doc_key, i) for p in ctx for s in p.spans for i in range(s.char_start, s.char_end)}
        for hit in searcher.search(q, k):
            assert all((hit.doc_key, i) in covered for i in range(hit.char_start, hit.char_end))


def test_neighbours_are_the_adjacent_chunks_of_the_same_document(corpus):
    searcher, docs = corpus
    hit = searcher.search("豊岡市の年間平均降雪量はどれくらい？", k=1)[0]
    with searcher.store.snapshot() as snap:
        around = snap.neighbours([hit.chunk_id], 2)[hit.chunk_id]
    chunks = Chunker(ChunkConfig(max_chars=90, overlap=30)).chunk(docs[hit.doc_key], markdown=True)
    expected = [c for c in chunks if abs(c.index - hit.chunk_index) <= 2]
    assert [(p.chunk_index, p.char_start, p.char_end, p.text) for p in around] == \
        [(c.index, c.char_start, c.char_end, c.text) for c in expected]
    assert any(a.char_end > b.char_start for a, b in zip(around, around[1:])), "the fixture should overlap"

    ctx = searcher.retrieve_context("豊岡市の年間平均降雪量はどれくらい？", k=1, neighbors=2)
    p = ctx[0]
    assert set(p.citation.chunk_ids) == {c.chunk_id for c in around}
    assert (p.char_start, p.char_end) == (around[0].char_start, max(c.char_end for c in around))
    # Overlapping chunks are merged once: the passage is shorter than the chunks laid end to end.
    assert len(p.text) < sum(len(c.text) for c in around)
    check_context(ctx, docs, None)


def test_a_document_replaced_after_the_search_gives_no_foreign_neighbours(tmp_path):
    doc = {"id": "東京", "title": "東京", "text": "東京は日本の首都である。" * 6 + "「人口」は約千四百万人。" * 6}
    with IndexBuilder.open(tmp_path / "idx", model="none", chunking=ChunkConfig(max_chars=40)) as b:
        b.add_documents([doc])
    with Searcher.open(tmp_path / "idx") as s:
        hits = s.search("人口", k=1)
        with IndexBuilder.open(tmp_path / "idx") as b:  # the document changes between search and assembly
            b.add_documents([{**doc, "text": "大阪は西日本の中心都市である。" * 12}])
        with s.store.snapshot() as snap:
            around = snap.neighbours([hits[0].chunk_id], 3)
        assert around == {hits[0].chunk_id: []}
        ctx = assemble(hits, around)
        assert [p.text for p in ctx] == [hits[0].text] and "大阪" not in ctx.render()


def test_cp932_emoji_and_long_sentences_keep_exact_offsets(corpus):
    searcher, docs = corpus
    for key in ("awkward.txt", "emoji.txt"):
        ctx = searcher.retrieve_context("ｶﾀｶﾅ 絵文字 長い文", k=8, neighbors=3, where={"doc_key": key})
        assert ctx and {p.doc_key for p in ctx} == {key}
        check_context(ctx, docs, None)
        text = "".join(s.text for p in ctx for s in p.spans)
        assert "ｶﾀｶﾅ" in text and "１２３４５" in text


def test_without_neighbours_or_budget_the_context_is_the_search_result(plain):
    for q in QUESTIONS:
        hits = plain.search(q, k=6)
        ctx = plain.retrieve_context(q, k=6)
        assert [(p.hit.chunk_id, p.text, p.char_start, p.char_end, p.score) for p in ctx] == \
            [(h.chunk_id, h.text, h.char_start, h.char_end, h.score) for h in hits]
        assert [p.rank for p in ctx] == list(range(1, len(hits) + 1))


def test_budget_cuts_the_last_passage_at_a_sentence_end(plain):
    docs = data_texts()
    q = "豊岡市の年間平均降雪量はどれくらい？"
    full = plain.retrieve_context(q, k=5)
    i = next(i for i in range(1, len(full)) if len(full[i].text) > 60)
    budget = sum(len(p.text) for p in full.passages[:i]) + 60
    ctx = plain.retrieve_context(q, k=5, max_chars=budget)
    check_context(ctx, docs, budget)
    assert [p.text for p in ctx.passages[:i]] == [p.text for p in full.passages[:i]]
    cut = ctx[i]
    assert cut.truncated and cut.rank == full[i].rank and not any(p.truncated for p in ctx.passages[:i])
    assert MIN_CUT_CHARS <= len(cut.text) < 60 and cut.text[-1] in "。！？」）\n"
    assert full[i].text.startswith(cut.text)


def test_citations_and_rendering(plain):
    ctx = plain.retrieve_context("清水建設の創業者は誰ですか", k=3, neighbors=1, max_chars=1200)
    c = ctx[0].citation
    assert (c.doc_key, c.title) == ("清水建設.txt", "清水建設")
    assert c.source.endswith("清水建設.txt")
    d = ctx[0].to_metadata()
    assert {"doc_key", "title", "char_start", "char_end", "source", "metadata", "score", "rank", "chunk_id"} <= d.keys()
    text = ctx.render()
    assert text.startswith(f"[1] 清水建設 (清水建設.txt {c.char_start}–{c.char_end})\n")
    assert all(p.text in text for p in ctx)


@pytest.mark.parametrize("kwargs, word", [
    ({"neighbors": -1}, "neighbors"),
    ({"max_chars": 0}, "max_chars"),
    ({"mode": "semantic"}, "mode"),
])
def test_bad_arguments_say_what_is_wrong(plain, kwargs, word):
    with pytest.raises(QueryError, match=word):
        retrieve_context(plain, "空港", k=3, **kwargs)


# ---------------------------------------------------------------------- assembly as a pure function
_ALPHABET = "あいうえおかきくけこ漢字東京ｶﾀｶﾅＡＢ１２😀、「」『』（）"


@st.composite
def chunked_documents(draw):
    """Documents cut by the real Chunker with a random budget and overlap, and ranked hits among them."""
    budget = draw(st.integers(8, 60))
    overlap = draw(st.integers(0, budget - 1))
    chunker = Chunker(ChunkConfig(max_chars=budget, overlap=overlap))
    docs, pieces = {}, []
    for d in range(draw(st.integers(1, 3))):
        sentences = draw(st.lists(st.tuples(st.text(_ALPHABET, min_size=1, max_size=40),
                                            st.sampled_from(["。", "！", "。」", "\n", "\n\n", "。 "])),
                                  min_size=1, max_size=12))
        text = "".join(a + b for a, b in sentences)
        key = f"文書{d}.txt"
        docs[key] = text
        for c in chunker.chunk(text):
            pieces.append((key, ChunkPiece(len(pieces) + 1, c.index, c.char_start, c.char_end, c.text)))
    order = draw(st.permutations(range(len(pieces))))
    hits = [pieces[i] for i in order[:draw(st.integers(1, len(pieces)))]]
    return docs, pieces, hits


@settings(max_examples=150, deadline=None)
@given(data=chunked_documents(), neighbors=st.integers(0, 3), max_chars=st.one_of(st.none(), st.integers(1, 300)))
def test_assembly_invariants(data, neighbors, max_chars):
    docs, pieces, hits = data
    passages = [Passage(chunk_id=p.chunk_id, doc_key=key, title=key, text=p.text, score=1.0 / rank,
                        char_start=p.char_start, char_end=p.char_end, chunk_index=p.chunk_index)
                for rank, (key, p) in enumerate(hits, 1)]
    around = {h.chunk_id: [p for key, p in pieces if key == h.doc_key
                           and abs(p.chunk_index - h.chunk_index) <= neighbors] for h in passages}
    ctx = assemble(passages, around, max_chars=max_chars)
    check_context(ctx, docs, max_chars)
    if max_chars is None:
        covered = {(p.doc_key, i) for p in ctx for s in p.spans for i in range(s.char_start, s.char_end)}
        wanted = {(key, i) for key, p in pieces for h in passages
                  if key == h.doc_key and abs(p.chunk_index - h.chunk_index) <= neighbors
                  for i in range(p.char_start, p.char_end)}
        hits_text = {(h.doc_key, i) for h in passages for i in range(h.char_start, h.char_end)}
        assert hits_text <= covered <= wanted  # every hit's text, and only its neighbours' text
    elif len(passages[0].text) <= max_chars or max_chars >= MIN_CUT_CHARS:
        assert ctx[0].rank == 1  # the best hit is always there, cut if it must be


# ---------------------------------------------------------------------- optional extras
@pytest.mark.parametrize("module, blocked, extra", [
    ("mitsuke.search.langchain", "langchain_core", "langchain"),
    ("mitsuke.search.llamaindex", "llama_index", "llamaindex"),
])
def test_missing_extra_names_the_pip_command(monkeypatch, module, blocked, extra):
    for name in [m for m in sys.modules if m == blocked or m.startswith(blocked + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, blocked, None)  # what a machine without the package sees
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(MissingExtraError, match=rf'pip install "mitsuke\[{extra}\]"') as err:
        importlib.import_module(module)
    assert isinstance(err.value, ImportError) and isinstance(err.value, MitsukeError)


def test_importing_search_does_not_import_the_frameworks():
    code = ("import sys, mitsuke.search, mitsuke.search.context; "
            "print(sorted(m for m in ('langchain_core', 'llama_index') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------- LangChain
@pytest.fixture(scope="module", params=BACKENDS)
def dense(index_factory, tiny_embedder, request):
    searcher = Searcher.open(index_factory(paths=[DATA], model="tiny", embedder=tiny_embedder, backend=request.param),
                             embedder=tiny_embedder)
    yield searcher
    searcher.close()


def same_as_search(searcher, q, k, mode, items):
    """(text, doc_key, char_start, char_end, score) of framework results against ``search``."""
    hits = searcher.search(q, k, mode=mode)
    assert hits
    assert items == [(h.text, h.doc_key, h.char_start, h.char_end, h.score) for h in hits]


@pytest.mark.parametrize("mode", ["lexical", "dense", "hybrid"])
def test_langchain_retriever_returns_search_order_with_citations(dense, mode):
    from langchain_core.documents import Document

    from mitsuke.search.langchain import MitsukeRetriever

    retriever = MitsukeRetriever(searcher=dense, k=4, mode=mode)
    for q in QUESTIONS[:5]:
        docs = retriever.invoke(q)
        assert all(isinstance(d, Document) for d in docs)
        same_as_search(dense, q, 4, mode, [(d.page_content, d.metadata["doc_key"], d.metadata["char_start"],
                                            d.metadata["char_end"], d.metadata["score"]) for d in docs])
        docs_text = data_texts()
        for rank, d in enumerate(docs, 1):
            m = d.metadata
            assert docs_text[m["doc_key"]][m["char_start"]:m["char_end"]] == d.page_content
            assert m["rank"] == rank and m["title"] and m["source"] and m["chunk_ids"] == [m["chunk_id"]]
            assert d.id == str(m["chunk_id"])


def test_langchain_retriever_in_a_chain_async_and_batched(plain):
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableLambda, RunnablePassthrough

    from mitsuke.search.langchain import MitsukeRetriever

    retriever = MitsukeRetriever.from_index(plain.path, k=3, neighbors=1, max_chars=900)
    q = "豊岡市の年間平均降雪量はどれくらい？"
    prompt = ChatPromptTemplate.from_messages([("human", "資料:\n{context}\n\n質問: {question}")])
    chain = {"context": retriever | RunnableLambda(
        lambda docs: "\n\n".join(f"[{d.metadata['doc_key']}] {d.page_content}" for d in docs)),
        "question": RunnablePassthrough()} | prompt
    message = chain.invoke(q).to_messages()[0].content
    assert "312cm" in message and "[豊岡市.md]" in message and message.endswith(q)

    ctx = plain.retrieve_context(q, k=3, neighbors=1, max_chars=900)
    docs = retriever.invoke(q)
    assert [d.page_content for d in docs] == [p.text for p in ctx]
    assert sum(len(d.page_content) for d in docs) <= 900
    assert [d.page_content for d in asyncio.run(retriever.ainvoke(q))] == [p.text for p in ctx]
    batched = retriever.batch(QUESTIONS[:4])
    assert [[d.page_content for d in docs] for docs in batched] == \
        [[p.text for p in plain.retrieve_context(x, k=3, neighbors=1, max_chars=900)] for x in QUESTIONS[:4]]
    retriever.searcher.close()


# ---------------------------------------------------------------------- LlamaIndex
@pytest.mark.parametrize("mode", ["lexical", "dense", "hybrid"])
def test_llamaindex_retriever_returns_search_order_with_citations(dense, mode):
    from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode

    from mitsuke.search.llamaindex import MitsukeRetriever

    retriever = MitsukeRetriever(dense, k=4, mode=mode)
    docs_text = data_texts()
    for q in QUESTIONS[:5]:
        nodes = retriever.retrieve(q)
        assert all(isinstance(n, NodeWithScore) and isinstance(n.node, TextNode) for n in nodes)
        same_as_search(dense, q, 4, mode, [(n.node.text, n.node.metadata["doc_key"], n.node.start_char_idx,
                                            n.node.end_char_idx, n.score) for n in nodes])
        for n in nodes:
            node = n.node
            assert docs_text[node.ref_doc_id][node.start_char_idx:node.end_char_idx] == node.text
            llm_view = node.get_content(metadata_mode=MetadataMode.LLM)
            assert f"doc_key: {node.ref_doc_id}" in llm_view and "chunk_ids" not in llm_view
            assert node.get_content(metadata_mode=MetadataMode.EMBED) == node.text


def test_llamaindex_retriever_in_a_query_engine_and_async(plain):
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine

    from mitsuke.search.llamaindex import MitsukeRetriever

    q = "清水建設の創業者は誰ですか"
    retriever = MitsukeRetriever.from_index(plain.path, k=3, neighbors=1, max_chars=800)
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM())
    response = engine.query(q)
    ctx = plain.retrieve_context(q, k=3, neighbors=1, max_chars=800)
    assert [n.node.text for n in response.source_nodes] == [p.text for p in ctx]
    assert response.source_nodes[0].node.metadata["doc_key"] == "清水建設.txt"
    nodes = asyncio.run(retriever.aretrieve(q))
    assert [(n.node.start_char_idx, n.node.end_char_idx) for n in nodes] == [(p.char_start, p.char_end) for p in ctx]
    retriever.searcher.close()
