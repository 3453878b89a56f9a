"""Type-check the whole package with mypy: ``python tools/typecheck.py [MYPY OPTIONS...]``.

In the repository ``indexer/`` and ``search/`` sit beside ``mitsuke/``; only the
installed package maps them to ``mitsuke.indexer`` and ``mitsuke.search``
(setuptools ``package-dir``), so ``mypy`` run in the checkout sees ``mitsuke/``
alone. This script builds that package as a tree of symbolic links in a
temporary directory, runs mypy on it with the repository's ``pyproject.toml``
settings (cache in ``.mypy_cache/`` of the checkout), prints mypy's report with
the paths as they are in the repository (``indexer/writer.py:12: error: ...``)
and exits with mypy's status: 0 when clean.

Extra arguments go to mypy unchanged (``--check-untyped-defs``, ``--no-incremental``...).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["REPO", "stage", "repo_path", "main"]

REPO = Path(__file__).resolve().parent.parent
# Where each top-level directory of the checkout goes in the installed package.
MAPPED = {"indexer": "mitsuke/indexer", "search": "mitsuke/search"}


def stage(root: Path, repo: Path = REPO) -> Path:
    """Build ``root/mitsuke``: links to ``mitsuke/``'s entries plus ``indexer`` and ``search``; return it."""
    package = root / "mitsuke"
    package.mkdir(parents=True)
    for entry in sorted((repo / "mitsuke").iterdir()):
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    for source, target in MAPPED.items():
        (root / target).symlink_to(repo / source, target_is_directory=True)
    return package


def repo_path(line: str) -> str:
    """A mypy report line with its staged path made the checkout's: ``mitsuke/search/x.py`` -> ``search/x.py``."""
    for source, target in MAPPED.items():
        if line.startswith(target + "/"):
            return source + line[len(target):]
    return line


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        import mypy  # noqa: F401
    except ImportError:
        print("typecheck: mypy is not installed in this Python; install the dev extra: "
              'python -m pip install -e ".[dev]"', file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mitsuke-typecheck-") as tmp:
        root = Path(tmp)
        try:
            stage(root)
        except OSError as exc:  # Windows: symbolic links need Developer Mode or an elevated shell
            print(f"typecheck: cannot link the package into {root}: {exc}", file=sys.stderr)
            return 2
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"),
               "--cache-dir", str(REPO / ".mypy_cache"), "-p", "mitsuke", *args]
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        print(repo_path(line))
    if done.stderr:
        print(done.stderr, end="", file=sys.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
