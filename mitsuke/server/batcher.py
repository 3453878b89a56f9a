"""Micro-batching: concurrent queries with the same options share one embedding forward pass.

Requests queue while a batch runs; when it finishes, the next batch takes
every queued query with the options of the oldest one (up to ``max_batch``)
and calls ``Searcher.search_batch`` once. No timer: a lone request starts at
once, so batching adds no latency when the server is idle.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["MicroBatcher"]

log = logging.getLogger("mitsuke")


class MicroBatcher:
    """``await batcher.submit(query, options)`` -> that query's result of ``run(queries, options)``.

    ``run`` is called in a worker thread, one batch at a time; an exception it
    raises is raised to every request of its batch (they share the options
    that caused it).
    """

    def __init__(self, run: Callable[[list[str], dict[str, Any]], list[Any]], max_batch: int = 64,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self._run = run
        self.max_batch = max(1, int(max_batch))
        self._on_batch = on_batch
        self._queue: deque[tuple[str, dict[str, Any], str, asyncio.Future]] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    async def submit(self, query: str, options: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._worker())
        assert self._wake is not None
        fut: asyncio.Future = loop.create_future()
        self._queue.append((json.dumps(options, sort_keys=True, default=str), options, query, fut))
        self._wake.set()
        return await fut

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue:
            fut = self._queue.popleft()[3]
            if not fut.done():
                fut.cancel()

    def _take(self) -> list[tuple[str, dict[str, Any], str, asyncio.Future]]:
        head = self._queue[0][0]
        batch: list[tuple[str, dict[str, Any], str, asyncio.Future]] = []
        rest: deque[tuple[str, dict[str, Any], str, asyncio.Future]] = deque()
        for item in self._queue:
            if item[0] == head and len(batch) < self.max_batch and not item[3].done():
                batch.append(item)
            elif not item[3].done():  # requests whose client went away are dropped
                rest.append(item)
        self._queue = rest
        return batch

    async def _worker(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._take()
                if not batch:
                    continue
                if self._on_batch is not None:
                    self._on_batch(len(batch))
                try:
                    results = await asyncio.to_thread(self._run, [b[2] for b in batch], batch[0][1])
                except Exception as exc:  # handed to each waiting request, which reports it
                    for *_, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (*_, fut), result in zip(batch, results):
                    if not fut.done():
                        fut.set_result(result)
