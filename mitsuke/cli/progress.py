"""Progress of ``mitsuke index``: totals up front, percentage and ETA, a bar or log lines.

On a terminal, a bar over the run's total: tokens to embed (with a model) or
documents (``--model none``). When stderr is not a terminal (nohup, CI, a log
file), one line every ``--progress-interval`` seconds (default 10, env
``MITSUKE_PROGRESS_INTERVAL``) with the same figures and an ETA. ``--quiet``
turns both off.

The up-front estimate uses a documented guess of this device's speed: a
forward pass costs about 2 FLOP per parameter per token, and a device is
assumed to sustain ``DEVICE_FLOPS``: float32 on a CPU 2×10^11 FLOP/s, about 90
tokens/s for the 1.2 B default model (BENCHMARKS.md "Embedding" measured 265
GFLOP/s, 122 tokens/s, on a 2026 server CPU; laptops are slower). The ETA
during the run uses the measured rate.
"""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import click

__all__ = ["Progress", "DEVICE_FLOPS", "guess_tokens_per_second", "format_duration"]

# Sustained FLOP/s assumed for the up-front estimate, by torch device type.
DEVICE_FLOPS = {"cpu": 2e11, "mps": 3e12, "cuda": 1e14}


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``, ``4000`` -> ``1h06m``: short, for progress lines."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def guess_tokens_per_second(embedder: Any) -> float:
    """Tokens/s this embedder's model is expected to reach on its device (see the module docstring)."""
    params = sum(p.numel() for p in embedder.model.parameters())
    flops = DEVICE_FLOPS.get(embedder.device.type, DEVICE_FLOPS["cpu"])
    return flops / max(2.0 * params, 1.0)


class Progress:
    """Feeds on ``IndexBuilder.on_progress`` events; draws a bar on a terminal, logs lines elsewhere."""

    def __init__(self, *, documents: int | None, tokens: int | None, interval: float = 10.0,
                 stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.documents_total = documents
        self.tokens_total = tokens or None
        self.interval = interval
        self.docs = 0
        self.tokens = 0
        self.started = time.monotonic()
        self._last_line = self.started
        tty = self.stream.isatty() if tty is None else tty
        self._bar = None
        if tty:
            from tqdm import tqdm

            if self.tokens_total:
                self._bar = tqdm(total=self.tokens_total, unit="tok", unit_scale=True, desc="embedding",
                                 file=self.stream, dynamic_ncols=True)
            else:
                self._bar = tqdm(total=documents, unit="doc", desc="indexing", file=self.stream, dynamic_ncols=True)

    # ------------------------------------------------------------------ events
    def __call__(self, kind: str, n: int) -> None:
        if kind in ("total", "inputs"):  # a Ray run's input counts; documents and tokens carry the progress
            return
        if kind == "tokens":
            self.tokens += n
            if self._bar is not None and self.tokens_total:
                self._bar.update(min(n, max(self._bar.total - self._bar.n, 0)))
        else:  # documents, unchanged, failed
            self.docs += n
            if self._bar is not None:
                if self.tokens_total:
                    self._bar.set_postfix_str(self._docs_text(), refresh=False)
                else:
                    self._bar.update(n)
        now = time.monotonic()
        if self._bar is None and now - self._last_line >= self.interval:
            self._last_line = now
            click.echo(f"mitsuke: {self.line(now)}", file=self.stream)

    def _docs_text(self) -> str:
        total = f"/{self.documents_total:,}" if self.documents_total is not None else ""
        return f"{self.docs:,}{total} documents"

    def line(self, now: float | None = None) -> str:
        """``indexing: 12/207 documents, 45,000/1,182,445 tokens (3.8%), 310 tokens/s, ETA 1h01m``."""
        elapsed = max((now or time.monotonic()) - self.started, 1e-9)
        parts = [self._docs_text()]
        if self.tokens_total:
            done = min(self.tokens, self.tokens_total)
            rate = self.tokens / elapsed
            parts.append(f"{done:,}/{self.tokens_total:,} tokens ({100 * done / self.tokens_total:.1f}%)")
            parts.append(f"{rate:,.0f} tokens/s")
            if rate > 0:
                parts.append(f"ETA {format_duration((self.tokens_total - done) / rate)}")
        elif self.documents_total:
            done = min(self.docs, self.documents_total)
            parts[0] += f" ({100 * done / self.documents_total:.1f}%)"
            rate = self.docs / elapsed
            if rate > 0:
                parts.append(f"{rate:,.1f} documents/s, ETA {format_duration((self.documents_total - done) / rate)}")
        return "indexing: " + ", ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
