"""Scale-out on dask.distributed: the same per-series chunks as the local workers
(:func:`medxai.batch.runner.run_chunk`), submitted to a cluster.

The process that runs :func:`medxai.batch.run_batch` stays the only writer of the manifest: it
claims each chunk before submitting it and records results as futures complete, so the manifest
remains the single source of truth whatever happens to the workers (a worker that dies has its
tasks rescheduled by dask; a task that keeps killing workers fails its series). Every worker
loads the model once (a per-process cache) and must see the export, output and bundle folders at
the same paths (shared storage).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medxai.batch.manifest import Manifest
from medxai.batch.runner import WorkerConfig, run_chunk
from medxai.batch.schedule import JobsFor, OnResult, drive
from medxai.errors import InputError

__all__ = ["run_on_dask", "connect"]


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
        drive(
            man,
            chunks,
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
