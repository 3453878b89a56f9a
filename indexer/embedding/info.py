"""What an index records about its embedding model: :class:`ModelInfo`.

>>> ModelInfo("m", None, 64, "mean", True, 128).to_dict()["dim"]
64
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ModelInfo"]


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

    @staticmethod
    def source(recorded: dict[str, Any]) -> str:
        """Where to load a manifest's model from: its recorded directory if still there, else its name."""
        path = recorded.get("path")
        return path if path and Path(path).is_dir() else recorded["name"]
