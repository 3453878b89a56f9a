"""CPU embedding throughput for sarashina's shape: float32 vs bfloat16 at 128/256/512 tokens.

A randomly initialised LlamaModel of sbintuitions/sarashina-embedding-v1-1b's
exact shape (hidden 1792, 24 layers, 16 heads, 8 KV heads, intermediate 6272,
vocab 102400; weights do not change speed) is built in memory -- nothing is
downloaded or written -- and driven through mitsuke's ``Embedder``
(tokenisation, token-budget batching, pooling, normalisation included).

Variants, all through ``Embedder.encode_documents``:
  float32            the CPU default (exact parity with sentence-transformers)
  bf16 autocast      float32 weights under torch.autocast(cpu, bfloat16) (shortest length only)
  bfloat16           weights cast to bfloat16 (what ``--dtype bfloat16`` does)
  bfloat16 eager     the same with eager attention instead of SDPA (at the longest length)

    PYTHONPATH=$PWD python bench/embed_cpu.py              # ~5-10 min on 2 cores, ~5.5 GiB RAM
    PYTHONPATH=$PWD python bench/embed_cpu.py --quick      # fewer sequences, one rep

Prints median tokens/s over repetitions and writes bench/results/embed_cpu.json.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from bench.common import write_results  # noqa: E402
from gpu_embed import (SARASHINA, build_model, build_tokenizer, flops_per_token, import_embedder,  # noqa: E402
                       texts_of)

FP32_CEILING_NOTE = "fp32 compute ceiling of 2 cores ~126 tokens/s (FACTS.md)"


def run(emb, texts: list[str], reps: int, autocast: bool) -> list[float]:
    import torch

    n_tokens = len(texts) * len(emb.tokenizer(texts[0])["input_ids"])
    rates = []
    for _ in range(reps):
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        t0 = time.perf_counter()
        with ctx:
            out = emb.encode_documents(texts)
        rates.append(n_tokens / (time.perf_counter() - t0))
        assert np.isfinite(out).all()
    return rates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="128,256,512")
    ap.add_argument("--tokens", type=int, default=1024, help="tokens per measurement (fp32; bf16 uses 2x)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--quick", action="store_true", help="one rep, fewer tokens")
    ap.add_argument("--json", default=str(HERE / "results" / "embed_cpu.json"))
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.reps, args.tokens = 1, 512
    Embedder = import_embedder()
    lengths = [int(x) for x in args.lengths.split(",")]
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    model = build_model(SARASHINA, "cpu", torch.float32)
    # Frozen weights: autocast then casts per op instead of caching a 2.4 GB bf16 copy.
    model.requires_grad_(False)
    non_emb = sum(p.numel() for p in model.parameters()) - model.embed_tokens.weight.numel()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model built in "
          f"{time.perf_counter() - t0:.0f} s ({non_emb / 1e9:.4f} B non-embedding parameters)", flush=True)
    tok = build_tokenizer()

    def embedder():
        return Embedder.from_model(model, tok, name="random-sarashina-shape", pooling="lasttoken",
                                   max_length=max(lengths), batch_tokens=args.batch_tokens)

    results = []

    def bench(label: str, emb, autocast: bool, seqs: list[int], tokens: int) -> None:
        for seq in seqs:
            texts = texts_of(seq, max(1, tokens // seq), rng)
            run(emb, texts[:1], 1, autocast)  # warm-up at this shape
            rates = run(emb, texts, args.reps, autocast)
            rate = float(np.median(rates))
            gflops = rate * flops_per_token(non_emb, 24, 1792, seq) / 1e9
            print(f"{label:<16} {seq:>5} {len(texts):>5} {rate:>9.1f} {gflops:>8.0f}  "
                  + " ".join(f"{r:.1f}" for r in rates), flush=True)
            results.append(dict(variant=label, seq=seq, sequences=len(texts), tokens_per_s=rate, gflops=gflops,
                                reps=rates, batch_tokens=args.batch_tokens))

    print(f"{'variant':<16} {'seq':>5} {'seqs':>5} {'tokens/s':>9} {'GFLOP/s':>8}  reps")
    emb = embedder()
    bench("float32", emb, False, lengths, args.tokens)
    # Autocast re-casts the fp32 weights on every forward: measured once, at the shortest length.
    bench("bf16 autocast", emb, True, lengths[:1], args.tokens)
    model.to(torch.bfloat16)  # in place, tensor by tensor: peak memory stays near the fp32 model's
    emb = embedder()
    bench("bfloat16", emb, False, lengths, 2 * args.tokens)
    model.set_attn_implementation("eager")
    bench("bfloat16 eager", embedder(), False, lengths[-1:], 2 * args.tokens)
    print(f"({FP32_CEILING_NOTE})")

    write_results("embed_cpu", dict(torch=torch.__version__, threads=torch.get_num_threads(), rows=results),
                  path=args.json)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
