"""mitsuke serve: a real uvicorn process on 127.0.0.1 answers as `mitsuke search --json` does, and survives abuse."""
from __future__ import annotations

import json
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from click.testing import CliRunner

from conftest import DATA
from servekit import MITSUKE, build_dense, build_lexical, running_server

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

QUERIES = ["豊岡市の年間平均降雪量は？", "清水建設の創業者", "ｶﾀｶﾅ とＡＢＣ", "「空港」の『定義』😀", "   "]


@pytest.fixture(scope="module")
def lex_index(tmp_path_factory):
    return build_lexical(tmp_path_factory.mktemp("serve") / "lex")


@pytest.fixture(scope="module")
def dense_index(tmp_path_factory, tiny_model):
    return build_dense(tmp_path_factory.mktemp("serve") / "dense", tiny_model)


@pytest.fixture(scope="module")
def lex_server(lex_index, tmp_path_factory):
    with running_server(lex_index, log=tmp_path_factory.mktemp("logs") / "lex.log") as (base, _):
        yield base


@pytest.fixture(scope="module")
def dense_server(dense_index, tmp_path_factory):
    # One torch thread: on a shared machine two threads spin against each other (10x slower).
    with running_server(dense_index, "--threads", "1", log=tmp_path_factory.mktemp("logs") / "dense.log") as (base, _):
        yield base


def cli_json(index, query: str, *args: str) -> list[dict]:
    from mitsuke.cli import cli

    result = CliRunner().invoke(cli, ["search", query, "--index", str(index), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def post(base: str, path: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(base + path, json=body, timeout=60, **kw)


# ---------------------------------------------------------------------- parity with the CLI
def test_search_equals_the_cli_json_process(lex_server, lex_index):
    """The acceptance check, literally: `mitsuke search --json` in its own process vs POST /search."""
    query = "豊岡市の年間平均降雪量は？"
    out = subprocess.run([*MITSUKE, "search", query, "--index", str(lex_index), "-k", "5", "--json"],
                         capture_output=True, text=True, encoding="utf-8", check=True, timeout=120)
    r = post(lex_server, "/search", {"query": query, "k": 5})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["passages"] == json.loads(out.stdout)
    assert body["passages"][0]["doc_key"] == "豊岡市.md" and "312cm" in body["passages"][0]["text"]
    assert body["mode"] == "lexical" and body["took_ms"] >= 0


@pytest.mark.parametrize("query", QUERIES)
@pytest.mark.parametrize("k", [1, 7])
def test_lexical_search_equals_cli(lex_server, lex_index, query, k):
    body = post(lex_server, "/search", {"query": query, "k": k}).json()
    assert body["passages"] == cli_json(lex_index, query, "-k", str(k))


def test_filters_equal_cli(lex_server, lex_index):
    body = post(lex_server, "/search", {"query": "市", "k": 5, "where": {"doc_key": "豊*"}}).json()
    assert body["passages"] == cli_json(lex_index, "市", "-k", "5", "--where", "doc_key=豊*")
    assert body["passages"] and {p["doc_key"] for p in body["passages"]} == {"豊岡市.md"}


@pytest.mark.parametrize("options,args", [
    ({}, []),
    ({"mode": "dense"}, ["--mode", "dense"]),
    ({"mode": "lexical"}, ["--mode", "lexical"]),
    ({"mode": "hybrid", "fusion": "weighted", "weights": [0.3, 1]}, ["--fusion", "weighted", "--weights", "0.3,1"]),
    ({"mode": "dense", "rerank": False, "candidates": 20}, ["--mode", "dense", "--no-rerank", "--candidates", "20"]),
])
def test_dense_index_search_equals_cli(dense_server, dense_index, options, args):
    for query in QUERIES[:3]:
        body = post(dense_server, "/search", {"query": query, "k": 6, **options}).json()
        assert body["passages"] == cli_json(dense_index, query, "-k", "6", *args), (query, options)
        assert body["mode"] == options.get("mode", "hybrid")


def test_highlights_mark_the_query_terms(lex_server):
    body = post(lex_server, "/search", {"query": "ｶﾀｶﾅの豊岡市", "k": 5, "highlight": True}).json()
    assert len(body["highlights"]) == len(body["passages"])
    marked = [p["text"][a:b] for p, spans in zip(body["passages"], body["highlights"]) for a, b in spans]
    assert "豊岡市" in marked or "豊岡" in marked
    for p, spans in zip(body["passages"], body["highlights"]):
        assert all(0 <= a < b <= len(p["text"]) for a, b in spans)


# ---------------------------------------------------------------------- other endpoints
def test_batch_equals_single_searches(lex_server):
    body = post(lex_server, "/search/batch", {"queries": QUERIES, "k": 4}).json()
    assert [r["query"] for r in body["results"]] == QUERIES
    for r in body["results"]:
        assert r["passages"] == post(lex_server, "/search", {"query": r["query"], "k": 4}).json()["passages"]


def test_context_has_citations_within_budget(lex_server, lex_index):
    from mitsuke.search.searcher import Searcher

    body = post(lex_server, "/context", {"query": "豊岡市の冬", "k": 3, "max_chars": 300, "neighbors": 1}).json()
    assert 0 < body["n_chars"] <= 300
    with Searcher.open(lex_index) as s:
        ctx = s.retrieve_context("豊岡市の冬", k=3, max_chars=300, neighbors=1)
    assert body["passages"] == [p.to_dict() for p in ctx]
    assert body["context"] == ctx.render() and body["passages"][0]["citation"]["doc_key"] == "豊岡市.md"


def test_documents_list_and_text_with_exact_offsets(lex_server):
    from mitsuke.indexer.loaders import iter_documents

    listing = httpx.get(lex_server + "/documents", params={"limit": 5}).json()
    total = len([p for p in DATA.iterdir() if p.suffix in (".txt", ".md")])
    assert listing["total"] == total and len(listing["documents"]) == 5
    rest = httpx.get(lex_server + "/documents", params={"offset": 5, "limit": 1000}).json()["documents"]
    keys = [d["doc_key"] for d in listing["documents"] + rest]
    assert keys == sorted(keys) and len(keys) == total
    assert httpx.get(lex_server + "/documents", params={"prefix": "豊"}).json()["total"] == 1

    originals = {d.key: d.text for d in iter_documents([str(DATA)]) if hasattr(d, "text")}
    hit = post(lex_server, "/search", {"query": "豊岡市の年間平均降雪量は？", "k": 1}).json()["passages"][0]
    doc = httpx.get(lex_server + "/documents/" + hit["doc_key"]).json()
    assert doc["text"][hit["char_start"]:hit["char_end"]] == hit["text"]
    original = originals[doc["doc_key"]]
    assert len(doc["text"]) == len(original) == doc["n_chars"]
    rebuilt = list(doc["text"])
    for a, b in doc["gaps"]:
        assert original[a:b].strip() == ""  # only whitespace between chunks is unknown
        rebuilt[a:b] = original[a:b]
    assert "".join(rebuilt) == original
    assert [c["chunk_index"] for c in doc["chunks"]] == sorted(c["chunk_index"] for c in doc["chunks"])

    missing = httpx.get(lex_server + "/documents/無い文書.txt")
    assert missing.status_code == 404 and "無い文書.txt" in missing.json()["error"]["message"]


def test_pdf_pages_in_search_and_document_view(tmp_path, index_factory):
    """A PDF's passages carry their pages as `mitsuke search --json` does; the document view has them per chunk."""
    from jadocs import write_pdf

    from mitsuke.indexer.pages import pages_of
    from mitsuke.server.service import SearchService

    pdf = tmp_path / "pdf"
    pdf.mkdir()
    write_pdf(pdf / "観光案内.pdf", ["一頁目は豊岡市の気候。冬は雪が多い。", "二頁目は城崎温泉の外湯めぐり。",
                                  "三頁目は出石そばの皿そば。"])
    index = index_factory(paths=[pdf], fresh=True)
    service = SearchService(index)
    try:
        hits = service.searcher.search("出石そば", k=3)
        assert hits and hits[0].pages is not None
        assert service.passages_json(hits) == cli_json(index, "出石そば", "-k", "3")
        doc = service.document(hits[0].doc_key)
        starts = doc["page_starts"]
        assert len(starts) == 3 and doc["text"][starts[2]:].startswith("三頁目")
        for c in doc["chunks"]:
            assert tuple(c["pages"]) == pages_of(starts, c["char_start"], c["char_end"])
        chunk = next(c for c in doc["chunks"] if c["chunk_id"] == hits[0].chunk_id)
        assert tuple(chunk["pages"]) == hits[0].pages and hits[0].pages[1] == 3
        summary = service.documents(0, 10, None)["documents"]
        assert [d["doc_key"] for d in summary] == ["観光案内.pdf"] and "page_starts" not in summary[0]
    finally:
        service.close()


def test_health_info_metrics(lex_server):
    assert httpx.get(lex_server + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(lex_server + "/readyz").json()
    assert ready["ready"] is True and ready["generation"] >= 1
    info = httpx.get(lex_server + "/info").json()
    assert info["documents"] == 16 and info["model"] is None and info["default_mode"] == "lexical"
    assert info["limits"]["max_k"] == 200
    before = httpx.get(lex_server + "/metrics").text
    post(lex_server, "/search", {"query": "空港", "k": 2})
    post(lex_server, "/search", {"query": "空港", "k": 0})
    text = httpx.get(lex_server + "/metrics").text
    assert "# TYPE mitsuke_http_request_duration_seconds histogram" in text
    assert 'mitsuke_http_request_duration_seconds_bucket{route="/search",le="+Inf"}' in text
    count = lambda t, s: sum(float(line.rsplit(" ", 1)[1]) for line in t.splitlines()  # noqa: E731
                             if line.startswith(f'mitsuke_http_requests_total{{route="/search",method="POST",status="{s}"}}'))
    assert count(text, 200) == count(before, 200) + 1 and count(text, 422) == count(before, 422) + 1
    assert 'mitsuke_http_errors_total{route="/search",class="4xx"}' in text


def test_openapi_validates_and_docs_are_served(lex_server):
    from openapi_spec_validator import validate

    spec = httpx.get(lex_server + "/openapi.json").json()
    validate(spec)
    for path in ("/search", "/search/batch", "/context", "/documents", "/documents/{key}", "/info", "/healthz",
                 "/readyz", "/metrics"):
        assert path in spec["paths"], path
    search_body = spec["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = spec["components"]["schemas"][search_body["$ref"].rsplit("/", 1)[1]]
    assert schema["properties"]["k"]["maximum"] == 200 and schema["additionalProperties"] is False
    assert httpx.get(lex_server + "/docs").status_code == 200


# ---------------------------------------------------------------------- hostile requests
def _chunked(total: int):
    piece = b"x" * 65536
    for _ in range(total // len(piece)):
        yield piece


HOSTILE = [
    ("huge body", dict(content=b'{"query": "' + b"a" * (3 << 20) + b'"}'), 413),
    ("huge streamed body", dict(content=_chunked(4 << 20)), 413),
    ("k = 10**9", dict(json={"query": "空港", "k": 10**9}), 422),
    ("k = 0", dict(json={"query": "空港", "k": 0}), 422),
    ("k as a string", dict(json={"query": "空港", "k": "10"}), 422),
    ("k as a float", dict(json={"query": "空港", "k": 2.5}), 422),
    ("query as a number", dict(json={"query": 123}), 422),
    ("query missing", dict(json={"k": 3}), 422),
    ("query too long", dict(json={"query": "あ" * 2001}), 422),
    ("unknown field", dict(json={"query": "空港", "top_k": 3}), 422),
    ("unknown mode", dict(json={"query": "空港", "mode": "fast"}), 422),
    ("dense on a lexical index", dict(json={"query": "空港", "mode": "dense"}), 400),
    ("where as a list", dict(json={"query": "空港", "where": ["doc_key"]}), 422),
    ("weights of one", dict(json={"query": "空港", "weights": [1]}), 422),
    ("negative weights", dict(json={"query": "空港", "weights": [-1, 1]}), 400),
    ("nprobe 0", dict(json={"query": "空港", "nprobe": 0}), 422),
    ("invalid UTF-8", dict(content=b'{"query": "\xff\xfe\x80"}', headers={"content-type": "application/json"}), 400),
    ("lone surrogate", dict(content=b'{"query": "\\ud800"}', headers={"content-type": "application/json"}), 422),
    ("not JSON", dict(content=b"{query: ", headers={"content-type": "application/json"}), 422),
    ("JSON array", dict(json=["空港"]), 422),
    ("empty body", dict(content=b""), 422),
    ("nested bomb", dict(content=b"[" * 100000 + b"]" * 100000, headers={"content-type": "application/json"}), 400),
]


@pytest.mark.parametrize("name,kwargs,status", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_request_gets_a_json_4xx_and_the_server_keeps_serving(lex_server, name, kwargs, status):
    r = httpx.post(lex_server + "/search", timeout=60, **kwargs)
    assert r.status_code == status, r.text[:300]
    err = r.json()["error"]
    assert err["status"] == status and err["message"] and "Traceback" not in r.text and len(r.text) < 2000
    assert post(lex_server, "/search", {"query": "空港", "k": 1}).status_code == 200


def test_hostile_other_endpoints(lex_server):
    cases = [
        (httpx.get, "/search", {}, 405),
        (httpx.post, "/search/batch", {"json": {"queries": ["空港"] * 65}}, 422),
        (httpx.post, "/search/batch", {"json": {"queries": []}}, 422),
        (httpx.post, "/search/batch", {"json": {"queries": "空港"}}, 422),
        (httpx.post, "/context", {"json": {"query": "空港", "neighbors": -1}}, 422),
        (httpx.get, "/documents", {"params": {"limit": 0}}, 422),
        (httpx.get, "/documents", {"params": {"offset": "x"}}, 422),
        (httpx.get, "/no/such/path", {}, 404),
    ]
    for method, path, kwargs, status in cases:
        r = method(lex_server + path, timeout=30, **kwargs)
        assert r.status_code == status, (path, kwargs, r.text[:200])
        assert r.json()["error"]["message"], path
    sql = post(lex_server, "/search", {"query": "空港", "where": {"x') OR 1=1 --": "'; DROP TABLE chunks; --"}})
    assert sql.status_code == 200 and sql.json()["passages"] == []
    assert post(lex_server, "/search", {"query": "空港", "k": 1}).json()["passages"]


# ---------------------------------------------------------------------- concurrency and live updates
def test_concurrent_dense_queries_are_micro_batched(dense_server):
    queries = [f"{q}{i}" for i in range(8) for q in QUERIES[:4]]
    single = {q: post(dense_server, "/search", {"query": q, "k": 5, "mode": "dense"}).json()["passages"]
              for q in queries}
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda q: post(dense_server, "/search", {"query": q, "k": 5, "mode": "dense"}),
                                queries))
    assert all(r.status_code == 200 for r in answers)
    for q, r in zip(queries, answers):
        got = r.json()["passages"]
        assert [p["chunk_id"] for p in got] == [p["chunk_id"] for p in single[q]] or \
            [round(p["score"], 4) for p in got] == [round(p["score"], 4) for p in single[q]]
        assert [p["score"] for p in got] == pytest.approx([p["score"] for p in single[q]], abs=1e-5)
    metrics = httpx.get(dense_server + "/metrics").text
    value = lambda name: float(next(line.rsplit(" ", 1)[1] for line in metrics.splitlines()  # noqa: E731
                                    if line.startswith(name + " ")))
    # Fewer forward passes than queries: concurrent queries shared batches.
    assert value("mitsuke_batch_queries_count") < value("mitsuke_batch_queries_sum")


def test_new_commits_are_searched_without_a_restart(dense_server, dense_index):
    from mitsuke.indexer.builder import IndexBuilder

    word = "ザクロ石榴の特異語彙"
    assert post(dense_server, "/search", {"query": word, "k": 3, "mode": "lexical"}).json()["passages"] == []
    errors: list[int] = []
    stop = threading.Event()

    def load():
        while not stop.is_set():
            r = post(dense_server, "/search", {"query": "豊岡市の気候", "k": 3})
            if r.status_code != 200:
                errors.append(r.status_code)

    reader = threading.Thread(target=load)
    reader.start()
    try:
        with IndexBuilder.open(dense_index) as b:
            b.add_documents([{"id": "新着.txt", "title": "新着", "text": f"{word}は試験のために加えた文書です。"}])
    finally:
        stop.set()
        reader.join()
    assert errors == []
    for mode in ("lexical", "hybrid", "dense"):
        hits = post(dense_server, "/search", {"query": word, "k": 50, "mode": mode}).json()["passages"]
        assert "新着.txt" in [p["doc_key"] for p in hits], mode
    assert httpx.get(dense_server + "/documents/新着.txt").json()["title"] == "新着"
    assert httpx.get(dense_server + "/readyz").json()["generation"] >= 2
