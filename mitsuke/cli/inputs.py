"""Checks on the inputs of ``mitsuke index`` and ``mitsuke chunk`` before anything is read or written."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import click

from mitsuke.cli.terminal import printable

__all__ = ["unreadable_inputs", "refuse_if_nothing_readable", "report_failures", "report_ignored"]


def unreadable_inputs(paths: tuple[str, ...]) -> list[tuple[str, str]]:
    """``(path, reason)`` for each input path that is missing or cannot be read as a whole."""
    out = []
    for raw in paths:
        if raw == "-":
            continue
        p = Path(raw)
        if not p.exists():
            out.append((raw, "broken symlink" if p.is_symlink() else "no such file or directory"))
        elif p.is_dir() and not os.access(p, os.R_OK | os.X_OK):
            out.append((raw, "directory cannot be listed (permission denied)"))
        elif not p.is_dir() and not os.access(p, os.R_OK):
            out.append((raw, "cannot be read (permission denied)"))
    return out


def refuse_if_nothing_readable(paths: tuple[str, ...], bad: list[tuple[str, str]]) -> None:
    """Every input missing or unreadable: an error (exit 1) before any index directory is made."""
    if bad and len(bad) == len(paths):
        detail = "; ".join(f"{p}: {reason}" for p, reason in bad)
        raise click.ClickException(f"nothing to read: {detail}. Check the path(s)")


def report_failures(failed: list[dict[str, str]]) -> None:
    """Each input that failed, once, on stderr."""
    for f in failed:
        click.echo(f"failed: {printable(f['path'])}: {printable(f['reason'])}", err=True)


def report_ignored(ignored: Counter[str], include: tuple[str, ...]) -> None:
    """A warning counting files passed over for their suffix, and the suffixes that are read."""
    if not ignored or include:
        return
    from mitsuke.indexer.loaders import SUFFIXES

    counts = ", ".join(f"{n} {suffix}" for suffix, n in ignored.most_common())
    click.echo(f"mitsuke: ignored {sum(ignored.values())} file(s) by suffix ({counts}); "
               f"readable: {' '.join(sorted(SUFFIXES))} (or name them with --include)", err=True)
