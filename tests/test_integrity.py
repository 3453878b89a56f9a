"""Never destroy what cannot be re-derived: copies of a real index damaged one file at a time.

One real index (the demo corpus, the tiny model) is built per module; each test
damages a copy of it (truncated, garbled, deleted, swapped with another index's
valid file, dim edited) and runs the real CLI in-process. No command prints a
traceback; no run reports success while vectors are lost; `mitsuke index` of
the same inputs (or `mitsuke repair`) ends with the clean build's results; a
damaged ann.faiss never changes results.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mitsuke.cli import cli
from mitsuke.indexer import IndexBuilder
from mitsuke.indexer.errors import LockedError
from mitsuke.search import Searcher

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
QUERIES = ["豊岡市の気候は?", "打楽器の種類", "天体暦とは何か", "ハノーファーの歴史", "伝染病の予防"]


def run(*args, input=None):
    """The CLI in-process: (exit code, stdout, stderr); fails on a traceback."""
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input)
    out, err = result.stdout, result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"mitsuke {' '.join(map(str, args))} raised {result.exception!r}") from result.exception
    assert "Traceback" not in out + err, out + err
    return result.exit_code, out, err


def results(idx: Path, embedder=None, mode: str = "hybrid") -> list[list[tuple[str, int, float]]]:
    with Searcher.open(idx, embedder=embedder) as s:
        return [[(p.doc_key, p.char_start, round(p.score, 4)) for p in s.search(q, k=5, mode=mode)]
                for q in QUERIES]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model):
    """(clean index, another index of a subset, clean results)."""
    root = tmp_path_factory.mktemp("integrity")
    clean, other = root / "clean", root / "other"
    code, out, err = run("index", DATA, "--index", clean, "--model", tiny_model, "--json")
    assert code == 0, err
    subset = root / "subset"
    subset.mkdir()
    for p in sorted(DATA.glob("*.txt"))[:4]:
        shutil.copy(p, subset / p.name)
    code, _, err = run("index", subset, "--index", other, "--model", tiny_model)
    assert code == 0, err
    return clean, other, results(clean)


@pytest.fixture()
def copy(built, tmp_path):
    clean, _, _ = built
    target = tmp_path / "idx"
    shutil.copytree(clean, target)
    return target


def garble(path: Path, n: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = os.urandom(min(n, len(data) - mid))
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- vectors.f16

@pytest.mark.parametrize("damage", ["truncated", "garbled", "deleted", "swapped"])
def test_damaged_vectors_are_reembedded_never_zero_filled(built, copy, damage):
    clean, other, expected = built
    vec = copy / "vectors.f16"
    before = vec.read_bytes()
    if damage == "truncated":
        vec.write_bytes(before[:len(before) // 2])
    elif damage == "garbled":
        garble(vec)
    elif damage == "deleted":
        vec.unlink()
    else:
        shutil.copy(other / "vectors.f16", vec)
    damaged = vec.read_bytes() if vec.exists() else None
    code, _, err = run("verify", "--index", copy)
    assert code == 1 and "vectors.f16" in err
    code, out, err = run("index", DATA, "--index", copy, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["unchanged"] == len([p for p in DATA.iterdir() if p.suffix in (".txt", ".md")])
    kept = sorted(copy.glob("vectors.f16.damaged-*"))
    if damaged is not None:  # the damaged file was kept as it was, never written over
        assert len(kept) == 1 and kept[0].read_bytes() == damaged
    assert results(copy) == expected
    code, out, err = run("verify", "--index", copy)
    assert code == 0, err


def test_repair_reembeds_from_stored_text(built, copy):
    _, _, expected = built
    vec = copy / "vectors.f16"
    vec.write_bytes(vec.read_bytes()[:1000])
    code, out, err = run("repair", "--index", copy, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["lost_chunks"] > 0 and report["reembedded"] == report["lost_chunks"] and not report["remaining"]
    assert results(copy) == expected


def test_search_refuses_damaged_rows_it_reads(built, copy):
    vec = copy / "vectors.f16"
    vec.write_bytes(b"\x00" * len(vec.read_bytes()))  # every block fails its checksum
    (copy / "ann.faiss").unlink()  # the reader rebuilds it: it must read (and check) every row
    code, out, err = run("search", QUERIES[0], "--index", copy)
    assert code == 1 and "checksum" in err and "mitsuke repair" in err


def test_edited_dim_is_refused_and_nothing_is_cut(built, copy):
    m = json.loads((copy / "manifest.json").read_text())
    m["model"]["dim"] *= 2
    (copy / "manifest.json").write_text(json.dumps(m))
    before = (copy / "vectors.f16").read_bytes()
    for args in (["index", DATA, "--index", copy], ["search", QUERIES[0], "--index", copy, "--mode", "lexical"],
                 ["verify", "--index", copy]):
        code, out, err = run(*args)
        assert code != 0 and "dim" in err.lower(), (args, out, err)
    assert (copy / "vectors.f16").read_bytes() == before


def test_lost_vectors_without_model_mark_documents(built, copy, tmp_path):
    """repair without the model: documents lose their vectors visibly and the next index run embeds them."""
    _, _, expected = built
    m = json.loads((copy / "manifest.json").read_text())
    model_dir = Path(m["model"]["path"])
    (copy / "vectors.f16").unlink()
    m["model"]["path"] = str(tmp_path / "gone")
    m["model"]["name"] = str(tmp_path / "gone")
    (copy / "manifest.json").write_text(json.dumps(m))
    code, out, err = run("repair", "--index", copy)
    assert code == 1 and "no vector" in err
    m["model"]["path"] = m["model"]["name"] = str(model_dir)
    (copy / "manifest.json").write_text(json.dumps(m))
    code, out, err = run("index", DATA, "--index", copy, "--json")
    assert code == 0 and json.loads(out)["unchanged"] == 0, out + err
    assert results(copy) == expected
    assert run("verify", "--index", copy)[0] == 0


# --------------------------------------------------------------------------- meta.sqlite

@pytest.mark.parametrize("damage", ["deleted", "empty", "truncated", "garbled", "swapped"])
def test_damaged_meta_is_refused_never_recreated(built, copy, damage):
    _, other, _ = built
    meta = copy / "meta.sqlite"
    vectors = (copy / "vectors.f16").read_bytes()
    if damage == "deleted":
        meta.unlink()
    elif damage == "empty":
        meta.write_bytes(b"")
    elif damage == "truncated":
        meta.write_bytes(meta.read_bytes()[:len(meta.read_bytes()) // 2])
    elif damage == "garbled":
        garble(meta)
    else:
        shutil.copy(other / "meta.sqlite", meta)
    meta_after = meta.read_bytes() if meta.exists() else None
    code, out, err = run("verify", "--index", copy)
    assert code == 1 and "meta.sqlite" in err, out + err
    code, out, err = run("index", DATA, "--index", copy)
    if damage != "garbled":  # a garbled page may lie where no writer reads; verify found it above
        assert code != 0 and "meta.sqlite" in err, out + err
    if damage in ("deleted", "empty", "swapped", "truncated"):
        assert (copy / "vectors.f16").read_bytes() == vectors
        assert (meta.read_bytes() if meta.exists() else None) == meta_after
    for args in (["search", QUERIES[0], "--index", copy], ["info", "--index", copy], ["repair", "--index", copy]):
        code, out, err = run(*args)  # no traceback (checked by run); refused or answered
        if damage != "garbled":
            assert code != 0, (args, out, err)


# --------------------------------------------------------------------------- ann.faiss

@pytest.mark.parametrize("damage", ["truncated", "garbled", "deleted", "swapped", "crafted"])
def test_damaged_ann_never_changes_results(built, copy, damage):
    clean, other, expected = built
    ann = copy / "ann.faiss"
    if damage == "truncated":
        ann.write_bytes(ann.read_bytes()[:len(ann.read_bytes()) // 2])
    elif damage == "garbled":
        garble(ann, 512)
    elif damage == "deleted":
        ann.unlink()
    elif damage == "swapped":
        shutil.copy(other / "ann.faiss", ann)
    else:  # the vector-length field of an IndexFlat's codes claims ~800M floats
        data = bytearray(ann.read_bytes())
        pos = data.find(b"IxFI") + 4 + 4 + 8 + 8 + 8 + 1 + 4
        data[pos:pos + 8] = (800_000_000 * 4).to_bytes(8, "little")
        ann.write_bytes(bytes(data))
    assert results(copy) == expected
    code, out, err = run("verify", "--index", copy)
    assert (code == 0) == (damage == "deleted"), out + err
    assert run("repair", "--index", copy)[0] == 0
    assert run("verify", "--index", copy)[0] == 0
    assert results(copy) == expected


# --------------------------------------------------------------------------- lock

def test_removed_lock_stops_the_writer_before_commit(built, copy):
    with Searcher.open(copy) as s:
        generation = s.info()["generation"]
    b = IndexBuilder.open(copy)
    try:
        (copy / "LOCK").unlink()
        with pytest.raises(LockedError, match="removed or replaced"):
            b.add_documents([{"id": "新規", "text": "東京タワーは電波塔である。"}])
    finally:
        b.close(commit=False)
    with Searcher.open(copy) as s:
        assert s.info()["generation"] == generation


# --------------------------------------------------------------------------- read-only media

def _unprivileged() -> list[str] | None:
    """A command prefix under which file permissions apply: root without CAP_DAC_OVERRIDE/READ_SEARCH.

    (Another uid cannot read this machine's Python under /root; root without
    those capabilities is bound by the permission bits like any user.)
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    return prefix if probe.returncode == 0 else None


def test_search_on_a_read_only_copy(built):
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("running as root without setpriv: permissions would not apply")
    root = Path(tempfile.mkdtemp(prefix="mitsuke-ro-"))
    try:
        idx = root / "idx"
        code, _, err = run("index", DATA, "--index", idx, "--model", "none")
        assert code == 0, err
        expected = results(idx, mode="lexical")
        subprocess.run(["chmod", "-R", "a-w,a+rX", str(root)], check=True)
        assert all(p.stat().st_size == 0 for p in idx.glob("*-wal"))  # the writer closed cleanly
        env = {**os.environ, "HOME": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
        script = ("import json,sys; from mitsuke.search import Searcher\n"
                  "with Searcher.open(sys.argv[1]) as s:\n"
                  f"    print(json.dumps([[(p.doc_key, p.char_start, round(p.score, 4)) for p in s.search(q, k=5)]"
                  f" for q in {QUERIES!r}], ensure_ascii=False))\n")
        proc = subprocess.run([*prefix, sys.executable, "-c", script, str(idx)], capture_output=True, text=True,
                              env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert [[tuple(h) for h in q] for q in json.loads(proc.stdout)] == expected
        for args in (["search", QUERIES[0], "--index", str(idx)], ["info", "--index", str(idx)]):
            proc = subprocess.run([*prefix, sys.executable, "-m", "mitsuke.cli", *args], capture_output=True,
                                  text=True, env=env, timeout=120)
            assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        proc = subprocess.run([*prefix, sys.executable, "-m", "mitsuke.cli", "index", str(DATA), "--index", str(idx)],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr and "LOCK" in proc.stderr, proc.stderr
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- disk full

def test_disk_full_is_one_line(built, copy, tmp_path):
    """RLIMIT_FSIZE in a subprocess: writes past the limit fail with EFBIG (SIGXFSZ ignored)."""
    import resource

    docs = tmp_path / "more.jsonl"
    docs.write_text("\n".join(json.dumps({"id": f"d{i}", "text": "豊岡市の冬は雪が多い。" * 400}, ensure_ascii=False)
                              for i in range(40)), encoding="utf-8")
    limit = max(p.stat().st_size for p in copy.iterdir() if p.is_file()) + 4096

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.name in ("vectors.f16", "manifest.json")}
    proc = subprocess.run([sys.executable, "-m", "mitsuke.cli", "index", str(docs), "--index", str(copy)],
                          capture_output=True, text=True, preexec_fn=limited, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and any(f in errors[0] for f in ("meta.sqlite", "vectors.f16", "ann.faiss", "LOCK")), \
        proc.stderr
    # the committed index is intact: the next run without the limit completes it
    assert (copy / "vectors.f16").read_bytes()[:len(before["vectors.f16"])] == before["vectors.f16"]
    code, out, err = run("index", str(docs), "--index", copy, "--json")
    assert code == 0, err
    assert run("verify", "--index", copy)[0] == 0


# --------------------------------------------------------------------------- hostile input, clean lines

def test_hostile_values_end_in_one_line(built, copy, tmp_path):
    code, out, err = run("search", "東京", "--index", copy, "-k", "99999999999999999999")
    assert code == 2 and "-k" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_bytes(b"\xff\xfe{\"format\": \x80}")
    code, out, err = run("search", "東京", "--index", tmp_path / "bad")
    assert code == 1 and "manifest" in err


def test_pickle_only_model_is_a_clean_error(tiny_model, tmp_path):
    model = tmp_path / "pickled"
    shutil.copytree(tiny_model, model)
    (model / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > /dev/null",))

    import pickle

    (model / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    code, out, err = run("index", DATA, "--index", tmp_path / "idx", "--model", model)
    assert code == 1 and ("pytorch_model.bin" in err or "pickle" in err), err


def test_control_characters_and_deep_metadata(tmp_path):
    docs = [
        {"id": "forged\nfake line\x1b[2J", "title": "題\x1b]0;pwned\x07名", "text": "更科蕎麦は信州の名物である。\x1b[31m赤\x1b[0m"},
        {"id": "deep", "text": "更科蕎麦の深い入れ子。", "meta": json.loads("[" * 500 + "]" * 500)},
        {"id": "plain", "text": "更科蕎麦はそば粉で作る。"},
    ]
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in docs), encoding="utf-8")
    code, out, err = run("index", src, "--index", tmp_path / "idx", "--model", "none")
    assert "nested" in err and "deep" not in out
    code, out, err = run("search", "更科蕎麦", "--index", tmp_path / "idx")
    assert code == 0 and "\x1b" not in out and "\x07" not in out
    assert "forged\\nfake line\\x1b[2J" in out
    code, out, err = run("search", "更科蕎麦", "--index", tmp_path / "idx", "--json")
    hits = json.loads(out)
    assert {h["doc_key"] for h in hits} == {"forged\nfake line\x1b[2J", "plain"}


def test_trust_remote_code_reaches_the_searcher(built, monkeypatch):
    clean, _, _ = built
    from mitsuke.indexer.embedding import Embedder

    seen = {}
    real = Embedder.from_pretrained.__func__

    def spy(cls, *a, **kw):
        seen["trust"] = kw.get("trust_remote_code")
        return real(cls, *a, **kw)

    monkeypatch.setattr(Embedder, "from_pretrained", classmethod(spy))
    code, out, err = run("search", QUERIES[0], "--index", clean, "--trust-remote-code")
    assert code == 0 and seen["trust"] is True


def test_a_writers_growing_checksums_keep_checking_appended_rows(tmp_path):
    """The writer's checksum dict grows in place as rows are appended: reads past the blocks first seen work,
    and rows appended to a partial block that was already cleared are still checked (damage is caught)."""
    from mitsuke.indexer.checksums import BLOCK_ROWS, extend_blocks
    from mitsuke.indexer.errors import DamagedIndexError
    from mitsuke.indexer.vectors import VectorStore

    dim = 8
    store = VectorStore(tmp_path / "vectors.f16", dim)
    rng = np.random.default_rng(0)
    sums: dict = {}
    first = rng.standard_normal((10, dim)).astype(np.float16)
    store.append(first, 0)
    sums.update(extend_blocks(sums, 0, first.tobytes(), dim * 2))
    store.expect(sums)
    assert np.array_equal(store.read([0, 9]), first[[0, 9]])  # block 0 (partial) checked and cleared
    more = rng.standard_normal((2 * BLOCK_ROWS, dim)).astype(np.float16)
    store.append(more, 10)
    sums.update(extend_blocks(sums, 10, more.tobytes(), dim * 2))  # the same dict, grown in place
    store.close()
    assert np.array_equal(store.read([BLOCK_ROWS * 2 + 5]), more[[BLOCK_ROWS * 2 + 5 - 10]])  # a block past the mask
    # Damage a row appended to block 0 after block 0 was first read: the read must still catch it.
    with open(store.path, "r+b") as fh:
        fh.seek(20 * dim * 2)
        fh.write(b"\xff" * (dim * 2))
    with pytest.raises(DamagedIndexError, match="checksum"):
        store.read([20])
    store.close()
