"""Where a model's files are: a local directory, or a hub id fetched (or found in the cache).

An unreachable hub fails within seconds with a :class:`ModelError` naming the
way out (a local directory, or ``--model none``), never after minutes of retries.

>>> resolve_model_dir("path/to/model")                  # doctest: +SKIP
(PosixPath('path/to/model'), None)
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from mitsuke.indexer.errors import ModelError

__all__ = ["resolve_model_dir"]

# What a hub download fetches: configs, tokenizer files and safetensors weights
# (not the .bin/.onnx/.h5 duplicates many repos also carry).
_ST_FILES = [
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "*/config.json",
    "config.json",
    "*.json",
    "*.model",
    "*.safetensors",
    "*.txt",
]
_HUB_CONNECT_TIMEOUT_S = 3.0
_NO_NETWORK_HINT = ("Without network access, download the model elsewhere and pass its local directory "
                   "with --model PATH, or build a lexical-only index with --model none.")


def _hub_reachable(timeout: float) -> bool:
    """A quick TCP connect to the hub, so a blocked network fails in seconds, not after retries."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a direct probe says nothing about a proxied route: let the download decide
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_model_dir(name_or_path: str, *, revision: str | None = None,
                      connect_timeout: float = _HUB_CONNECT_TIMEOUT_S) -> tuple[Path, str | None]:
    """A local directory for ``name_or_path`` (fetching a hub id at ``revision``), and its revision when known.

    A hub id is looked up in the local Hugging Face cache first when the hub
    cannot be reached (offline mode, or no TCP connection within
    ``connect_timeout`` seconds), so an unreachable hub fails fast with a
    :class:`ModelError` that names the way out.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path, None
    if path.exists():
        raise ModelError(f"model path {name_or_path!r} is a file; give the model's directory")
    looks_local = (name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
                   or os.sep != "/" and os.sep in name_or_path)
    if looks_local:
        raise ModelError(
            f"model directory {name_or_path!r} does not exist; give an existing local "
            "directory, a hub id such as sbintuitions/sarashina-embedding-v1-1b, or --model none"
        )
    from huggingface_hub import snapshot_download

    online = not _offline() and _hub_reachable(connect_timeout)
    try:
        if online:
            local = snapshot_download(name_or_path, revision=revision, allow_patterns=_ST_FILES, etag_timeout=10)
        else:
            local = snapshot_download(name_or_path, revision=revision, allow_patterns=_ST_FILES,
                                      local_files_only=True)
    except Exception as exc:  # network, auth, unknown repo, not cached: all end the same way for the user
        first = str(exc).splitlines()[0] if str(exc) else ""
        why = "the model hub cannot be reached and the model is not in the local cache" if not online else (
            f"{type(exc).__name__}: {first}")
        at = f" at revision {revision}" if revision else ""
        raise ModelError(f"cannot load model {name_or_path!r}{at}: {why}. {_NO_NETWORK_HINT}") from None
    name = Path(local).name
    revision = name if len(name) == 40 and all(c in "0123456789abcdef" for c in name) else None
    return Path(local), revision
