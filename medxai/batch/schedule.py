"""Scheduling of batch chunks on any executor: :func:`drive` keeps a number of chunks in flight,
claims their series in the manifest just before submitting, records results as chunks complete,
and isolates a series that kills its worker.

Backends (the local process pool in :mod:`medxai.batch.job`, dask in
:mod:`medxai.batch.dask_runner`) pass ``submit`` and ``wait_any``; this module knows neither.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from medxai.batch.manifest import Manifest
from medxai.batch.runner import error_result
from medxai.batch.types import Job, Result
from medxai.errors import MedxaiError

__all__ = ["MAX_ATTEMPTS", "drive", "guided_chunks"]

#: How often a series may be claimed (its worker dying each time) before it fails.
MAX_ATTEMPTS = 3

Row = dict[str, Any]
JobsFor = Callable[[Row], Job]
OnResult = Callable[[Result], None]
Submit = Callable[[list[Job]], Any]


def guided_chunks(
    chunks: Sequence[Sequence[Row]], pipelines: int, smallest: int = 2
) -> list[list[Row]]:
    """Chunks of 2D images cut again so that they shrink towards the end (guided
    self-scheduling): each takes at most a ``2 * pipelines``-th of the images still to run, at
    least ``smallest`` and at most the largest chunk given. The pipelines then finish
    together, instead of one running the last full chunk alone while the others wait (40
    photos on 2 pipelines: 8, 8, 6, 5, 4, 3, 2, 2, 2 rather than 8 x 5). Single volumes and
    one pipeline stay as they are."""
    if pipelines <= 1 or not chunks or max(len(c) for c in chunks) <= 1:
        return [list(c) for c in chunks]
    rows = [r for c in chunks for r in c]
    largest = max(len(c) for c in chunks)
    out: list[list[Row]] = []
    i = 0
    while i < len(rows):
        left = len(rows) - i
        size = min(largest, max(smallest, math.ceil(left / (2 * pipelines))))
        out.append(rows[i : i + size])
        i += size
    return out


class _Flight:
    """The chunks waiting and the chunks submitted (future -> manifest rows)."""

    def __init__(self, chunks: Sequence[Sequence[Row]]) -> None:
        self.queue: deque[list[Row]] = deque(list(c) for c in chunks)
        self.running: dict[Any, list[Row]] = {}
        #: series of chunks in flight whose result came ahead of their chunk (streamed)
        self.early: set[str] = set()

    def busy(self) -> bool:
        return bool(self.queue or self.running)


def _fill(
    man: Manifest,
    flight: _Flight,
    jobs_for: JobsFor,
    submit: Submit,
    in_flight: int | Callable[[], int],
    worker: str,
) -> None:
    """Submit queued chunks until ``in_flight`` run; each chunk's series are claimed first (a
    series another driver claimed meanwhile is left out)."""
    limit = in_flight() if callable(in_flight) else in_flight
    while flight.queue and len(flight.running) < limit:
        chunk = flight.queue.popleft()
        ids = set(man.claim([r["id"] for r in chunk], worker))
        jobs = [jobs_for(r) for r in chunk if r["id"] in ids]
        if jobs:
            flight.running[submit(jobs)] = chunk


def _after_crash(
    man: Manifest,
    flight: _Flight,
    chunk: list[Row],
    exc: BaseException,
    jobs_for: JobsFor,
    on_result: OnResult,
) -> None:
    """A chunk's worker died: each of its series runs again on its own, unless it was claimed
    :data:`MAX_ATTEMPTS` times already (then it fails, naming the crash)."""
    attempts = {r["id"]: r["attempts"] for r in man.series("running")}
    for row in chunk:
        if row["id"] in flight.early:  # its result came before the worker died
            flight.early.discard(row["id"])
            continue
        if attempts.get(row["id"], MAX_ATTEMPTS) >= MAX_ATTEMPTS:
            on_result(
                error_result(
                    jobs_for(row),
                    MedxaiError(
                        f"its worker process died {MAX_ATTEMPTS} times while processing it "
                        f"({type(exc).__name__})"
                    ),
                )
            )
        else:
            man.requeue([row["id"]])
            flight.queue.append([row])


def _collect(
    man: Manifest,
    flight: _Flight,
    done: Sequence[Any],
    jobs_for: JobsFor,
    on_result: OnResult,
    is_crash: Callable[[BaseException], bool],
) -> bool:
    """Record the results of the finished futures; True when a worker died."""
    crashed = False
    for fut in done:
        chunk = flight.running.pop(fut)
        try:
            results = fut.result()
        except Exception as exc:  # noqa: BLE001 - a worker's death or error, recorded
            if is_crash(exc):
                crashed = True
                _after_crash(man, flight, chunk, exc, jobs_for, on_result)
                continue
            results = [error_result(jobs_for(r), exc) for r in chunk]
        for r in results:
            if r.id in flight.early:  # recorded when it was streamed
                flight.early.discard(r.id)
                continue
            on_result(r)
    return crashed


def _record_streamed(flight: _Flight, results: Sequence[Result], on_result: OnResult) -> None:
    """Record results that came ahead of their chunk, once each: a series whose chunk is no
    longer in flight (requeued after a crash, done) is left to the chunk that runs it."""
    running = {r["id"] for chunk in flight.running.values() for r in chunk}
    for r in results:
        if r.id in running and r.id not in flight.early:
            flight.early.add(r.id)
            on_result(r)


def _requeue_in_flight(
    man: Manifest, flight: _Flight, survives: Callable[[Any], bool] | None = None
) -> None:
    """Every other chunk in flight died with the pool (but those that ``survives`` names):
    requeue their series one by one."""
    for fut, chunk in list(flight.running.items()):
        if survives is not None and survives(fut):
            continue
        flight.running.pop(fut)
        left = [r for r in chunk if r["id"] not in flight.early]  # the others are recorded
        flight.early.difference_update(r["id"] for r in chunk)
        man.requeue([r["id"] for r in left])
        flight.queue.extend([r] for r in left)


def drive(
    man: Manifest,
    chunks: Sequence[Sequence[Row]],
    jobs_for: JobsFor,
    submit: Submit,
    wait_any: Callable[[list[Any]], Sequence[Any]],
    in_flight: int | Callable[[], int],
    worker: str,
    on_result: OnResult,
    on_crash: Callable[[], None] | None = None,
    is_crash: Callable[[BaseException], bool] = lambda _e: False,
    survives_crash: Callable[[Any], bool] | None = None,
    streamed: Callable[[], Sequence[Result]] | None = None,
) -> None:
    """Keep ``in_flight`` chunks submitted (claimed in the manifest just before), record results
    as chunks complete, or as they come when the workers stream them (``streamed``). A chunk
    whose worker died is split into single series and retried, each at most
    :data:`MAX_ATTEMPTS` times in all, but for those whose result came already; other errors
    fail the chunk's series.

    Args:
        man: the manifest; series are claimed for ``worker`` and requeued through its methods.
        chunks: manifest rows (:meth:`Manifest.pending`), grouped as the workers take them.
        jobs_for: a manifest row -> the :class:`Job` a worker takes.
        submit: jobs -> a future whose result is the list of :class:`Result`.
        wait_any: futures -> those of them that are done (none only when ``in_flight`` may
            have grown meanwhile).
        in_flight: how many chunks to keep submitted (a callable: asked before each fill).
        worker: the name claims are recorded under.
        on_result: called with each :class:`Result` (it records it in the manifest).
        on_crash: called after a worker died (e.g. to restart a broken pool).
        is_crash: whether a future's exception means its worker died.
        survives_crash: whether a future in flight lives on when a worker died (it runs
            elsewhere than the pool that broke); the others are requeued.
        streamed: the results that came since it was last called, ahead of their chunks
            (recorded at once, so that a kill of this process loses no finished series);
            ``wait_any`` then returns now and then with none done, so that they are taken.
    """
    flight = _Flight(chunks)
    while flight.busy():
        _fill(man, flight, jobs_for, submit, in_flight, worker)
        if not flight.running:
            continue
        done = wait_any(list(flight.running))
        if streamed is not None:  # before the chunks: a dead worker's last results count
            _record_streamed(flight, streamed(), on_result)
        crashed = _collect(man, flight, done, jobs_for, on_result, is_crash)
        if crashed and on_crash is not None:
            _requeue_in_flight(man, flight, survives_crash)
            on_crash()
