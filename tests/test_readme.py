"""Every README snippet runs as written on data/ (issue 12).

The ```sh and ```python blocks are run in README order in one scratch
directory holding ``data/`` (so the Quickstart's ``demo-idx`` serves the RAG
examples), each as a user would paste it: sh blocks by bash (``set -e``),
python blocks by this interpreter, ``mitsuke`` from this environment. A
block preceded by ``<!-- not run: reason -->`` is skipped (set-up, installs,
model downloads, an LLM of the user's own); everything else must exit 0.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA, REPO

BLOCK = re.compile(r"(<!-- not run: [^>]*-->\n)?```(sh|python)\n(.*?)```", re.S)


def readme_blocks() -> list[tuple[str, str, bool]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return [(lang, body, bool(skip)) for skip, lang, body in BLOCK.findall(text)]


def test_the_readme_has_runnable_blocks_and_marks_the_others():
    blocks = readme_blocks()
    run = [b for b in blocks if not b[2]]
    assert len(run) >= 6
    assert all(not re.search(r"\bmy-index\b|shared/", body) for _, body, skip in blocks if not skip)
    # The set-up block is not run here (CI runs it) but is still the README's first block.
    assert blocks[0][2] and "python -m pytest" in blocks[0][1]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    (root / "data").symlink_to(DATA, target_is_directory=True)
    return root


def test_every_readme_snippet_runs_on_data(scratch):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    outputs = []
    for lang, body, skip in readme_blocks():
        if skip:
            continue
        cmd = ["bash", "-e", "-o", "pipefail", "-c", body] if lang == "sh" else [sys.executable, "-c", body]
        r = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"README {lang} block failed:\n{body}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
        assert "Traceback" not in r.stderr, r.stderr
        outputs.append((body, r.stdout))
    by_marker: dict[str, str] = {}  # the first block naming each marker
    for body, out in outputs:
        for marker in ("api-idx", "langchain", "llamaindex", "questions.jsonl", "docs export"):
            if marker in body:
                by_marker.setdefault(marker, out)
    # The answers are where the README says they are.
    assert by_marker["api-idx"].startswith("豊岡市.md ") and " 271 477\n" in by_marker["api-idx"]
    assert by_marker["langchain"].startswith("享保.txt 0 ")
    assert " 清水建設.txt " in by_marker["llamaindex"]
    assert "span hit" in by_marker["questions.jsonl"]
    assert "deleted 1 document(s)" in by_marker["docs export"]
