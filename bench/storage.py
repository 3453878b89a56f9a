"""Storage throughput of the write path, embedding excluded: chunks/s.

Per batch of ``--batch`` chunks (~300-character Japanese passages from data/)
it does what ``IndexBuilder._commit`` does after embedding: append float16
vector rows and fsync, then one SQLite transaction with the document rows,
chunk rows and FTS5 terms. MeCab term extraction is timed separately (it
runs before the transaction).

    PYTHONPATH=$PWD python bench/storage.py --chunks 20000 --dim 1792
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import write_results  # noqa: E402
from mitsuke.indexer.japanese import lexical_terms  # noqa: E402
from mitsuke.indexer.store import MetadataStore  # noqa: E402
from mitsuke.indexer.vectors import VectorStore  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "data"


def passages(n: int) -> list[str]:
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(DATA.glob("*.*")) if p.suffix in (".txt", ".md"))
    text = text.replace("\n", "")
    out = []
    for i in range(n):
        start = (i * 137) % max(1, len(text) - 300)
        out.append(text[start:start + 300])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=1792)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--chunks-per-doc", type=int, default=8)
    args = ap.parse_args()

    texts = passages(args.chunks)
    t = time.perf_counter()
    terms = [" ".join(lexical_terms(x)) for x in texts]
    t_terms = time.perf_counter() - t

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = MetadataStore(Path(tmp) / "meta.sqlite")
        vs = VectorStore(Path(tmp) / "vectors.f16", args.dim)
        vs.truncate(0)
        t_vec = t_sql = 0.0
        next_id, row, doc_no = 1, 0, 0
        for b in range(0, args.chunks, args.batch):
            batch = range(b, min(args.chunks, b + args.batch))
            vecs = rng.standard_normal((len(batch), args.dim), dtype=np.float32)
            t = time.perf_counter()
            vs.append(vecs, row)
            t_vec += time.perf_counter() - t
            t = time.perf_counter()
            with store.begin() as conn:
                rows = []
                for j, i in enumerate(batch):
                    if j % args.chunks_per_doc == 0:
                        doc_id = store.insert_document(conn, {
                            "key": f"文書{doc_no}", "content_hash": f"{doc_no:064x}", "title": "題", "source": "",
                            "source_type": "text", "encoding": "utf-8", "meta": {"分類": "bench"},
                            "n_chars": 2400, "generation": 1})
                        doc_no += 1
                    rows.append({"id": next_id, "doc_id": doc_id, "chunk_index": j % args.chunks_per_doc,
                                 "char_start": 0, "char_end": 300, "text": texts[i], "token_count": 200,
                                 "headings": [], "vector_row": row + j, "generation": 1})
                    next_id += 1
                store.insert_chunks(conn, rows, [terms[i] for i in batch])
                store.set_state(conn, "vector_rows", row + len(rows))
            t_sql += time.perf_counter() - t
            row += len(rows)
        db_bytes = sum(p.stat().st_size for p in Path(tmp).glob("meta.sqlite*"))
        store.close()

    n = args.chunks
    res = {"chunks": n, "dim": args.dim, "batch": args.batch, "mecab_terms_per_s": n / t_terms,
           "vector_rows_per_s": n / t_vec, "sqlite_fts_rows_per_s": n / t_sql,
           "storage_total_per_s": n / (t_vec + t_sql), "with_terms_per_s": n / (t_vec + t_sql + t_terms),
           "sqlite_bytes_per_chunk": db_bytes / n}
    print("| chunks | dim | batch | MeCab terms chunks/s | vector rows (fsync) chunks/s | SQLite rows + FTS5 chunks/s "
          "| storage total chunks/s | incl. MeCab chunks/s | SQLite B/chunk |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {n:,} | {args.dim} | {args.batch} | {res['mecab_terms_per_s']:,.0f} | {res['vector_rows_per_s']:,.0f} | "
          f"{res['sqlite_fts_rows_per_s']:,.0f} | {res['storage_total_per_s']:,.0f} | {res['with_terms_per_s']:,.0f} | "
          f"{res['sqlite_bytes_per_chunk']:,.0f} |")
    write_results("storage", res)


if __name__ == "__main__":
    main()
