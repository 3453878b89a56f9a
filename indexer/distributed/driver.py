"""The driver of a distributed run: list inputs, stream them through Ray Data, commit in order.

1. The driver lists the inputs (paths only; standard input is read here) and
   ships the index's ``{key: content_hash}`` table to the object store.
2. Ray Data tasks load, decode and hash each input; a document the index
   holds unchanged stops there (only its key and hash go on), the others are
   chunked and analysed (lexical terms) on the cluster's CPUs.
3. An actor pool embeds them: one actor per GPU (``num_gpus=1``), or CPU
   actors; each holds mitsuke's ``Embedder`` (same token-budget batching and
   dtype rules as a local run) and sends back float16 vectors.
4. The driver reads the rows in input order (``preserve_order``) and commits
   them through :meth:`IndexBuilder.add_prepared`: the same transactions,
   the same crash safety, the same chunk ids as a single-process run. A
   killed driver leaves the last commit; the re-run skips what it holds.

Failures of the cluster are Ray's to repair: a task whose worker dies is
retried (Ray's default, 3 times), and Ray Data restarts a dead embedding
actor and retries its batch (``max_restarts=-1``, ``max_task_retries=-1``).
"""
from __future__ import annotations

import logging
import math
import os
import pickle
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

from mitsuke.indexer.distributed.cluster import connect
from mitsuke.indexer.distributed.stages import EmbedWorker, prepare_batch
from mitsuke.indexer.documents import LoadFailure
from mitsuke.indexer.errors import MitsukeError
from mitsuke.indexer.loaders import FileInput, FormatOptions, list_inputs
from mitsuke.indexer.prepared import PreparedDocument

if TYPE_CHECKING:
    from mitsuke.indexer.writer import IndexSummary, IndexWriter

__all__ = ["index_with_ray"]

log = logging.getLogger("mitsuke")

_LOG_EVERY_S = 30.0
# Test hooks that must reach the workers (they write where the test reads).
_FORWARDED_ENV = ("MITSUKE_TEST_EMBED_LOG",)


def index_with_ray(
    builder: IndexWriter,
    paths: Iterable[str],
    *,
    address: str | None = None,
    actors: int | None = None,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    encoding: str | None = None,
    stdin: BinaryIO | None = None,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    formats: FormatOptions | None = None,
    inputs_per_task: int = 8,
    docs_per_batch: int | None = None,
    num_cpus: int | None = None,
) -> IndexSummary:
    """Index ``paths`` into ``builder`` on a Ray cluster; the result equals ``builder.add_paths(paths)``.

    ``address``: ``None`` starts a local cluster bound to 127.0.0.1 (or uses
    the Ray this process already initialised), else joins that cluster.
    ``formats``: how PDF and CSV/TSV files are read, as for a local run.
    ``actors``: embedding actors (default: one per GPU of the cluster, else one
    CPU actor using all CPUs but one). ``device``/``dtype`` as for a local run
    (``auto``: CUDA + bfloat16 on GPU actors, float32 on CPU ones). The model
    (the index's recorded directory or hub id) must be reachable at the same
    path or id from every node.
    ``builder.on_progress`` receives ``("total", inputs)`` first, then
    ``("inputs", 1)`` per finished input and ``("tokens", n)`` as well as the
    builder's own events.

    >>> with IndexBuilder.open("idx", model="./model") as b:            # doctest: +SKIP
    ...     index_with_ray(b, ["corpus/"], actors=2)
    """
    items = [pickle.dumps(_absolute(x), protocol=pickle.HIGHEST_PROTOCOL)
             for x in list_inputs(paths, include=include, exclude=exclude, encoding=encoding, stdin=stdin)]
    if not items:
        return builder.summary
    env = {k: os.environ[k] for k in _FORWARDED_ENV if os.environ.get(k)}
    started_cluster = connect(address, num_cpus=num_cpus, env_vars=env)
    try:
        ds = _pipeline(builder, items, actors=actors, encoding=encoding, device=device, dtype=dtype,
                       trust_remote_code=trust_remote_code, formats=formats, inputs_per_task=inputs_per_task,
                       docs_per_batch=docs_per_batch or builder.batch_docs)
        _emit(builder.on_progress, "total", len(items))
        try:
            builder.add_prepared(_rows(ds, len(items), builder.on_progress))
        except MitsukeError:
            raise
        except Exception as exc:  # a worker's error arrives wrapped by Ray
            raise _unwrap(exc) from None
    finally:
        if started_cluster:
            import ray

            ray.shutdown()
    return builder.summary


def _pipeline(builder: IndexWriter, items: list[bytes], *, actors: int | None, encoding: str | None, device: str,
              dtype: str, trust_remote_code: bool, formats: FormatOptions | None, inputs_per_task: int,
              docs_per_batch: int) -> Any:
    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # commits in input order: the same ids as a local run
    ctx.enable_progress_bars = False  # the driver reports progress itself
    recorded = builder.manifest.model  # the index's model: its directory if still there, else its hub id
    embedder = builder.embedder
    source, revision = (recorded.source(), recorded.revision) if recorded else (None, None)
    known = ray.put(builder.known_hashes())
    resources = ray.cluster_resources()
    cpus = int(resources.get("CPU", 1))
    # Enough blocks for every CPU to load and chunk at once, few enough inputs per task to stream.
    blocks = min(len(items), max(math.ceil(len(items) / max(1, inputs_per_task)), cpus))
    ds: ray.data.Dataset = ray.data.from_items([{"seq": i, "item": raw} for i, raw in enumerate(items)],
                                               override_num_blocks=blocks)
    ds = ds.map_batches(
        prepare_batch,  # type: ignore[arg-type]  # Ray's stub has no room for keyword-only fn_kwargs batch_format="numpy", batch_size=inputs_per_task, num_cpus=1,
        fn_kwargs={"known": [known], "model_source": source, "revision": revision,
                   "chunking": dict(builder.chunk_config.__dict__), "encoding": encoding,
                   "embed": embedder is not None, "formats": formats})
    if embedder is None:
        return ds
    # Re-cut the prepared documents into blocks of docs_per_batch (streaming, order kept): one big
    # JSONL file must feed every actor, not one. It also keeps Ray Data from fusing the CPU work
    # into the embedding actors, where it would leave the GPUs idle.
    ds = ds.repartition(target_num_rows_per_block=docs_per_batch)
    gpus = int(resources.get("GPU", 0)) if device != "cpu" else 0
    if gpus:
        pool = actors or gpus
        per_actor: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1}
        threads = None
        actor_device = "cuda" if device == "auto" else device
    else:
        pool = actors or 1
        # The actors share the CPUs but one, which the preparing tasks keep (a pool larger than
        # the CPUs gets fractions: it must never hold every CPU, or no task could prepare its input).
        share = max(cpus - 1, 0) / pool
        threads = max(1, int(share))
        per_actor = {"num_cpus": share}
        actor_device = "cpu"
    log.info("embedding on %d %s actor(s) of the cluster (%s)", pool, "GPU" if gpus else "CPU", resources)
    return ds.map_batches(
        EmbedWorker, batch_format="numpy", batch_size=docs_per_batch,
        compute=ray.data.ActorPoolStrategy(size=pool), **per_actor,
        fn_constructor_kwargs={"source": source, "revision": revision, "device": actor_device, "dtype": dtype,
                               "max_length": embedder.info.max_length, "batch_tokens": embedder.batch_tokens,
                               "trust_remote_code": trust_remote_code, "threads": threads})


def _absolute(item: Any) -> tuple[Any, str | None]:
    """A file as workers find it (absolute: their working directory is not ours) and the path as given,
    which the index records as the document's source, as a local run does."""
    if isinstance(item, FileInput):
        return FileInput(os.path.abspath(item.path), item.key), item.path
    return item, None


def _rows(ds: Any, total: int, on_progress: Callable[[str, int], None] | None
          ) -> Iterator[PreparedDocument | LoadFailure]:
    """The pipeline's documents in input order, reporting progress (total, tokens/s, ETA) on the way."""
    started = last_log = time.monotonic()
    done = tokens = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for last, payload, n_tokens in zip(batch["last"], batch["payload"], batch["tokens"]):
            if len(payload):
                yield pickle.loads(payload)
            if n_tokens:
                tokens += int(n_tokens)
                _emit(on_progress, "tokens", int(n_tokens))
            if last:
                done += 1
                _emit(on_progress, "inputs", 1)
        now = time.monotonic()
        if now - last_log >= _LOG_EVERY_S and done < total:
            rate = done / (now - started)
            log.info("%d of %d inputs, %.0f tokens/s across the cluster, about %.0f s left",
                     done, total, tokens / (now - started), (total - done) / rate if rate else float("nan"))
            last_log = now


def _emit(on_progress: Callable[[str, int], None] | None, kind: str, n: int) -> None:
    if on_progress is not None:
        on_progress(kind, n)


def _unwrap(exc: BaseException) -> MitsukeError:
    """The mitsuke error a worker raised (a model that does not load...), else one line about the failure."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, MitsukeError):
            return cur
        cur = getattr(cur, "cause", None) or cur.__cause__ or cur.__context__
    log.debug("the Ray pipeline failed", exc_info=exc)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return MitsukeError(f"the Ray pipeline failed: {type(exc).__name__}: {first} (run with -vv for the traceback)")
