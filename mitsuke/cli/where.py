"""A warning for ``--where`` keys that no document has (instead of a silent empty answer)."""
from __future__ import annotations

from typing import Any

import click

__all__ = ["warn_unknown_keys"]


def warn_unknown_keys(searcher: Any, where: dict[str, Any]) -> None:
    """Warn on stderr about each ``where`` key that is neither a built-in field nor any document's metadata key."""
    from mitsuke.search.filters import BUILTIN_FIELDS

    unknown = [k for k in where if k not in BUILTIN_FIELDS]
    if not unknown:
        return
    with searcher.store.snapshot() as snap:
        keys = snap.metadata_keys()
    for key in unknown:
        if key not in keys:
            have = ", ".join(sorted(keys)) or "none"
            click.echo(f"mitsuke: warning: no document has the --where key {key!r}, so nothing can match; "
                       f"fields: {', '.join(BUILTIN_FIELDS)}; metadata keys: {have}", err=True)
