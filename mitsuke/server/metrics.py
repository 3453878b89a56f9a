"""Prometheus counters and a latency histogram, written out in the text exposition format.

No client library: a handful of counters guarded by a lock is all ``/metrics`` needs.
"""
from __future__ import annotations

import threading
from collections import defaultdict

__all__ = ["Metrics", "BUCKETS"]

# Seconds: a lexical query answers in ~1 ms, a large model's hybrid query in ~300 ms.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _labels(**kv: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in kv.items())
    return "{" + inner + "}" if inner else ""


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Request counts by route, method and status; latency and batch-size histograms."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.latency: dict[str, list[int]] = {}
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.latency_count: dict[str, int] = defaultdict(int)
        self.batches = [0] * (len(BATCH_BUCKETS) + 1)
        self.batch_sum = 0
        self.batch_count = 0
        self.in_flight = 0

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, method, str(status))] += 1
            buckets = self.latency.setdefault(route, [0] * (len(BUCKETS) + 1))
            buckets[_bucket(BUCKETS, seconds)] += 1
            self.latency_sum[route] += seconds
            self.latency_count[route] += 1

    def observe_batch(self, size: int) -> None:
        with self._lock:
            self.batches[_bucket(BATCH_BUCKETS, size)] += 1
            self.batch_sum += size
            self.batch_count += 1

    def render(self, extra: dict[str, float] | None = None) -> str:
        lines: list[str] = []
        with self._lock:
            lines += ["# HELP mitsuke_http_requests_total HTTP requests by route, method and status.",
                      "# TYPE mitsuke_http_requests_total counter"]
            for (route, method, status), n in sorted(self.requests.items()):
                lines.append(f"mitsuke_http_requests_total{_labels(route=route, method=method, status=status)} {n}")
            lines += ["# HELP mitsuke_http_errors_total HTTP responses with a 4xx or 5xx status.",
                      "# TYPE mitsuke_http_errors_total counter"]
            errors: dict[tuple[str, str], int] = defaultdict(int)
            for (route, _, status), n in self.requests.items():
                if status[0] in "45":
                    errors[(route, status[0] + "xx")] += n
            for (route, cls), n in sorted(errors.items()):
                lines.append(f"mitsuke_http_errors_total{_labels(**{'route': route, 'class': cls})} {n}")
            lines += ["# HELP mitsuke_http_request_duration_seconds Time to answer a request.",
                      "# TYPE mitsuke_http_request_duration_seconds histogram"]
            for route in sorted(self.latency):
                lines += _histogram("mitsuke_http_request_duration_seconds", BUCKETS, self.latency[route],
                                    self.latency_sum[route], self.latency_count[route], route=route)
            lines += ["# HELP mitsuke_batch_queries Queries per embedding forward pass (micro-batching).",
                      "# TYPE mitsuke_batch_queries histogram"]
            lines += _histogram("mitsuke_batch_queries", BATCH_BUCKETS, self.batches, self.batch_sum,
                                self.batch_count)
            lines += ["# HELP mitsuke_http_requests_in_flight Requests being answered now.",
                      "# TYPE mitsuke_http_requests_in_flight gauge", f"mitsuke_http_requests_in_flight {self.in_flight}"]
        for name, value in (extra or {}).items():
            lines += [f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(lines) + "\n"


def _bucket(bounds: tuple, value: float) -> int:
    for i, b in enumerate(bounds):
        if value <= b:
            return i
    return len(bounds)


def _histogram(name: str, bounds: tuple, counts: list[int], total: float, n: int, **labels: str) -> list[str]:
    out = []
    running = 0
    for bound, c in zip(bounds, counts):
        running += c
        out.append(f"{name}_bucket{_labels(**labels, le=repr(float(bound)))} {running}")
    out.append(f"{name}_bucket{_labels(**labels, le='+Inf')} {n}")
    out.append(f"{name}_sum{_labels(**labels)} {total}")
    out.append(f"{name}_count{_labels(**labels)} {n}")
    return out
