"""``mitsuke verify`` and ``mitsuke repair``: the full check of an index directory, and what can be fixed.

``verify_index`` reads everything (time proportional to the index): SQLite's
quick_check (the store's ``quick_check``), the identity of the files (index id, dimension),
every block checksum of ``vectors.f16``, that every live vector is finite and
unit length, ``ann.faiss`` against its recorded checksum and its ids against
the live chunks. It never writes.

``repair_index`` rebuilds what is derivable (``ann.faiss``), moves damaged
vectors aside and embeds the lost chunks again from their stored text when
the model is available (else marks their documents for the next
``mitsuke index``), and reports what it cannot fix: primary data
(``meta.sqlite``, the manifest) is never recreated.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mitsuke.indexer.checksums import BLOCK_ROWS
from mitsuke.indexer.errors import MitsukeError, ModelError
from mitsuke.indexer.identity import check_identity
from mitsuke.indexer.layout import ANN_FILE, MANIFEST_FILE, META_FILE, VECTORS_FILE, IndexPaths, Manifest
from mitsuke.indexer.recovery import live_count, untrusted_ann
from mitsuke.indexer.salvage import _ranges
from mitsuke.indexer.store import MetadataStore, StoreError
from mitsuke.indexer.vectors import VectorStore

__all__ = ["Problem", "verify_index", "repair_index", "RepairReport", "UNIT_TOLERANCE"]

log = logging.getLogger("mitsuke")

# float16 rounding moves a unit vector's norm by ~1e-3; more than this is damage.
UNIT_TOLERANCE = 0.02
_BATCH = 65536


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file; ``derived``: ``mitsuke repair`` rebuilds it."""

    file: str
    problem: str
    derived: bool = False

    def __str__(self) -> str:
        return f"{self.file}: {self.problem}"


def verify_index(path: str | Path) -> list[Problem]:
    """Every problem found in the index at ``path`` (empty: healthy)."""
    _refuse_url(path)
    paths = IndexPaths(path)
    try:
        manifest = Manifest.read(path)
    except MitsukeError as exc:
        return [Problem(MANIFEST_FILE, str(exc))]
    if manifest is None:
        return [Problem(MANIFEST_FILE, f"missing: {path} is not a mitsuke index")]
    if not paths.meta.exists() or paths.meta.stat().st_size == 0:
        return [Problem(META_FILE, "missing" if not paths.meta.exists() else "empty")]
    store = MetadataStore(paths.meta, readonly=True)
    try:
        with store.snapshot() as snap:
            return _verify(paths, manifest, store, snap)
    except StoreError as exc:
        why = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        return [Problem(META_FILE, f"unreadable ({why})")]
    finally:
        store.close()


def _verify(paths: IndexPaths, manifest: Manifest, store, snap) -> list[Problem]:
    out: list[Problem] = []
    checks = store.quick_check(snap.conn)
    if checks:
        return [Problem(META_FILE, f"quick_check: {c}") for c in checks[:10]]
    try:
        check_identity(manifest, snap.state("index_id"), snap.state("dim"), paths)
    except MitsukeError as exc:
        return [Problem(META_FILE, str(exc))]
    bad = snap.integrity()
    for key, n in bad.items():
        if n:
            out.append(Problem(META_FILE, f"{n} {key.replace('_', ' ')}"))
    if not manifest.dim:
        return out
    out += _verify_vectors(paths, manifest, store, snap)
    if manifest.ann is not None and paths.ann.exists():
        out += _verify_ann(paths, manifest, store, snap)
    return out


def _verify_vectors(paths: IndexPaths, manifest: Manifest, store, snap) -> list[Problem]:
    out: list[Problem] = []
    committed = snap.vector_rows()
    vectors = VectorStore(paths.vectors, manifest.dim)
    have = vectors.rows_on_disk
    if committed and not paths.vectors.exists():
        return [Problem(VECTORS_FILE, f"missing; {committed} vector rows are committed: run `mitsuke repair`")]
    if have < committed:
        out.append(Problem(VECTORS_FILE, f"holds {have} rows, {committed} are committed: "
                                         f"{committed - have} vectors lost; run `mitsuke repair`"))
    sums = snap.block_checksums()
    if committed and not sums:
        out.append(Problem(VECTORS_FILE, "has no checksums recorded (written by an older mitsuke); "
                                         "`mitsuke repair` records them", derived=True))
    damaged = [b for b in vectors.damaged_blocks(sums, committed)
               if b in sums and b * BLOCK_ROWS + sums[b].rows <= have]
    if damaged:
        rows = sum(sums[b].rows for b in damaged)
        out.append(Problem(VECTORS_FILE, f"{rows} rows in blocks {_ranges(damaged)} (of {BLOCK_ROWS} rows) do not "
                                         "match their checksums; run `mitsuke repair`"))
    live = snap.live_vectors(by_row=True)
    readable = np.array([r for _, r in live if r < have], dtype=np.int64)
    if have:
        m = np.memmap(paths.vectors, dtype=np.float16, mode="r", shape=(have, manifest.dim))
        nonfinite = off_unit = 0
        for i in range(0, len(readable), _BATCH):
            x = np.asarray(m[readable[i:i + _BATCH]], dtype=np.float32)
            finite = np.isfinite(x).all(axis=1)
            nonfinite += int((~finite).sum())
            norms = np.linalg.norm(np.where(np.isfinite(x), x, 0), axis=1)
            off_unit += int((finite & (np.abs(norms - 1) > UNIT_TOLERANCE)).sum())
        del m
        if nonfinite:
            out.append(Problem(VECTORS_FILE, f"{nonfinite} live vectors hold NaN or infinity"))
        if off_unit:
            out.append(Problem(VECTORS_FILE, f"{off_unit} live vectors are not unit length"))
    with_none = len(store.chunks_without_vectors(snap.conn))
    if with_none:
        out.append(Problem(VECTORS_FILE, f"{with_none} chunks have no vector (lost earlier): run `mitsuke repair` "
                                         "with the index's model, or `mitsuke index` of their documents"))
    return out


def _verify_ann(paths: IndexPaths, manifest: Manifest, store, snap) -> list[Problem]:
    from mitsuke.indexer.ann import AnnIndex, _faiss

    assert manifest.ann is not None  # the caller checks
    why = untrusted_ann(paths.ann, manifest.ann, manifest.index_id)
    if why is not None:
        return [Problem(ANN_FILE, f"{why}; it is rebuilt from the stored vectors when opened, "
                                  "`mitsuke repair` saves a new one", derived=True)]
    try:
        ann = AnnIndex.load(paths.ann, manifest.ann.params)
    except Exception as exc:  # FAISS raises RuntimeError on damaged files
        return [Problem(ANN_FILE, f"unreadable ({exc}); `mitsuke repair` rebuilds it", derived=True)]
    if manifest.ann.generation != snap.generation:
        return []  # an older generation is caught up on open; its ids are not the live ones yet
    want = {c for c, _ in snap.live_vectors()}
    if ann.ntotal != live_count(store, snap.conn):
        return [Problem(ANN_FILE, f"holds {ann.ntotal} vectors for {len(want)} live chunks; `mitsuke repair` "
                                  "rebuilds it", derived=True)]
    faiss = _faiss()
    if isinstance(ann.index, faiss.IndexIDMap2):
        ids = set(faiss.vector_to_array(ann.index.id_map).tolist())
    else:
        invlists = ann.index.invlists
        ids = set()
        for li in range(invlists.nlist):
            n = invlists.list_size(li)
            if n:
                ids.update(faiss.rev_swig_ptr(invlists.get_ids(li), n).tolist())
    if ids != want:
        return [Problem(ANN_FILE, f"holds {len(ids - want)} ids that are not live chunks and misses "
                                  f"{len(want - ids)}; `mitsuke repair` rebuilds it", derived=True)]
    return []


@dataclass
class RepairReport:
    """What ``repair_index`` did and what is still wrong."""

    lost_chunks: int = 0
    reembedded: int = 0
    marked_documents: int = 0
    kept_damaged_file: str | None = None
    ann_rebuilt: bool = False
    model_error: str | None = None
    remaining: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["remaining"] = [{"file": p.file, "problem": p.problem} for p in self.remaining]
        return d


def repair_index(path: str | Path, *, device: str = "auto", trust_remote_code: bool = False) -> RepairReport:
    """Fix what can be fixed in the index at ``path`` (see the module docstring)."""
    from mitsuke.indexer.builder import IndexBuilder
    from mitsuke.indexer.config import EmbedConfig

    _refuse_url(path)
    report = RepairReport()
    first = verify_index(path)
    primary = [p for p in first if p.file in (MANIFEST_FILE, META_FILE)]
    if primary:
        report.remaining = primary  # not derivable: never recreated
        return report
    embed = EmbedConfig(device=device, trust_remote_code=trust_remote_code)
    try:
        builder = IndexBuilder.open(path, embed=embed)
    except ModelError as exc:
        report.model_error = str(exc)
        builder = IndexBuilder.open(path, embed=embed, load_model=False)
    assert isinstance(builder, IndexBuilder)  # _refuse_url above: a directory, never a PostgreSQL writer
    with builder:
        s = builder.salvage
        report.lost_chunks, report.reembedded = s.lost_chunks, s.reembedded
        report.marked_documents, report.kept_damaged_file = s.marked_documents, s.kept_as
        report.reembedded += builder.reembed_missing()
        if builder.vectors is not None:
            builder.rebuild_ann()
            report.ann_rebuilt = True
    report.remaining = verify_index(path)
    return report


def _refuse_url(path: str | Path) -> None:
    """A PostgreSQL index has no files to check: say what to do instead."""
    from mitsuke.indexer.location import display, is_url

    if is_url(path):
        raise MitsukeError(f"{display(path)} is a PostgreSQL index: PostgreSQL checks its own data (amcheck, "
                           "backups); a query node's cache is checked when opened and rebuilt from the database "
                           "if damaged. `mitsuke verify --index CACHE_DIR` checks one cache")
