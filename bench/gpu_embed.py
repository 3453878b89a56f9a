"""GPU embedding throughput and model-FLOPs utilisation for sarashina's shape.

A randomly initialised LlamaModel of sbintuitions/sarashina-embedding-v1-1b's
exact shape (weights do not change speed) goes through mitsuke's own
``Embedder`` (tokenisation, token-budget batching, last-token pooling,
normalisation, copy back to the host all included) at chunk lengths
256/512/1024, plus a ragged mix and an out-of-memory recovery check.

Needs only torch, transformers (with tokenizers) and numpy: the Embedder is
imported from this repository, and ``indexer`` imports its storage stack
(faiss, fugashi, sqlalchemy) only when the builder is used. Nothing is downloaded.

    python bench/gpu_embed.py                # on a CUDA machine, < 5 minutes on an H100/H200
    python bench/gpu_embed.py --smoke        # tiny shapes, any device: checks that the script works

MFU = tokens/s x FLOPs/token / peak, with FLOPs/token = 2 x N + 4 x layers x
hidden x seq (N = non-embedding parameters, 1.0405e9 here: 2.17 GFLOP/token at
512) and the peak of the GPU's dense bf16 tensor cores from PEAK_TFLOPS below
(989 TFLOP/s for H100 SXM and H200; not the 1979 "with sparsity" figure).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's data sheets.
# Matched against torch.cuda.get_device_name() in order: first hit wins.
PEAK_TFLOPS = [
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM5 / "H100 80GB HBM3"
    ("H800", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("V100", 125.0),  # fp16: V100 has no bf16
    ("T4", 65.0),  # fp16
]

SARASHINA = dict(hidden_size=1792, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8,
                 intermediate_size=6272, vocab_size=102400, max_position_embeddings=8192, rms_norm_eps=1e-5,
                 rope_theta=500000.0, bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False)
SMOKE = dict(SARASHINA, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, vocab_size=2048, max_position_embeddings=2048)
N_WORDS = 1000


def import_embedder():
    """mitsuke's Embedder (``indexer`` loads faiss/sqlalchemy lazily, so this needs neither)."""
    sys.path.insert(0, str(REPO))
    from mitsuke.indexer.embedding import Embedder

    return Embedder


def build_tokenizer(max_length: int = 8192):
    """A word-level tokenizer adding <s> … </s>: ``seq - 2`` words give exactly ``seq`` tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, **{f"w{i}": 4 + i for i in range(N_WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", model_max_length=max_length)


def build_model(shape: dict, device: str, dtype):
    """A random LlamaModel (no LM head: an embedder never uses it) built directly on ``device``."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(**shape)
    config.use_cache = False
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float32)
    try:
        with torch.device(device):
            model = LlamaModel(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def texts_of(seq: int, n: int, rng: np.random.Generator) -> list[str]:
    words = rng.integers(0, N_WORDS, size=(n, seq - 2))
    return [" ".join(f"w{w}" for w in row) for row in words]


def ragged_texts(lo: int, hi: int, n: int, rng: np.random.Generator) -> list[str]:
    return [" ".join(f"w{w}" for w in rng.integers(0, N_WORDS, size=int(rng.integers(lo, hi + 1)) - 2))
            for _ in range(n)]


def flops_per_token(non_embedding_params: int, layers: int, hidden: int, seq: float) -> float:
    return 2.0 * non_embedding_params + 4.0 * layers * hidden * seq


def peak_for(name: str) -> float | None:
    for key, tflops in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return tflops
    return None


def measure(emb, texts: list[str], reps: int) -> tuple[float, list[float]]:
    """Median tokens/s over ``reps`` full ``encode_documents`` calls (tokenisation included)."""
    import torch

    tokens = sum(emb.tokenizer(texts, truncation=True, max_length=emb.max_length, return_length=True)["length"])
    rates = []
    for _ in range(reps):
        if emb.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = emb.encode_documents(texts)  # returns host numpy: the device work is finished
        rates.append(tokens / (time.perf_counter() - t0))
        assert np.isfinite(out).all() and abs(float(np.linalg.norm(out[0])) - 1.0) < 1e-3
    return float(np.median(rates)), rates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny model and inputs; runs anywhere in seconds")
    ap.add_argument("--device", default=None, help="default: cuda if available (cpu with --smoke otherwise)")
    ap.add_argument("--lengths", default="256,512,1024")
    ap.add_argument("--batch-tokens", default="16384,32768,65536",
                    help="token budgets tried at every length; the best is reported per length")
    ap.add_argument("--tokens", type=int, default=400_000, help="tokens per measurement (per rep)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the peak table")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "gpu_embed.json"))
    args = ap.parse_args(argv)

    import torch

    Embedder = import_embedder()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke to check the script on CPU", file=sys.stderr)
        return 2
    if not args.smoke and not device.startswith("cuda"):
        print("the full benchmark needs a GPU; use --smoke on CPU", file=sys.stderr)
        return 2
    shape = SMOKE if args.smoke else SARASHINA
    lengths = [int(x) for x in args.lengths.split(",")]
    budgets = [int(x) for x in args.batch_tokens.split(",")]
    tokens_per_rep = args.tokens
    if args.smoke:
        lengths, budgets, tokens_per_rep, reps = [16, 32, 64], [256, 1024], 2048, 2
    else:
        reps = args.reps
    if device.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        gpu = torch.cuda.get_device_name(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        dtype = torch.float32
        gpu = "cpu"
    peak = args.peak_tflops or (peak_for(gpu) if device.startswith("cuda") else None)

    t0 = time.perf_counter()
    model = build_model(shape, device, dtype)
    emb = Embedder.from_model(model, build_tokenizer(), name="random-sarashina-shape", pooling="lasttoken",
                              max_length=max(lengths))
    n_params = sum(p.numel() for p in model.parameters())
    non_emb = n_params - model.embed_tokens.weight.numel()
    build_s = time.perf_counter() - t0
    L, H = shape["num_hidden_layers"], shape["hidden_size"]
    print(f"device {gpu} ({device}), dtype {str(dtype).replace('torch.', '')}, torch {torch.__version__}, "
          f"attention {model.config._attn_implementation}")
    print(f"model: {n_params / 1e9:.4f} B parameters, {non_emb / 1e9:.4f} B non-embedding; built in {build_s:.1f} s")
    print(f"FLOPs/token = 2 x {non_emb:.4g} + 4 x {L} x {H} x seq  "
          f"({flops_per_token(non_emb, L, H, 512) / 1e9:.3f} GFLOP at 512)")
    print(f"MFU against {peak} TFLOP/s dense bf16 peak for {gpu!r}" if peak else "MFU: n/a (no peak for this device)")

    rng = np.random.default_rng(0)
    # Warm-up: kernels, cuBLAS heuristics, the caching allocator.
    emb.batch_tokens = budgets[0]
    emb.encode_documents(texts_of(lengths[0], max(4, budgets[0] // lengths[0]), rng))

    rows = []
    header = f"{'seq':>8} {'batch tok':>9} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>6}  reps tokens/s"
    print(header)
    print("-" * len(header))

    def report(label: str, seq_mean: float, budget: int, rate: float, all_rates: list[float]) -> dict:
        tflops = rate * flops_per_token(non_emb, L, H, seq_mean) / 1e12
        mfu = tflops / peak if peak else None
        print(f"{label:>8} {budget:>9} {rate:>10.0f} {tflops:>8.1f} "
              f"{(f'{100 * mfu:.1f}%' if mfu is not None else 'n/a'):>6}  "
              + " ".join(f"{r:.0f}" for r in all_rates), flush=True)
        row = dict(seq=label, mean_seq=seq_mean, batch_tokens=budget, tokens_per_s=rate, tflops=tflops, mfu=mfu,
                   reps=all_rates)
        rows.append(row)
        return row

    for seq in lengths:
        texts = texts_of(seq, max(1, tokens_per_rep // seq), rng)
        for budget in budgets:
            emb.batch_tokens = budget
            try:
                rate, rates = measure(emb, texts, reps)
            except Exception as exc:  # a budget too big for this card is a finding, not a crash
                print(f"{seq:>8} {budget:>9} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
                continue
            report(str(seq), float(seq), budget, rate, rates)

    # Real chunks vary in length: sorted batches still carry some padding and a mask.
    lo, hi = lengths[0], lengths[min(1, len(lengths) - 1)]
    texts = ragged_texts(lo, hi, max(1, tokens_per_rep // ((lo + hi) // 2)), rng)
    lens = np.array(emb.tokenizer(texts, return_length=True)["length"], dtype=np.float64)
    emb.batch_tokens = budgets[len(budgets) // 2]
    rate, rates = measure(emb, texts, reps)
    report(f"{lo}-{hi}", float((lens ** 2).sum() / lens.sum()), emb.batch_tokens, rate, rates)

    # Out-of-memory recovery: a budget no device can hold must shrink, not crash.
    oom = None
    if device.startswith("cuda"):
        # Cap this process at 15% of the card so a 512 x 1024-token batch (~20 GiB of MLP
        # activations) cannot fit, whatever the card's size.
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(0.15, device)
        emb.batch_tokens = 1 << 26
        texts = texts_of(lengths[-1], 512, rng)
        t0 = time.perf_counter()
        try:
            out = emb.encode_documents(texts)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
        oom = dict(final_batch_tokens=emb.batch_tokens, seconds=time.perf_counter() - t0,
                   finite=bool(np.isfinite(out).all()))
        print(f"OOM check: budget 2^26 tokens shrank to {emb.batch_tokens} and finished in {oom['seconds']:.1f} s")
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")

    from bench.common import write_results  # numpy only: the GPU machine needs nothing more

    write_results("gpu_embed", dict(device=gpu, dtype=str(dtype), torch=torch.__version__, peak_tflops=peak,
                                    smoke=args.smoke, rows=rows, oom=oom), path=args.json)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
