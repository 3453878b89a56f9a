"""Helpers for the server tests: a real ``mitsuke serve`` process on 127.0.0.1 and a random free port."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from conftest import DATA

__all__ = ["free_port", "running_server", "build_lexical", "build_dense", "MITSUKE"]

MITSUKE = [sys.executable, "-m", "mitsuke.cli"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_lexical(path: Path) -> Path:
    from mitsuke.indexer.builder import IndexBuilder

    with IndexBuilder.open(path, "none") as b:
        b.add_paths([str(DATA)])
    return path


def build_dense(path: Path, model: Path) -> Path:
    from mitsuke.indexer.builder import IndexBuilder

    with IndexBuilder.open(path, str(model)) as b:
        b.add_paths([str(DATA)])
    return path


@contextmanager
def running_server(index: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120.0,
                   log: Path | None = None):
    """``mitsuke serve --index INDEX --port P ARGS`` until the block ends; yields (base url, process).

    Waits for /readyz to answer 200 (model loaded and warm). Output goes to ``log``.
    """
    port = free_port()
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen([*MITSUKE, "serve", "--index", str(index), "--port", str(port), "--log-level", "warning",
                             *args], stdout=out, stderr=subprocess.STDOUT, env=full_env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mitsuke serve exited with {proc.returncode}: "
                                   + (log.read_text(errors="replace") if log else ""))
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mitsuke serve not ready after {timeout} s")
            time.sleep(0.2)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()
