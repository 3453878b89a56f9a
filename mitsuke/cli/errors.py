"""The one line a failure the library did not name becomes (disk full, read-only, a damaged database)."""
from __future__ import annotations

import errno

__all__ = ["one_line"]

_OS_HINTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "the file is too large (file size limit)",
}


def one_line(exc: BaseException) -> str | None:
    """A one-line message for ``exc``; None for an error that is a bug (the traceback is then kept)."""
    if isinstance(exc, OSError):
        where = exc.filename or "a file"
        hint = _OS_HINTS.get(exc.errno or 0, exc.strerror or str(exc))
        return f"{where}: {hint}"
    if isinstance(exc, RecursionError):
        return "a value is nested too deeply to process"
    if isinstance(exc, MemoryError):
        return "out of memory"
    from mitsuke.indexer.store import StoreError

    if isinstance(exc, StoreError):
        why = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        if "full" in why:
            return f"meta.sqlite: {why} (the disk is full)"
        if "disk I/O" in why:
            return f"meta.sqlite: {why}: the disk may be full, over a file size limit or failing"
        if "readonly" in why or "read-only" in why:
            return f"meta.sqlite: {why}; writing needs a writable index directory (searching does not)"
        return f"meta.sqlite: {why}; run `mitsuke verify --index DIR`"
    return None
