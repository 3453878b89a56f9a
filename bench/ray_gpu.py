"""The Ray path on GPUs: N embedding actors, each a random-weight model of sarashina's exact shape.

Each actor builds a randomly initialised LlamaModel of
sbintuitions/sarashina-embedding-v1-1b's shape (``bench/gpu_embed.py``'s
SARASHINA: weights do not change speed; nothing is downloaded) on its GPU in
bfloat16 and embeds through mitsuke's ``Embedder``, exactly as the
``EmbedWorker`` of ``mitsuke index --ray`` does; passages flow through Ray
Data (``map_batches`` with an actor pool, ``num_gpus=1`` each) and float16
vectors come back to the driver.

First, in this process, the same model embeds the same passages without Ray
(the ``bench/gpu_embed.py`` measurement) on GPU 0, so one run gives Ray's
overhead on the same GPU. Prints tokens/s per GPU (inside the actor) and in
total (wall clock at the driver, first result to last), and MFU against the
dense bf16 peak (989 TFLOP/s for H100 SXM / H200).

    python bench/ray_gpu.py --actors 1            # one GPU; < 5 minutes on an H100/H200
    python bench/ray_gpu.py --actors 8            # every GPU of an 8-GPU node
    python bench/ray_gpu.py --smoke               # CPU, tiny shape: checks the script in a minute

Goal (issue 17): >= 150k tokens/s on one H100/H200 at 256-512-token passages
(>= 40% MFU), and Ray's overhead <= 5% against the direct measurement.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.gpu_embed import (  # noqa: E402
    SARASHINA, SMOKE, build_model, build_tokenizer, flops_per_token, peak_for, texts_of)


class GpuEmbedActor:
    """A Ray Data actor: the random sarashina-shaped model on this actor's device, mitsuke's Embedder."""

    def __init__(self, shape: dict, device: str, seq: int, batch_tokens: int) -> None:
        import torch

        from mitsuke.indexer.embedding import Embedder

        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        if device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = True
        else:
            torch.set_num_threads(1)  # --smoke: as the direct run, one thread
        self.model = build_model(shape, device, dtype)
        self.emb = Embedder.from_model(self.model, build_tokenizer(), name="random-sarashina-shape",
                                       pooling="lasttoken", max_length=seq, batch_tokens=batch_tokens)
        self.emb.encode_documents(texts_of(seq, max(4, batch_tokens // seq), np.random.default_rng(1)))  # warm-up
        self.pid = os.getpid()

    def __call__(self, batch: dict) -> dict:
        texts = [str(t) for t in batch["text"]]
        t0 = time.perf_counter()
        counted: list[int] = []
        vecs = self.emb.encode_documents(texts, progress=counted.append).astype(np.float16)
        busy = time.perf_counter() - t0
        n = len(texts)
        return {"vec": list(vecs), "actor": [self.pid] * n, "busy": [busy / n] * n, "tokens": [sum(counted) / n] * n}


def direct_rate(shape: dict, device: str, seq: int, batch_tokens: int, texts: list[str]) -> float:
    """tokens/s of the same model and Embedder in this process, no Ray (gpu_embed.py's measurement)."""
    import torch

    from mitsuke.indexer.embedding import Embedder

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if not device.startswith("cuda"):
        torch.set_num_threads(1)  # --smoke: the CPU actor gets one thread too
    model = build_model(shape, device, dtype)
    emb = Embedder.from_model(model, build_tokenizer(), name="random-sarashina-shape", pooling="lasttoken",
                              max_length=seq, batch_tokens=batch_tokens)
    emb.encode_documents(texts[: max(4, batch_tokens // seq)])
    tokens = sum(emb.tokenizer(texts, truncation=True, max_length=seq, return_length=True)["length"])
    rates = []
    for _ in range(3):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        emb.encode_documents(texts)
        rates.append(tokens / (time.perf_counter() - t0))
    del emb, model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return float(np.median(rates))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--actors", type=int, default=None, help="GPU actors (default: every GPU)")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shape, few passages")
    ap.add_argument("--seq", type=int, default=512, help="tokens per passage")
    ap.add_argument("--batch-tokens", type=int, default=32768)
    ap.add_argument("--tokens", type=int, default=4_000_000, help="tokens through Ray in total")
    ap.add_argument("--docs-per-batch", type=int, default=512, help="passages per actor call")
    ap.add_argument("--address", default=None, help="join this Ray cluster instead of starting one on 127.0.0.1")
    ap.add_argument("--no-direct", action="store_true", help="skip the measurement without Ray")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "ray_gpu.json"))
    args = ap.parse_args(argv)

    import torch

    from mitsuke.indexer.distributed.cluster import connect

    if args.smoke:
        shape, device, seq, budget, total, per_batch = SMOKE, "cpu", 64, 1024, 40_000, 64
    else:
        if not torch.cuda.is_available():
            print("no CUDA device here: run with --smoke to check the script on CPU", file=sys.stderr)
            return 2
        shape, device, seq, budget, total, per_batch = (SARASHINA, "cuda", args.seq, args.batch_tokens, args.tokens,
                                                        args.docs_per_batch)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    peak = args.peak_tflops or (peak_for(gpu) if device == "cuda" else None)
    rng = np.random.default_rng(0)
    texts = texts_of(seq, max(1, total // seq), rng)
    direct = None
    if not args.no_direct:
        direct = direct_rate(shape, device, seq, budget, texts[: max(1, min(len(texts), 400_000 // seq))])
        print(f"direct (no Ray, this process, {gpu}): {direct:,.0f} tokens/s")

    connect(args.address, num_cpus=2 if args.smoke else None,
            env_vars={"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
    import ray
    import ray.data

    resources = ray.cluster_resources()
    n_gpus = int(resources.get("GPU", 0))
    actors = args.actors or (n_gpus if device == "cuda" else 1)
    if device == "cuda" and actors > n_gpus:
        print(f"{actors} actors asked, the cluster has {n_gpus} GPUs", file=sys.stderr)
        return 2
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ds = ray.data.from_items([{"text": t} for t in texts], override_num_blocks=max(1, len(texts) // per_batch))
    ds = ds.map_batches(GpuEmbedActor, batch_size=per_batch, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=actors),
                        num_gpus=1 if device == "cuda" else 0, num_cpus=1,
                        fn_constructor_kwargs={"shape": shape, "device": device, "seq": seq, "batch_tokens": budget})
    busy: dict[int, float] = {}
    tok: dict[int, float] = {}
    first = None
    first_tokens = 0.0
    done_tokens = 0.0
    t_start = time.perf_counter()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        now = time.perf_counter()
        assert np.isfinite(np.stack(batch["vec"]).astype(np.float32)).all()
        for a, b, t in zip(batch["actor"], batch["busy"], batch["tokens"]):
            busy[int(a)] = busy.get(int(a), 0.0) + float(b)
            tok[int(a)] = tok.get(int(a), 0.0) + float(t)
        n = float(np.sum(batch["tokens"]))
        if first is None:
            first, first_tokens = now, n
        done_tokens += n
    t_end = time.perf_counter()
    steady = (done_tokens - first_tokens) / (t_end - first) if t_end > first else float("nan")

    from transformers import LlamaConfig

    cfg = LlamaConfig(**shape)
    L, H = cfg.num_hidden_layers, cfg.hidden_size
    # Non-embedding parameters from the shape: q, k, v, o, MLP (3 matrices), two norms per layer, final norm.
    head_dim = H // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * head_dim
    non_emb = L * (2 * H * H + 2 * H * kv + 3 * H * cfg.intermediate_size + 2 * H) + H
    fpt = flops_per_token(non_emb, L, H, seq)

    def mfu(rate: float, gpus: int = 1) -> str:
        return f"{100 * rate * fpt / (peak * 1e12 * gpus):.1f}%" if peak else "n/a"

    print(f"device {gpu}, {actors} actor(s), {len(texts)} passages of {seq} tokens, batch budget {budget} tokens; "
          f"{fpt / 1e9:.3f} GFLOP/token; " + (f"MFU against {peak} TFLOP/s" if peak else "MFU n/a (no peak)"))
    rows = []
    for a in sorted(busy):
        rate = tok[a] / busy[a]
        rows.append({"actor": a, "tokens": tok[a], "busy_s": busy[a], "tokens_per_s": rate})
        print(f"  actor pid {a}: {tok[a]:,.0f} tokens, {rate:,.0f} tokens/s inside the actor, MFU {mfu(rate)}")
    print(f"total (driver wall clock, first result to last): {steady:,.0f} tokens/s, MFU {mfu(steady, actors)}; "
          f"end to end including actor start: {done_tokens / (t_end - t_start):,.0f} tokens/s")
    if direct:
        per_gpu = steady / actors
        print(f"Ray overhead against the direct run on the same device: {100 * (1 - per_gpu / direct):.1f}% "
              f"({per_gpu:,.0f} vs {direct:,.0f} tokens/s per device)")

    from bench.common import write_results

    write_results("ray_gpu", dict(device=gpu, actors=actors, seq=seq, batch_tokens=budget, smoke=args.smoke,
                                  direct_tokens_per_s=direct, total_tokens_per_s=steady, actors_detail=rows,
                                  gflop_per_token=fpt / 1e9, peak_tflops=peak), path=args.json)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
