"""The on-disk format of an index directory: its file names and ``manifest.json``.

This module is the one owner of the format. Both the write side
(``IndexBuilder``) and the read side (``Searcher``) take paths from
:class:`IndexPaths` and read the manifest as a frozen, typed :class:`Manifest`;
nobody else spells a file name or a manifest key.

::

    manifest.json              format version, model, chunking, ANN config and state, generation, counts,
                               search defaults (``mitsuke tune --save``)
    meta.sqlite (+ -wal)       documents, chunks, FTS5 terms, state: the source of truth
    vectors.f16                float16 [rows, dim], append-only
    vectors.f16.compact-E      compaction's epoch-E copy, before it is renamed over vectors.f16
    vectors.f16.epoch-E        hard link keeping the retired epoch-E file readable
    ann.faiss                  derived ANN index of one generation
    LOCK                       single-writer lock

>>> m = Manifest.read("idx")                            # doctest: +SKIP
>>> m.model.name, m.chunking.max_tokens, m.ann_config.kind  # doctest: +SKIP
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

from mitsuke.indexer.ann import AnnParams, choose_params
from mitsuke.indexer.ann_record import AnnTuning
from mitsuke.indexer.config import AnnConfig, ChunkConfig
from mitsuke.indexer.durable import atomic_write_bytes
from mitsuke.indexer.errors import IndexFormatError, ModelMismatchError
from mitsuke.indexer.japanese import LEXICAL_ANALYSIS_VERSION
from mitsuke.indexer.search_record import SearchDefaults

__all__ = [
    "FORMAT", "FORMAT_VERSION", "MANIFEST_FILE", "META_FILE", "VECTORS_FILE", "ANN_FILE", "LOCK_FILE",
    "IndexPaths", "compact_path", "retired_path", "epoch_file",
    "ModelInfo", "AnnState", "Counts", "Manifest", "SearchDefaults",
]

FORMAT = "mitsuke-index"
FORMAT_VERSION = 1

MANIFEST_FILE = "manifest.json"
META_FILE = "meta.sqlite"
VECTORS_FILE = "vectors.f16"
ANN_FILE = "ann.faiss"
LOCK_FILE = "LOCK"
_COMPACT, _RETIRED = "compact", "epoch"


# --------------------------------------------------------------------------- paths

def compact_path(vectors: Path, epoch: int) -> Path:
    """Where compaction writes the rows of ``epoch`` before they become ``vectors``."""
    return vectors.with_name(f"{vectors.name}.{_COMPACT}-{epoch}")


def retired_path(vectors: Path, epoch: int) -> Path:
    """The hard link that keeps the file of a retired ``epoch`` readable for a while."""
    return vectors.with_name(f"{vectors.name}.{_RETIRED}-{epoch}")


def epoch_file(vectors: Path, candidate: Path) -> tuple[str, int] | None:
    """``("compact", E)`` or ``("retired", E)`` if ``candidate`` is one of ``vectors``' epoch files, else None."""
    prefix = vectors.name + "."
    if not candidate.name.startswith(prefix):
        return None
    kind, _, num = candidate.name[len(prefix):].partition("-")
    if not num.isdigit() or kind not in (_COMPACT, _RETIRED):
        return None
    return ("compact" if kind == _COMPACT else "retired"), int(num)


@dataclass(frozen=True)
class IndexPaths:
    """The files of the index directory ``root``."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_FILE

    @property
    def meta(self) -> Path:
        return self.root / META_FILE

    @property
    def vectors(self) -> Path:
        return self.root / VECTORS_FILE

    @property
    def ann(self) -> Path:
        return self.root / ANN_FILE

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    def sizes(self) -> dict[str, int]:
        """Bytes of each of the index's main files that exists (``mitsuke info``)."""
        out = {}
        for name in (MANIFEST_FILE, META_FILE, META_FILE + "-wal", VECTORS_FILE, ANN_FILE):
            p = self.root / name
            if p.exists():
                out[name] = p.stat().st_size
        return out


# --------------------------------------------------------------------------- manifest parts

class _Named(Protocol):
    @property
    def name(self) -> str: ...


class _HasModel(Protocol):
    """What the model check needs of an embedder (any ``mitsuke.Embedder``)."""

    @property
    def info(self) -> _Named: ...

    @property
    def dim(self) -> int: ...


@dataclass(frozen=True)
class ModelInfo:
    """What the manifest records about the model, and what a Searcher checks."""

    name: str
    revision: str | None
    dim: int
    pooling: str
    normalize: bool
    max_length: int
    prompts: dict[str, str] = field(default_factory=dict)
    path: str | None = None  # absolute directory of a local model, so a reader in another cwd finds it

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "revision": self.revision,
            "dim": self.dim,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_length": self.max_length,
            "prompts": dict(self.prompts),
            "path": self.path,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelInfo:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def source(self) -> str:
        """Where to load the model from: its recorded directory if still there, else its name."""
        return self.path if self.path and Path(self.path).is_dir() else self.name


@dataclass(frozen=True)
class AnnState:
    """The saved ``ann.faiss``: the parameters it was built with, the generation it holds, its size and CRC32.

    ``crc`` and ``size`` are None for a file saved before checksums were
    recorded: such a file is not trusted (it is rebuilt, it is derivable).
    """

    params: AnnParams
    generation: int = 0
    size: int | None = None
    crc: int | None = None
    index_id: str | None = None
    tuning: AnnTuning | None = None  # measured recall and the chosen nprobe / pool (indexer.ann_tune)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"params": self.params.to_dict(), "generation": self.generation}
        for key in ("size", "crc", "index_id"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.tuning is not None:
            out["tuning"] = self.tuning.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AnnState:
        params = AnnParams.from_dict(d["params"])
        tuning = AnnTuning.from_dict(d.get("tuning"))
        if tuning is not None and (params.kind != "ivfpq" or tuning.nlist != params.nlist):
            tuning = None  # measured on another index
        return cls(params, int(d.get("generation", 0)), _optional_int(d.get("size")), _optional_int(d.get("crc")),
                   None if d.get("index_id") is None else str(d["index_id"]), tuning)


@dataclass(frozen=True)
class Counts:
    """Documents and chunks at the manifest's generation (what ``mitsuke info`` shows without SQLite)."""

    documents: int = 0
    chunks: int = 0


def _section(path: Path, key: str, build: Any, value: Any) -> Any:
    try:
        return build(value)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise IndexFormatError(f"{path}: manifest entry {key!r} is invalid ({exc}); the index directory is damaged") \
            from None


# --------------------------------------------------------------------------- the manifest

@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` as typed, frozen values. Change one with :func:`dataclasses.replace`.

    ``model`` is None for a lexical-only index. ``lexical_analysis`` is None
    for an index written before the analysis version was recorded. ``extra``
    keeps keys this mitsuke does not know, so rewriting the manifest loses nothing.
    ``search_defaults`` is None until ``mitsuke tune --save`` stores some.
    """

    model: ModelInfo | None
    chunking: ChunkConfig
    ann_config: AnnConfig
    lexical_analysis: int | None = LEXICAL_ANALYSIS_VERSION
    ann: AnnState | None = None
    generation: int = 0
    counts: Counts = field(default_factory=Counts)
    created_at: float | None = None
    updated_at: float | None = None
    index_id: str | None = None  # a uuid, also in meta.sqlite's state: files of two indexes are told apart
    search_defaults: SearchDefaults | None = None  # hybrid settings chosen by `mitsuke tune --save`
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def new(cls, model: ModelInfo | None, chunking: ChunkConfig, ann_config: AnnConfig) -> Manifest:
        """The manifest of an empty index, written before ``meta.sqlite`` exists."""
        return cls(model=model, chunking=chunking, ann_config=ann_config, created_at=time.time(),
                   index_id=str(uuid.uuid4()))

    # ------------------------------------------------------------------ derived values
    @property
    def dim(self) -> int:
        """Vector dimension; 0 for a lexical-only index."""
        return self.model.dim if self.model else 0

    @property
    def model_name(self) -> str:
        """The model's name, ``"none"`` for a lexical-only index (as ``--model none`` spells it)."""
        return self.model.name if self.model else "none"

    @property
    def lexical_analysis_differs(self) -> bool:
        """Whether the index's FTS5 terms come from another lexical analysis than this mitsuke's."""
        return self.lexical_analysis is not None and self.lexical_analysis != LEXICAL_ANALYSIS_VERSION

    def ann_params(self, n: int) -> AnnParams:
        """The ANN parameters the recorded ``ann_config`` gives for ``n`` vectors (writer and reader alike)."""
        cfg = self.ann_config
        return choose_params(n, self.dim, cfg.kind, cfg.flat_threshold, nlist=cfg.nlist, nbits=cfg.nbits)

    # ------------------------------------------------------------------ the model check
    def check_model(self, index: str | Path, *, model: str | None = None, embedder: _HasModel | None = None,
                    writing: bool) -> None:
        """Refuse a model other than the one the index was built with (:class:`ModelMismatchError`).

        ``model`` is a name the caller asked for (``"none"``: lexical-only);
        ``embedder`` a ready embedder. A reader may bring an embedder to a
        lexical-only index (it is simply not used); a writer may not, it would
        add vectors to an index that has none.
        """
        have = self.model_name
        if model is not None and str(model) != have:
            raise ModelMismatchError(_mismatch(index, have, repr(str(model)), writing))
        if embedder is None or (self.model is None and not writing):
            return
        got = str(embedder.info.name)
        if got != have:
            asked = repr(got) if writing else f"{got!r} ({embedder.dim}-dim)"
            raise ModelMismatchError(_mismatch(index, have, asked, writing))
        self.check_dim(embedder)

    def check_dim(self, embedder: _HasModel) -> None:
        """Refuse an embedder of the index's own model that gives vectors of another dimension.

        Also the check after loading the recorded model (whose name is then a
        load location, e.g. the recorded directory, not the recorded name).
        """
        if self.model is not None and embedder.dim != self.dim:
            raise ModelMismatchError(
                f"model {self.model.name!r} now gives {embedder.dim}-dim vectors, the index holds {self.dim}")

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        """The JSON object ``manifest.json`` holds (the keys every mitsuke since format 1 wrote)."""
        data: dict[str, Any] = dict(self.extra)
        data.update({
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.model.to_dict() if self.model else None,
            "chunking": asdict(self.chunking),
            "ann_config": _ann_config_json(self.ann_config),
            "ann": self.ann.to_dict() if self.ann else None,
            "generation": self.generation,
            "counts": asdict(self.counts),
        })
        for key in ("lexical_analysis", "created_at", "updated_at", "index_id"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.search_defaults is not None:  # written only when set: older readers keep it in ``extra``
            data["search_defaults"] = self.search_defaults.to_dict()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: str | Path = MANIFEST_FILE) -> Manifest:
        """Check and convert a ``manifest.json`` object; ``path`` names the file in errors."""
        path = Path(path)
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise IndexFormatError(f"{path}: not a mitsuke index manifest")
        version = _section(path, "format_version", int, data.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise IndexFormatError(
                f"{path}: index format {data.get('format_version')} is newer than this mitsuke "
                f"understands ({FORMAT_VERSION}); upgrade mitsuke"
            )
        for key in ("model", "chunking", "ann_config"):
            if key not in data:
                raise IndexFormatError(f"{path}: manifest has no {key!r} entry; the index directory is damaged")
        known = {f.name for f in fields(cls)} | {"format", "format_version"}
        ann = data.get("ann")
        return cls(
            model=_section(path, "model", ModelInfo.from_dict, data["model"]) if data["model"] else None,
            chunking=_section(path, "chunking", lambda d: ChunkConfig(**d), data["chunking"]),
            ann_config=_section(path, "ann_config", lambda d: AnnConfig(**d), data["ann_config"]),
            lexical_analysis=_section(path, "lexical_analysis", _optional_int, data.get("lexical_analysis")),
            ann=_section(path, "ann", AnnState.from_dict, ann) if ann else None,
            generation=_section(path, "generation", int, data.get("generation", 0)),
            counts=_section(path, "counts", lambda d: Counts(**d), data.get("counts") or {}),
            created_at=_section(path, "created_at", _optional_float, data.get("created_at")),
            updated_at=_section(path, "updated_at", _optional_float, data.get("updated_at")),
            index_id=_section(path, "index_id", lambda v: None if v is None else str(v), data.get("index_id")),
            search_defaults=_section(path, "search_defaults", SearchDefaults.from_dict, data["search_defaults"])
            if data.get("search_defaults") is not None else None,
            extra={k: v for k, v in data.items() if k not in known},
        )

    # ------------------------------------------------------------------ files
    @classmethod
    def read(cls, index: str | Path) -> Manifest | None:
        """The manifest of the index directory ``index``; None if it has none."""
        path = IndexPaths(index).manifest
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise IndexFormatError(f"{path}: unreadable manifest ({exc}); the index directory is damaged") from None
        return cls.from_json(data, path)

    def write(self, index: str | Path) -> Manifest:
        """Replace ``index``'s manifest atomically; returns this manifest stamped with ``updated_at``."""
        stamped = replace(self, updated_at=time.time())
        text = json.dumps(stamped.to_json(), ensure_ascii=False, indent=2, sort_keys=True)
        atomic_write_bytes(IndexPaths(index).manifest, text.encode("utf-8"))
        return stamped


# ann_config keys of format 1 as first written; later ones are written only when set, so an index
# keeps opening in a mitsuke that does not know them (AnnConfig(**d) would refuse an unknown key).
_ANN_CONFIG_V1 = ("kind", "flat_threshold", "nlist")


def _ann_config_json(cfg: AnnConfig) -> dict[str, Any]:
    default = AnnConfig()
    return {k: v for k, v in asdict(cfg).items() if k in _ANN_CONFIG_V1 or v != getattr(default, k)}


def _mismatch(index: str | Path, have: str, wanted: str, writing: bool) -> str:
    if writing:
        return (f"index {index} was built with model {have!r}, not {wanted}; "
                "use the same model, or build a new index in another directory")
    return f"index {index} was built with model {have!r}; it cannot be queried with {wanted}"


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)
