"""Settings of ``mitsuke serve``: where it listens, who may ask, and how much one request may ask for."""
from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mitsuke.indexer.errors import MitsukeError

__all__ = ["ServeConfig", "ConfigError", "is_loopback", "read_api_key", "API_KEY_ENV", "DEFAULT_PORT"]

API_KEY_ENV = "MITSUKE_API_KEY"
DEFAULT_PORT = 8765
# Shortest key accepted: a short one is guessable at network speed.
MIN_KEY_CHARS = 16


class ConfigError(MitsukeError):
    """The server cannot start as configured (unsafe bind, unreadable key file...)."""


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: 127.0.0.0/8, ::1 and ``localhost``."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def read_api_key(key_file: str | Path | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The API key from ``key_file`` (first line) or the ``MITSUKE_API_KEY`` environment variable; None if neither.

    Raises ConfigError for an unreadable or empty file, or a key shorter than 16 characters.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    if key_file is not None:
        try:
            lines = Path(key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--api-key-file {key_file}: cannot read it ({exc}); give a UTF-8 file holding the key"
                              ) from None
        key = lines[0].strip() if lines else ""
        where = f"--api-key-file {key_file}"
    else:
        key = (environ.get(API_KEY_ENV) or "").strip()
        if not key:
            return None
        where = f"${API_KEY_ENV}"
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(f"{where}: the API key has {len(key)} characters, at least {MIN_KEY_CHARS} are needed; "
                          "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return key


@dataclass
class ServeConfig:
    """Everything ``create_app`` needs; the defaults are the safe ones.

    - ``api_key``: when set, every request except ``/``, ``/healthz``,
      ``/readyz``, ``/docs`` and ``/openapi.json`` needs ``Authorization: Bearer <key>``.
    - limits: query length in characters, ``k``, queries per batch, request body bytes.
    - ``cors_origins``: origins allowed to call the API from a browser (none: CORS off).
    - ``batch_max``: most queries embedded in one forward pass by the micro-batcher.
    """

    index: str | Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_key: str | None = None
    insecure: bool = False
    device: str = "auto"
    max_query_chars: int = 2000
    max_k: int = 200
    max_batch: int = 64
    max_body_bytes: int = 1 << 20
    cors_origins: list[str] = field(default_factory=list)
    batch_max: int = 64
    warm: bool = True

    def check_bind(self) -> None:
        """Refuse a non-loopback bind without an API key (unless ``insecure``)."""
        if not is_loopback(self.host) and not self.api_key and not self.insecure:
            raise ConfigError(
                f"refusing to listen on {self.host}: it is reachable from other machines and no API key is set; "
                f"set {API_KEY_ENV} or --api-key-file FILE (clients send 'Authorization: Bearer KEY'), "
                "or pass --insecure to serve without one")
