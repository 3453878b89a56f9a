"""A PostgreSQL index on a real server (tests/pgserver.py): same answers as a directory index, many writers,
query nodes caught up from the commit log, killed writers, passwords never shown, a least-privilege role."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from corpus import DATA, DEMO_QUESTIONS, EVAL_DOCS, HARD_QUESTIONS, SENTENCES, write_jsonl

from mitsuke.cli import cli
from mitsuke.indexer import IndexBuilder
from mitsuke.indexer.config import AnnConfig
from mitsuke.indexer.errors import MitsukeError
from mitsuke.indexer.location import PgLocation, parse_location
from mitsuke.search import Searcher

QUESTIONS = [q for q, _ in DEMO_QUESTIONS] + HARD_QUESTIONS + ["更科蕎麦", "東京 大阪"]
META_DOCS = [
    {"id": f"meta/{i:02d}.txt", "title": f"記事{i}", "text": SENTENCES[i % len(SENTENCES)] + SENTENCES[(i * 3) % 8],
     "lang": "ja" if i % 3 else "en", "year": 2020 + i % 3, "tags": ["a", "b"] if i % 2 else ["c"]}
    for i in range(24)
]


def fresh_schema() -> str:
    return "t_" + uuid.uuid4().hex[:10]


def view(passages):
    """What a user sees of a result list (chunk ids aside: two backends number alike only with one writer)."""
    return [(p.doc_key, p.chunk_index, p.char_start, p.char_end, p.text, round(p.score, 9),
             None if p.dense_score is None else round(p.dense_score, 9),
             None if p.lexical_score is None else round(p.lexical_score, 9)) for p in passages]


def run_cli(*args, env=None, input=None):
    return subprocess.run([sys.executable, "-m", "mitsuke.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, input=input, timeout=300)


# --------------------------------------------------------------------------- locations

def test_parse_location_and_hidden_password():
    assert parse_location("idx") == Path("idx")
    loc = parse_location("postgresql://alice:s3cr%40t@db.example:6543/search?schema=news&sslmode=require")
    assert isinstance(loc, PgLocation) and loc.schema == "news" and loc.url.password == "s3cr@t"
    assert "s3cr" not in loc.display and "***" in loc.display and "sslmode=require" in loc.display
    assert "s3cr" not in repr(loc) and "s3cr" not in str(loc)
    assert parse_location("postgresql+psycopg://u@h/db").schema == "mitsuke"
    for bad in ("postgresql+psycopg://u@h/db?schema=Drop;Table", "mysql://u@h/db", "postgresql://u@h"):
        with pytest.raises(MitsukeError):
            parse_location(bad)


# --------------------------------------------------------------------------- same answers

@pytest.fixture(scope="module")
def pair(pg_server, tiny_embedder, tmp_path_factory):
    """The same inputs as a directory index and as a PostgreSQL index (tiny model), and a Searcher on each."""
    root = tmp_path_factory.mktemp("pgpair")
    url = pg_server.url(schema=fresh_schema())
    for where in (root / "dir", url):
        with IndexBuilder.open(where, model="tiny", embedder=tiny_embedder, batch_docs=5) as b:
            b.add_paths([str(DATA)])
            b.add_documents(META_DOCS)
            assert not b.summary.failed
    d = Searcher.open(root / "dir", embedder=tiny_embedder)
    p = Searcher.open(url, embedder=tiny_embedder, cache=root / "cache")
    yield d, p, url, root
    d.close()
    p.close()


@pytest.mark.parametrize("mode", ["lexical", "dense", "hybrid"])
def test_same_passages_and_scores_as_a_directory_index(pair, mode):
    d, p, _, _ = pair
    got, want = p.search_batch(QUESTIONS, k=8, mode=mode), d.search_batch(QUESTIONS, k=8, mode=mode)
    assert [view(x) for x in got] == [view(x) for x in want]
    assert all(got[:5])
    assert p.info()["documents"] == d.info()["documents"] and p.info()["chunks"] == d.info()["chunks"]


@pytest.mark.parametrize("where", [{"lang": "en"}, {"doc_key": "meta/1*"}, {"tags": "a", "year": 2021},
                                   {"title": "豊岡市"}])
def test_filters_weighted_fusion_and_context_equal(pair, where):
    d, p, _, _ = pair
    for kw in ({"mode": "hybrid"}, {"mode": "lexical"}, {"fusion": "weighted", "weights": (0.3, 1)}):
        got = p.search_batch(QUESTIONS[:4], k=5, where=where, **kw)
        assert [view(x) for x in got] == [view(x) for x in d.search_batch(QUESTIONS[:4], k=5, where=where, **kw)]
    for q in QUESTIONS[:2]:
        cp = p.retrieve_context(q, k=3, neighbors=1, max_chars=600, where=where)
        cd = d.retrieve_context(q, k=3, neighbors=1, max_chars=600, where=where)
        assert cp.render() == cd.render()


def test_eval_report_equal(pair, tmp_path):
    d, p, url, root = pair
    from mitsuke.search.evaluate import evaluate, load_queries

    queries = load_queries(write_jsonl(tmp_path / "q.jsonl", [
        {"qid": str(i), "question": q, "answers": [key], "doc_id": key} for i, (q, key) in enumerate(DEMO_QUESTIONS)]))
    a, b = evaluate(p, queries, (1, 5), per_query=True), evaluate(d, queries, (1, 5), per_query=True)
    metrics = lambda r: {k: v for k, v in r.metrics.items() if "latency" not in k}  # noqa: E731
    assert metrics(a) == metrics(b) and a.metrics["doc_hit@5"] > 0
    drop = lambda q: {k: v for k, v in q.items() if "latency" not in k and k != "ms"}  # noqa: E731
    assert [drop(q) for q in a.per_query] == [drop(q) for q in b.per_query]
    assert a.counts == b.counts and a.settings["index"] == parse_location(url).display


def test_tune_save_on_a_url_index_reaches_every_query_node(pair, tiny_embedder, tmp_path):
    """`mitsuke tune --save` on a URL stores the defaults in PostgreSQL; a node opening it afterwards uses them."""
    _, _, url, root = pair
    from mitsuke.search.fusion import FusionSettings
    from mitsuke.search.tune import save_defaults

    chosen = FusionSettings(fusion="convex", weights=(0.35, 0.65), norm="minmax")
    try:
        saved = save_defaults(parse_location(url), chosen, {"folds": 5})  # a parsed location works as the URL
        assert saved["weights"] == [0.35, 0.65]
        with Searcher.open(parse_location(url), embedder=tiny_embedder, cache=tmp_path / "node2") as s:
            assert (s.defaults.fusion, s.defaults.weights, s.defaults.norm) == ("convex", (0.35, 0.65), "minmax")
            assert s.info()["search_defaults"]["weights"] == [0.35, 0.65]
            want = s.search("豊岡市の気候", k=5, fusion="convex", weights=(0.35, 0.65), norm="minmax")
            assert [view([x]) for x in s.search("豊岡市の気候", k=5)] == [view([x]) for x in want]
    finally:  # the module's other tests read this index with the built-in defaults
        from mitsuke.indexer.store.postgres import PostgresStore

        store = PostgresStore(parse_location(url))
        with store.begin() as conn:
            store.update_manifest(conn, "search_defaults", None)
        store.close()


# --------------------------------------------------------------------------- query nodes catch up

def test_query_node_sees_whole_commits_and_one_version_per_key(pg_server, tmp_path):
    url = pg_server.url(schema=fresh_schema())
    with IndexBuilder.open(url, model="none") as b:
        b.add_documents([{"id": "a", "text": "東京の蕎麦は美味しい。"}, {"id": "b", "text": "大阪のうどん。"}])
    with Searcher.open(url, cache=tmp_path / "c", refresh_seconds=3600) as s:
        g0 = s.refresh()
        assert [x.doc_key for x in s.search("蕎麦", mode="lexical")] == ["a"]
        # Two writers open at once, both replacing key "a": the later commit wins whole.
        w1 = IndexBuilder.open(url, model="none")
        w2 = IndexBuilder.open(url, model="none")
        w1.add_documents([{"id": "a", "text": "札幌のラーメンは有名だ。"}, {"id": "c", "text": "京都の寺。"}])
        w2.add_documents([{"id": "a", "text": "那覇のそばは沖縄そば。"}])
        w1.close(), w2.close()
        w3 = IndexBuilder.open(url, model="none")
        w3.delete(["b"])
        w3.close()
        assert [x.doc_key for x in s.search("蕎麦", mode="lexical")] == ["a"]  # not refreshed yet: old commit
        assert s.refresh() == g0 + 3
        assert s.search("ラーメン", mode="lexical") == []
        assert [x.text for x in s.search("そば", mode="lexical")] == ["那覇のそばは沖縄そば。"]
        assert s.search("うどん", mode="lexical") == []
        assert s.info()["documents"] == 2


def test_deleted_or_damaged_cache_is_rebuilt(pair, tiny_embedder, tmp_path):
    d, _, url, root = pair
    cache = tmp_path / "node"
    with Searcher.open(url, embedder=tiny_embedder, cache=cache) as s:
        want = view(s.search(QUESTIONS[0], k=5))
    assert want == view(d.search(QUESTIONS[0], k=5))
    meta = cache / "meta.sqlite"
    data = bytearray(meta.read_bytes())
    data[100:4096] = os.urandom(3996)  # the header's tail and the first page: a damaged file
    meta.write_bytes(bytes(data))
    with Searcher.open(url, embedder=tiny_embedder, cache=cache) as s:
        assert view(s.search(QUESTIONS[0], k=5)) == want
    shutil.rmtree(cache)
    with Searcher.open(url, embedder=tiny_embedder, cache=cache) as s:
        assert view(s.search(QUESTIONS[0], k=5)) == want


def test_ivfpq_trained_once_and_shared_by_every_node(pg_server, tiny_embedder, tmp_path):
    url = pg_server.url(schema=fresh_schema())
    docs = [{"id": f"d{i:03d}", "text": SENTENCES[i % 8] + f"第{i}話。" + SENTENCES[(i * 5) % 8]} for i in range(260)]
    with IndexBuilder.open(url, model="tiny", embedder=tiny_embedder, ann=AnnConfig(kind="ivfpq", nlist=4)) as b:
        b.add_documents(docs)
    with Searcher.open(url, embedder=tiny_embedder, cache=tmp_path / "n1") as a, \
            Searcher.open(url, embedder=tiny_embedder, cache=tmp_path / "n2") as c:
        assert a.info()["ann"]["kind"] == "ivfpq"
        # The ANN's own (approximate) scores agree: one trained quantizer.
        got = a.search_batch(QUESTIONS[:5], k=10, mode="dense", rerank=False)
        assert [view(x) for x in got] == [view(x) for x in c.search_batch(QUESTIONS[:5], k=10, mode="dense",
                                                                          rerank=False)]
        assert all(got)
    from mitsuke.indexer.store.postgres import PostgresStore

    store = PostgresStore(parse_location(url), readonly=True)
    with store.begin() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM ann_training").scalar() == 1
    store.close()


# --------------------------------------------------------------------------- processes

def test_two_cli_writers_at_once_then_two_query_processes(pg_server, tmp_path):
    url = pg_server.url(schema=fresh_schema())
    files = sorted(p for p in DATA.iterdir() if p.suffix in (".txt", ".md"))
    halves = [tmp_path / "one", tmp_path / "two"]
    for i, h in enumerate(halves):
        h.mkdir()
        for f in files[i::2]:
            shutil.copy(f, h / f.name)
    args = ["--model", "none", "--batch-docs", "2", "--json"]
    procs = [subprocess.Popen([sys.executable, "-m", "mitsuke.cli", "index", str(h), "--index", url, *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for h in halves]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum(json.loads(o)["added"] for o, _ in outs) == len(files)
    directory = tmp_path / "dir"
    with IndexBuilder.open(directory, model="none") as b:
        b.add_paths([str(h) for h in halves])
    with Searcher.open(directory) as d:
        want = [[[h.doc_key, h.text, h.score, h.char_start] for h in hits]
                for hits in d.search_batch(QUESTIONS, k=5, mode="lexical")]
    script = ("import json, sys; from mitsuke import Searcher\n"
              "with Searcher.open(sys.argv[1], cache=sys.argv[2]) as s:\n"
              "    hits = s.search_batch(json.loads(sys.argv[3]), k=5, mode='lexical')\n"
              "print(json.dumps([[[h.doc_key, h.text, h.score, h.char_start] for h in x] for x in hits]))")
    nodes = [subprocess.Popen([sys.executable, "-c", script, url, str(tmp_path / f"node{i}"), json.dumps(QUESTIONS)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 2)]
    got = [n.communicate(timeout=300) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], got
    assert json.loads(got[0][0]) == json.loads(got[1][0]) == want
    assert all(want[:len(DEMO_QUESTIONS)])


def test_killed_writer_leaves_index_answering_and_rerun_completes(pg_server, tiny_model, tiny_embedder, tmp_path):
    url = pg_server.url(schema=fresh_schema())
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        text = SENTENCES[i % 8] + f"\n第{i}章。" + SENTENCES[(i + 3) % 8]
        (src / f"文書{i:02d}.txt").write_text(text, encoding="utf-8")
    log = tmp_path / "embedded.log"
    env = {"MITSUKE_TEST_EMBED_LOG": str(log), "MITSUKE_TEST_KILL_AT": "before_commit:3"}
    r = run_cli("index", src, "--index", url, "--model", tiny_model, "--batch-docs", "2", env=env)
    assert r.returncode == -9
    with Searcher.open(url, cache=tmp_path / "node", embedder=tiny_embedder) as s:
        assert s.info()["documents"] == 4  # two whole commits; the third rolled back
        assert s.search(SENTENCES[0][:6], mode="lexical")
    first = log.read_text(encoding="utf-8").splitlines()
    r = run_cli("index", src, "--index", url, "--model", tiny_model, "--batch-docs", "2", "--json",
                env={"MITSUKE_TEST_EMBED_LOG": str(log)})
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["unchanged"] == 4 and summary["added"] == 8
    lines = log.read_text(encoding="utf-8").splitlines()
    rerun = lines[len(first):]
    committed = first[:4]
    assert not set(committed) & set(rerun)  # nothing committed was embedded again
    directory = tmp_path / "dir"
    with IndexBuilder.open(directory, embedder=tiny_embedder) as b:
        b.add_paths([str(src)])
    with Searcher.open(url, cache=tmp_path / "node", embedder=tiny_embedder) as s, \
            Searcher.open(directory, embedder=tiny_embedder) as d:
        assert s.info()["documents"] == 12
        got, want = s.search_batch(QUESTIONS[:3], k=5), d.search_batch(QUESTIONS[:3], k=5)
        assert [view(x) for x in got] == [view(x) for x in want] and all(got)


# --------------------------------------------------------------------------- security

def test_password_never_in_any_output(pg_server, tmp_path):
    secret = "Pw" + uuid.uuid4().hex[:12]
    role = "r_" + uuid.uuid4().hex[:8]
    schema = fresh_schema()
    pg_server.sql(f"CREATE ROLE {role} LOGIN PASSWORD '{secret}'")
    pg_server.sql(f"CREATE SCHEMA {schema} AUTHORIZATION {role}")
    url = pg_server.url(user=role, password=secret, schema=schema)
    corpus = write_jsonl(tmp_path / "c.jsonl", EVAL_DOCS)
    queries = write_jsonl(tmp_path / "q.jsonl", [
        {"qid": "1", "question": "享保の将軍は誰？", "answers": ["徳川吉宗"], "doc_id": "享保",
         "answer_spans": [[15, 19]]}])
    cache = ["--cache", tmp_path / "cache"]
    runner = CliRunner()
    invoke = lambda *a: runner.invoke(cli, [str(x) for x in a])  # noqa: E731
    runs = [
        run_cli("-vv", "index", corpus, "--index", url, "--model", "none"),  # a real process, real stderr
        invoke("-vv", "search", "享保", "--index", url, *cache),
        invoke("-vv", "search", "享保", "--index", url, *cache, "--json"),
        invoke("-vv", "info", "--index", url, *cache),
        invoke("info", "--index", url, *cache, "--json"),
        invoke("-vv", "eval", "--index", url, *cache, "--queries", queries),
        invoke("eval", "--index", url, *cache, "--queries", queries, "--json"),
        # errors: a database that does not exist, a server that is not there, another model, no index there
        invoke("search", "享保", "--index", url.replace("/postgres?", "/nodb?"), *cache),
        invoke("index", corpus, "--index", url.replace(f":{pg_server.port}/", ":1/"), "--model", "none"),
        invoke("-vv", "index", corpus, "--index", url, "--model", "other-model"),
        invoke("search", "x", "--index", url.replace(schema, "no_such_schema"), "--cache", tmp_path / "c2"),
        run_cli("info", "--index", url.replace(f":{pg_server.port}/", ":1/"), "--cache", tmp_path / "c3"),
        run_cli("docs", "delete", "no-such-key", "--index", url, "--yes", env={"MITSUKE_CACHE": str(tmp_path / "c4")}),
        run_cli("-vv", "verify", "--index", url),
        invoke("tune", "--index", url, *cache, "--queries", queries),  # lexical-only: nothing to tune
    ]
    code = lambda r: r.returncode if hasattr(r, "returncode") else r.exit_code  # noqa: E731
    assert [code(r) for r in runs[:7]] == [0] * 7, [r.stderr for r in runs]
    assert all(code(r) == 1 for r in runs[7:]), [(code(r), r.stderr) for r in runs[7:]]
    for r in runs:
        assert secret not in r.stdout and secret not in r.stderr, (r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and getattr(r, "exception", None) in (None,) or \
            isinstance(r.exception, SystemExit), (r.stderr, getattr(r, "exception", None))
    assert "***" in runs[3].stdout and "享保" in runs[1].stdout
    for r in runs[7:]:
        assert len(r.stderr.strip().splitlines()) == 1 and "***" in r.stderr, r.stderr
    # Python callers may pass the parsed location instead of the URL text.
    with Searcher.open(parse_location(url), cache=tmp_path / "cache") as s:
        assert [p.doc_key for p in s.search("享保", mode="lexical")][:1] == ["享保"]


def test_least_privilege_role_works_on_its_own_schema_only(pg_server, tmp_path):
    role = "lp_" + uuid.uuid4().hex[:8]
    own, other = fresh_schema(), fresh_schema()
    pg_server.sql(f"CREATE ROLE {role} LOGIN")
    pg_server.sql(f"CREATE SCHEMA {own} AUTHORIZATION {role}")
    pg_server.sql(f"CREATE SCHEMA {other}")
    pg_server.sql("REVOKE CREATE ON DATABASE postgres FROM PUBLIC")
    reader = role + "_ro"  # the README's read-only role for query nodes
    pg_server.sql(f"CREATE ROLE {reader} LOGIN")
    pg_server.sql(f"GRANT USAGE ON SCHEMA {own} TO {reader}")
    pg_server.sql(f"ALTER DEFAULT PRIVILEGES FOR ROLE {role} IN SCHEMA {own} GRANT SELECT ON TABLES TO {reader}")
    url = pg_server.url(user=role, schema=own)
    with IndexBuilder.open(url, model="none") as b:
        b.add_documents(EVAL_DOCS)
    for user in (role, reader):
        with Searcher.open(pg_server.url(user=user, schema=own), cache=tmp_path / user) as s:
            assert [p.doc_key for p in s.search("徳川吉宗", mode="lexical")] == ["享保"]
    with pytest.raises(MitsukeError, match="permission denied"):
        IndexBuilder.open(pg_server.url(user=reader, schema=own), model="none")
    for schema in (other, "not_created_" + uuid.uuid4().hex[:6]):
        with pytest.raises(Exception) as err:
            IndexBuilder.open(pg_server.url(user=role, schema=schema), model="none")
        assert "permission denied" in str(err.value)


def test_a_read_only_node_first_on_an_ivfpq_index_answers_with_its_own_training(pg_server, tiny_embedder, tmp_path,
                                                                                 caplog):
    """The README's SELECT-only role may be the first node to need IVF-PQ: it trains locally and says so."""
    role = "w_" + uuid.uuid4().hex[:8]
    reader = role + "_ro"
    schema = fresh_schema()
    pg_server.sql(f"CREATE ROLE {role} LOGIN")
    pg_server.sql(f"CREATE SCHEMA {schema} AUTHORIZATION {role}")
    pg_server.sql(f"CREATE ROLE {reader} LOGIN")
    pg_server.sql(f"GRANT USAGE ON SCHEMA {schema} TO {reader}")
    pg_server.sql(f"ALTER DEFAULT PRIVILEGES FOR ROLE {role} IN SCHEMA {schema} GRANT SELECT ON TABLES TO {reader}")
    docs = [{"id": f"d{i:03d}", "text": SENTENCES[i % 8] + f"第{i}話。"} for i in range(260)]
    with IndexBuilder.open(pg_server.url(user=role, schema=schema), model="tiny", embedder=tiny_embedder,
                           ann=AnnConfig(kind="ivfpq", nlist=4)) as b:
        b.add_documents(docs)
    with caplog.at_level("WARNING", logger="mitsuke"):
        with Searcher.open(pg_server.url(user=reader, schema=schema), embedder=tiny_embedder,
                           cache=tmp_path / "ro") as s:
            assert s.info()["ann"]["kind"] == "ivfpq"
            assert all(s.search_batch(QUESTIONS[:3], k=5, mode="dense"))
    assert "keeps its own IVF-PQ training" in caplog.text and "permission denied" in caplog.text


def test_dry_run_and_prune_read_the_url_index(pg_server, tmp_path):
    """The plan (--dry-run, the --prune guard) reads the PostgreSQL index, also before its schema exists."""
    url = pg_server.url(schema=fresh_schema())
    corpus = write_jsonl(tmp_path / "c.jsonl", EVAL_DOCS)
    r = run_cli("index", corpus, "--index", url, "--model", "none", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["add"]) == len(EVAL_DOCS)
    assert run_cli("index", corpus, "--index", url, "--model", "none").returncode == 0
    r = run_cli("index", corpus, "--index", url, "--model", "none", "--dry-run", "--json")
    plan = json.loads(r.stdout)
    assert plan["add"] == [] and plan["unchanged"] == len(EVAL_DOCS), plan
    one = write_jsonl(tmp_path / "one.jsonl", EVAL_DOCS[:1])
    r = run_cli("index", one, "--index", url, "--model", "none", "--prune", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["deleted"] == len(EVAL_DOCS) - 1, r.stderr
    r = run_cli("verify", "--index", url)
    assert r.returncode == 1 and "PostgreSQL index" in r.stderr and len(r.stderr.strip().splitlines()) == 1
