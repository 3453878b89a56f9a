"""Durable file operations every writer of an index shares.

Atomic replacement (DESIGN.md invariant 4: temp file, fsync, ``os.replace``,
fsync of the directory) is written here once; the manifest, ``ann.faiss`` and
the compacted ``vectors.f16`` all go through it. The single-writer lock and
the crash tests' fault points live here too, because they are part of the same
protocol: what a kill at any moment leaves on disk.

>>> atomic_write_bytes("idx/manifest.json", b"{}")                 # doctest: +SKIP
>>> atomic_write("idx/ann.faiss", lambda tmp: faiss.write_index(index, str(tmp)))  # doctest: +SKIP
"""
from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mitsuke.indexer.errors import LockedError, StorageError

__all__ = ["fault_point", "fsync_dir", "replace_file", "atomic_write", "atomic_write_bytes", "temp_path",
           "leftover_temp_files", "WriterLock"]

_FAULT_HITS: dict[str, int] = {}
_TEMP_SUFFIX = ".tmp"


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
    """Make a directory's entries (a rename, a new link) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path: str | Path) -> Path:
    """Where an atomic write of ``path`` stages its data: a hidden name of this process in the same directory."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}{_TEMP_SUFFIX}")


def leftover_temp_files(directory: str | Path) -> Iterator[Path]:
    """Staged files of atomic writes that a killed writer never renamed (the lock holder removes them)."""
    return Path(directory).glob(f".*{_TEMP_SUFFIX}")


def replace_file(source: str | Path, target: str | Path) -> None:
    """Rename an already fsynced ``source`` over ``target`` and make the rename durable."""
    target = Path(target)
    fault_point("before_replace:" + target.name)
    os.replace(source, target)
    fsync_dir(target.parent)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Replace ``path`` with what ``write(tmp)`` puts in a temp file: write, fsync, rename (invariant 4).

    A kill at any moment leaves either the old file or the new one at ``path``,
    never a mix; at worst a temp file that :func:`leftover_temp_files` finds.
    """
    path = Path(path)
    tmp = temp_path(path)
    write(tmp)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    replace_file(tmp, path)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """:func:`atomic_write` of ``data``."""
    def write(tmp: Path) -> None:
        Path(tmp).write_bytes(data)

    atomic_write(path, write)


class WriterLock:
    """An exclusive ``flock`` on the index's lock file; released by the OS if the holder dies (even kill -9).

    ``path`` is the lock file itself (``IndexPaths.lock``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._ident: tuple[int, int] = (0, 0)

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot open the writer lock ({exc.strerror}); writing needs a "
                               "writable index directory (searching does not)") from None
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
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:  # the disk is full or read-only: say so, leave nothing held
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise StorageError(f"{self.path}: cannot write the writer lock ({exc.strerror})"
                               + ("; the disk is full" if exc.errno == errno.ENOSPC else "")) from None
        st = os.fstat(fd)
        self._ident = (st.st_dev, st.st_ino)
        self._fd = fd

    def ensure_valid(self) -> None:
        """Stop before a commit if the lock file was removed or replaced while held (Lucene's ``ensureValid``).

        Another writer could then have taken a lock on the new file, and two
        writers would commit to one index.
        """
        if self._fd is None:
            return
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._ident
        except FileNotFoundError:
            same = False
        if not same:
            raise LockedError(
                f"{self.path} was removed or replaced while this writer held it: another writer may be "
                "running; stopped before committing. Make sure no other `mitsuke index` runs on "
                f"{self.path.parent}, then run `mitsuke verify --index {self.path.parent}`")

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
