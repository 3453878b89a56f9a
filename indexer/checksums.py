"""Checksums of ``vectors.f16`` and ``ann.faiss``: what makes a damaged or foreign file detectable.

``vectors.f16`` is checked per block of :data:`BLOCK_ROWS` rows: block ``b``
covers rows ``[b * BLOCK_ROWS, (b + 1) * BLOCK_ROWS)`` and its CRC32 covers
the rows of it that are committed (``rows``; only the last block is partial).
The checksums live in the store (table ``vector_blocks``) and are written in
the same transaction that makes the rows live, so a reader's snapshot always
holds the checksums of the rows it may read. CRC32 extends: appending rows to
a partial block continues its CRC from the stored value, the old rows are not
read again.

Readers check lazily, each block once, when a row of it is first read (time
proportional to what is read); ``mitsuke verify`` checks every block.

``ann.faiss`` has one CRC32 over the whole file, recorded in the manifest
when it is saved and checked before FAISS reads a byte of it: a crafted
length field in a file that does not match never reaches ``read_index``.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BLOCK_ROWS", "Block", "extend_blocks", "blocks_of_rows", "file_crc32", "block_crc", "file_blocks"]

BLOCK_ROWS = 64
_READ = 1 << 20


@dataclass(frozen=True)
class Block:
    """The checksum of the first ``rows`` rows of one block."""

    rows: int
    crc: int


def blocks_of_rows(rows: Iterable[int]) -> set[int]:
    """The blocks that hold ``rows``."""
    return {int(r) // BLOCK_ROWS for r in rows}


def extend_blocks(sums: Mapping[int, Block], first_row: int, data: bytes, row_bytes: int) -> dict[int, Block]:
    """The blocks changed by writing ``data`` (whole rows) at ``first_row``, after the rows of ``sums``.

    ``first_row`` must be the first row past the committed ones, so the only
    block it can share with earlier rows is the partial last block, whose CRC
    is continued.
    """
    n = len(data) // row_bytes
    out: dict[int, Block] = {}
    row = first_row
    pos = 0
    while row < first_row + n:
        b = row // BLOCK_ROWS
        start = b * BLOCK_ROWS
        take = min(start + BLOCK_ROWS, first_row + n) - row
        prev = out.get(b) or sums.get(b)
        if prev is not None and start + prev.rows != row:
            raise ValueError(f"block {b} holds {prev.rows} rows; rows cannot be added at {row}")
        crc = zlib.crc32(data[pos:pos + take * row_bytes], prev.crc if prev else 0)
        out[b] = Block((prev.rows if prev else 0) + take, crc)
        row += take
        pos += take * row_bytes
    return out


def file_blocks(path: str | Path, row_bytes: int, rows: int) -> dict[int, Block]:
    """The block checksums of the first ``rows`` rows of the file at ``path``."""
    out: dict[int, Block] = {}
    step = BLOCK_ROWS * row_bytes
    with open(path, "rb") as fh:
        for b in range((rows + BLOCK_ROWS - 1) // BLOCK_ROWS):
            n = min(BLOCK_ROWS, rows - b * BLOCK_ROWS)
            data = fh.read(n * row_bytes)
            if len(data) != n * row_bytes:
                raise ValueError(f"{path} ends inside block {b}")
            out[b] = Block(n, zlib.crc32(data))
    del step
    return out


def block_crc(data: bytes) -> int:
    """CRC32 of a block's bytes."""
    return zlib.crc32(data)


def file_crc32(path: str | Path) -> tuple[int, int]:
    """(size, CRC32) of a file, read in 1 MiB pieces."""
    crc = 0
    size = 0
    with open(path, "rb") as fh:
        while True:
            piece = fh.read(_READ)
            if not piece:
                return size, crc
            size += len(piece)
            crc = zlib.crc32(piece, crc)
