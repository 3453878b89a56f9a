"""Errors raised by mitsuke. Every message names the bad value and the fix."""
from __future__ import annotations

__all__ = [
    "MitsukeError",
    "LoadError",
    "ModelError",
    "IndexFormatError",
    "DamagedIndexError",
    "StorageError",
    "ModelMismatchError",
    "LockedError",
    "QueryError",
]


class MitsukeError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class LoadError(MitsukeError):
    """A document could not be read. Carries the path so the run can report and go on."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ModelError(MitsukeError):
    """An embedding model could not be loaded or used."""


class IndexFormatError(MitsukeError):
    """An index directory is missing, damaged, or of an unknown format version."""


class DamagedIndexError(IndexFormatError):
    """A file of the index does not match its checksum or identity: it is never trusted nor written over."""


class StorageError(MitsukeError):
    """A file could not be written or read (disk full, read-only medium, permissions)."""


class ModelMismatchError(MitsukeError):
    """The index was built with another model than the one asked for."""


class LockedError(MitsukeError):
    """Another writer holds the index lock."""


class QueryError(MitsukeError, ValueError):
    """A search request cannot be answered as asked (bad mode, bad filter...)."""
