"""mitsuke serve is safe by default: loopback, API keys, refusals; and its small parts keep their invariants."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import unicodedata
from types import SimpleNamespace

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from servekit import MITSUKE, build_lexical, free_port, running_server

pytest.importorskip("fastapi")

KEY = "テスト用のAPIキー-0123456789abcdef"  # non-ASCII on purpose: compared as UTF-8 bytes


@pytest.fixture(scope="module")
def lex_index(tmp_path_factory):
    return build_lexical(tmp_path_factory.mktemp("safety") / "lex")


def _nothing_listens(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) != 0


def _serve(index, *args, env=None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "MITSUKE_API_KEY"} | (env or {})
    return subprocess.run([*MITSUKE, "serve", "--index", str(index), *args], capture_output=True, text=True,
                          encoding="utf-8", env=full_env, timeout=120)


def test_non_loopback_bind_without_a_key_refuses_to_start(lex_index):
    port = free_port()
    started = time.monotonic()
    out = _serve(lex_index, "--host", "0.0.0.0", "--port", str(port))
    assert out.returncode == 1
    assert "refusing to listen on 0.0.0.0" in out.stderr and "MITSUKE_API_KEY" in out.stderr
    assert "--insecure" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert _nothing_listens(port)
    assert time.monotonic() - started < 60
    for host in ("::", "192.0.2.1", "example.com"):  # never bound: refused before any socket opens
        out = _serve(lex_index, "--host", host, "--port", str(port))
        assert out.returncode == 1 and "refusing" in out.stderr, host


def test_bad_keys_are_refused_with_the_fix(lex_index, tmp_path):
    short = tmp_path / "short.key"
    short.write_text("abc\n")
    out = _serve(lex_index, "--host", "0.0.0.0", "--port", "1", "--api-key-file", str(short))
    assert out.returncode == 1 and "at least 16" in out.stderr and "secrets.token_urlsafe" in out.stderr
    out = _serve(lex_index, "--api-key-file", str(tmp_path / "missing.key"))
    assert out.returncode != 0 and "missing.key" in out.stderr and "Traceback" not in out.stderr
    out = _serve(tmp_path / "no-index")
    assert out.returncode == 1 and "not a mitsuke index" in out.stderr


def test_config_rules():
    from mitsuke.server.config import ConfigError, ServeConfig, is_loopback, read_api_key

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com", "localhost.evil.com", ""))
    ServeConfig(index="x", host="0.0.0.0", api_key=KEY).check_bind()
    ServeConfig(index="x", host="0.0.0.0", insecure=True).check_bind()
    with pytest.raises(ConfigError, match="refusing"):
        ServeConfig(index="x", host="10.1.2.3").check_bind()
    assert read_api_key(env={}) is None
    assert read_api_key(env={"MITSUKE_API_KEY": f"  {KEY}\n"}) == KEY
    with pytest.raises(ConfigError, match="MITSUKE_API_KEY"):
        read_api_key(env={"MITSUKE_API_KEY": "short"})


def test_api_key_is_required_when_set(lex_index, tmp_path):
    key_file = tmp_path / "api.key"
    key_file.write_text(KEY + "\nignored second line\n", encoding="utf-8")
    with running_server(lex_index, "--api-key-file", str(key_file), log=tmp_path / "auth.log") as (base, _):
        body = {"query": "空港", "k": 2}
        for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": KEY.encode()},
                        {"Authorization": b"Bearer " + KEY[:-1].encode()}, {"Authorization": b"Basic " + KEY.encode()}):
            r = httpx.post(base + "/search", json=body, headers=headers)
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert "Authorization: Bearer" in r.json()["error"]["message"]
        for path in ("/info", "/metrics", "/documents", "/documents/豊岡市.md"):
            assert httpx.get(base + path).status_code == 401, path
        ok = httpx.post(base + "/search", json=body, headers={"Authorization": b"Bearer " + KEY.encode()})
        assert ok.status_code == 200 and ok.json()["passages"]
        for path in ("/", "/healthz", "/readyz", "/openapi.json"):  # the page, health checks, API description
            assert httpx.get(base + path).status_code == 200, path
        assert httpx.get(base + "/metrics", headers={"Authorization": b"Bearer " + KEY.encode()}).status_code == 200


def test_cors_is_off_unless_configured(lex_index, tmp_path):
    origin = "http://127.0.0.1:9"
    with running_server(lex_index, "--cors-origin", origin, log=tmp_path / "cors.log") as (base, _):
        pre = httpx.options(base + "/search", headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                                       "Access-Control-Request-Headers": "content-type"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == origin
        other = httpx.post(base + "/search", json={"query": "空港"}, headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


# ---------------------------------------------------------------------- parts
def test_micro_batcher_groups_same_options_and_reports_errors():
    from mitsuke.indexer.errors import QueryError
    from mitsuke.server.batcher import MicroBatcher

    calls: list[tuple[list[str], dict]] = []

    def run(queries, options):
        calls.append((list(queries), options))
        time.sleep(0.05)
        if options.get("k") == 0:
            raise QueryError("k must be a positive integer, got 0")
        return [f"{q}/{options['k']}" for q in queries]

    async def main():
        b = MicroBatcher(run, max_batch=4)
        first = asyncio.ensure_future(b.submit("a", {"k": 1}))
        await asyncio.sleep(0.01)  # the first batch (a) runs; the rest queue behind it
        rest = [asyncio.ensure_future(b.submit(q, {"k": k})) for q, k in
                [("b", 1), ("c", 2), ("d", 1), ("e", 1), ("f", 1), ("g", 1), ("h", 0)]]
        out = await asyncio.gather(first, *rest, return_exceptions=True)
        await b.close()
        return out

    out = asyncio.run(main())
    assert out[:7] == ["a/1", "b/1", "c/2", "d/1", "e/1", "f/1", "g/1"]
    assert isinstance(out[7], QueryError)
    assert [c[0] for c in calls] == [["a"], ["b", "d", "e", "f"], ["c"], ["g"], ["h"]]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="豊岡市ﾄﾖｵｶｼトヨオカシｶﾞガＡａAa 「」😀\n", max_size=60),
       st.lists(st.sampled_from(["豊岡", "市", "トヨ", "ガ", "a", "「", "😀"]), max_size=4))
def test_term_spans_are_ordered_in_bounds_and_match_after_normalisation(text, terms):
    from mitsuke.search.highlight import term_spans

    spans = term_spans(text, sorted(set(terms), key=len, reverse=True))
    prev = 0
    for a, b in spans:
        assert prev <= a < b <= len(text)
        prev = b
        marked = unicodedata.normalize("NFKC", text[a:b]).lower()
        assert any(t in marked for t in terms)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="あいう\n 漢字ｶﾅ😀", min_size=1, max_size=80), st.data())
def test_rebuilt_text_keeps_every_offset(text, data):
    from mitsuke.server.service import rebuild_text

    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), min_size=2, max_size=8)))
    rows = [SimpleNamespace(char_start=a, char_end=b, text=text[a:b]) for a, b in zip(cuts, cuts[1:]) if b > a]
    # chunks overlap and leave gaps, as real ones may
    rows += [SimpleNamespace(char_start=a, char_end=min(len(text), a + 3), text=text[a:a + 3]) for a in cuts[:2]]
    rows = [r for r in rows if r.char_end > r.char_start]
    rebuilt, gaps = rebuild_text(len(text), rows)
    assert len(rebuilt) == len(text)
    for r in rows:
        assert rebuilt[r.char_start:r.char_end] == r.text
    covered = [False] * len(text)
    for r in rows:
        covered[r.char_start:r.char_end] = [True] * (r.char_end - r.char_start)
    assert [i for a, b in gaps for i in range(a, b)] == [i for i, c in enumerate(covered) if not c]
