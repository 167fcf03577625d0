"""Scale-out on dask.distributed: the same per-series chunks as the local workers
(:func:`medxai.batch.runner.run_chunk`), submitted to a cluster.

The process that runs :func:`medxai.batch.run_batch` stays the only writer of the manifest: it
claims each chunk before submitting it and records results as futures complete, so the manifest
remains the single source of truth whatever happens to the workers (a worker that dies has its
tasks rescheduled by dask; a task that keeps killing workers fails its series). Every worker
loads the model once (a per-process cache) and must see the export, output and bundle folders at
the same paths (shared storage).

Each worker loads the model once (:class:`ModelPlugin`, before its first task) and runs each
chunk through the same pipeline as the local run; a task gives its worker slot back once the
network is done with its chunk, so the next chunk predicts while this one is written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from medxai.batch.manifest import Manifest
from medxai.batch.runner import WorkerConfig, run_chunk, worker_bundle
from medxai.batch.schedule import JobsFor, OnResult, drive
from medxai.errors import InputError, MedxaiError

try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover - connect() says that dask.distributed is missing
    WorkerPlugin = object  # type: ignore[assignment,misc]

__all__ = ["ModelPlugin", "balanced_chunks", "connect", "relax_malloc_trim", "run_on_dask"]


class ModelPlugin(WorkerPlugin):
    """Loads the job's model once in every worker (and in workers that join later), before
    their first task: the same per-process cache the tasks read
    (:func:`medxai.batch.runner.worker_bundle`, keyed by bundle path and weights SHA-256).
    Library warnings are silenced in the worker (problems are in the results), and the
    nanny's malloc trimming is relaxed (:func:`relax_malloc_trim`)."""

    def __init__(self, model: str, weights_sha256: str | None) -> None:
        self.model, self.weights_sha256 = model, weights_sha256

    def setup(self, worker: Any) -> None:
        import warnings

        warnings.simplefilter("ignore")
        relax_malloc_trim()
        try:
            worker_bundle(self.model, self.weights_sha256)
        except MedxaiError:
            pass  # each series of the first task reports it


def relax_malloc_trim() -> bool:
    """Undo the dask nanny's ``MALLOC_TRIM_THRESHOLD_=65536`` in this worker process (glibc
    only; nothing elsewhere or when it is not set): with it, glibc gives every freed array back
    to the OS and maps the next one afresh (the fixed trim threshold also fixes the mmap
    threshold at 128 KiB), so each image's arrays cost page faults. The local batch ran 1.6x
    faster than with the variable set (docs/benchmarks.md). Sets the mmap threshold to 32 MiB
    and the trim threshold to 64 MiB (glibc's own dynamic values after large frees). True when
    applied."""
    import ctypes
    import os
    import sys

    if not sys.platform.startswith("linux") or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 32 << 20) == 1
    return libc.mallopt(m_trim_threshold, 64 << 20) == 1 and ok


def balanced_chunks(
    chunks: Sequence[Sequence[dict[str, Any]]], n_workers: int
) -> list[list[dict[str, Any]]]:
    """Chunks of 2D images cut smaller when there are few, so that every worker gets about two
    (20 photos on 2 workers: 4 chunks of 5, not 8 + 8 + 4); single volumes stay as they are."""
    if not chunks or max(len(c) for c in chunks) <= 1:
        return [list(c) for c in chunks]
    rows = [r for c in chunks for r in c]
    size = max(1, min(max(len(c) for c in chunks), math.ceil(len(rows) / (2 * n_workers))))
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def connect(scheduler: str, workers: int) -> tuple[Any, Any]:
    """A dask ``Client`` for ``scheduler`` (an address such as ``tcp://host:8786``, or
    ``"local"`` for a LocalCluster of ``workers`` single-threaded worker processes), and the
    cluster it started (``None`` for an existing one).

    Raises:
        InputError: dask.distributed is not installed or the scheduler cannot be reached.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise InputError(
            "--scheduler needs dask.distributed, which is not installed",
            hint="pip install 'dask[distributed]'",
        ) from exc
    if scheduler == "local":
        cluster = LocalCluster(
            n_workers=max(1, workers), threads_per_worker=1, processes=True, dashboard_address=None
        )
        return Client(cluster), cluster
    try:
        return Client(scheduler, timeout="20s"), None
    except (OSError, TimeoutError) as exc:
        raise InputError(
            f"cannot reach the dask scheduler at {scheduler} ({exc})",
            hint="check the address (e.g. tcp://host:8786), or use --scheduler local",
        ) from exc


def run_on_dask(
    man: Manifest,
    chunks: Sequence[Sequence[dict[str, Any]]],
    jobs_for: JobsFor,
    config: WorkerConfig,
    on_result: OnResult,
    *,
    scheduler: str,
    workers: int = 1,
) -> None:
    """Run ``chunks`` on the cluster at ``scheduler``; results go to ``on_result`` (which records
    them in the manifest) as their tasks finish."""
    from distributed import wait

    client, cluster = connect(scheduler, workers)
    try:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})) or workers)
        if config.model:
            sha = (config.weights_sha256 or "")[:16]
            client.register_plugin(
                ModelPlugin(config.model, config.weights_sha256), name=f"medxai-model-{sha}"
            )
        drive(
            man,
            balanced_chunks(chunks, n_workers),
            jobs_for,
            submit=lambda jobs: client.submit(run_chunk, jobs, config, pure=False, retries=1),
            wait_any=lambda fs: list(wait(fs, return_when="FIRST_COMPLETED").done),
            in_flight=2 * n_workers,
            worker=f"dask:{scheduler}",
            on_result=on_result,
        )
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
