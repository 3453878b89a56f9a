"""manifest.json, atomic file replacement, and the single-writer lock."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from mitsuke.indexer.errors import IndexFormatError, LockedError

__all__ = ["FORMAT", "FORMAT_VERSION", "read_manifest", "write_manifest", "atomic_write_bytes", "fsync_dir",
           "WriterLock", "fault_point"]

FORMAT = "mitsuke-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


_FAULT_HITS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """A named moment of the write path where the crash tests can kill or stall the process.

    ``MITSUKE_TEST_KILL_AT=name[:n]`` sends SIGKILL to this process the n-th
    time (default 1st) ``name`` is reached; ``MITSUKE_TEST_SLEEP=name:seconds[,...]``
    sleeps there, widening the window for a kill from outside. Unset (always,
    outside tests) this is one dictionary lookup.
    """
    kill_at = os.environ.get("MITSUKE_TEST_KILL_AT")
    sleep_at = os.environ.get("MITSUKE_TEST_SLEEP")
    if not kill_at and not sleep_at:
        return
    hits = _FAULT_HITS[name] = _FAULT_HITS.get(name, 0) + 1
    for item in (sleep_at or "").split(","):
        point, _, secs = item.rpartition(":")
        if point == name:
            time.sleep(float(secs or 0.1))
    if kill_at:
        point, _, nth = kill_at.rpartition(":")
        if not nth.isdigit():  # names may hold colons (before_replace:manifest.json); the count is optional
            point, nth = kill_at, "1"
        if point == name and hits == int(nth):
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(directory: str | Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file, fsync, ``os.replace`` (invariant 4)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    fault_point("before_replace:" + path.name)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_manifest(index_dir: str | Path) -> dict[str, Any] | None:
    path = Path(index_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{path}: unreadable manifest ({exc}); the index directory is damaged") from None
    if data.get("format") != FORMAT:
        raise IndexFormatError(f"{path}: not a mitsuke index manifest")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise IndexFormatError(
            f"{path}: index format {data.get('format_version')} is newer than this mitsuke "
            f"understands ({FORMAT_VERSION}); upgrade mitsuke"
        )
    return data


def write_manifest(index_dir: str | Path, manifest: dict[str, Any]) -> None:
    manifest = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION, updated_at=time.time())
    atomic_write_bytes(Path(index_dir) / MANIFEST,
                       json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True).encode("utf-8"))


class WriterLock:
    """An exclusive ``flock`` on ``LOCK``; released by the OS if the holder dies (even kill -9)."""

    def __init__(self, index_dir: str | Path) -> None:
        self.path = Path(index_dir) / "LOCK"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise LockedError(
                    f"index {self.path.parent} is being written by another process (pid {holder}); "
                    "wait for it to finish, there can be only one writer"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
