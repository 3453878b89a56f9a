"""The project's own promises: CI runs exactly the README's commands."""
from __future__ import annotations

import re

from conftest import REPO


def _readme_commands() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Set up.*?```sh\n(.*?)```", readme, re.S)
    assert block, "README has no set-up block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_them():
    commands = _readme_commands()
    assert len(commands) == 2
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    for command in commands:
        assert command in [line.strip() for line in ci], f".ci/run does not run {command!r}"


def test_demo_corpus_keeps_its_attribution():
    notice = (REPO / "data" / "NOTICE").read_text(encoding="utf-8")
    assert "CC BY-SA 4.0" in notice


def test_every_package_directory_is_installed():
    """pyproject lists packages by hand (the repository maps indexer/ and search/ under mitsuke)."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = set(config["packages"])
    roots = {name: REPO / path for name, path in config["package-dir"].items()}
    found = set()
    for name, root in roots.items():
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root).parts
            found.add(".".join((name, *rel)))
    assert found == listed, f"pyproject.toml packages: missing {sorted(found - listed)}, extra {sorted(listed - found)}"
