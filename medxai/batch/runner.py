"""The worker side of a batch job: read a stack, segment it with the same pipeline functions as
``medxai segment`` (:func:`medxai.pipeline.segment_loaded`), report the outcome as a
:class:`~medxai.batch.types.Result`.

Series run through the stages of :mod:`medxai.pipeline` (:class:`ChunkPipeline`):

1. a decode thread reads the next stacks (DICOM decoding) and checks a chosen model's full fit
   rules on them, while the network works on the current ones;
2. this thread (the network's) runs everything that needs the network: 2D images go through it
   in batches (:func:`medxai.inference.predict_batch`) when the model takes whole images,
   volumes one at a time; then the uncertainty samples (TTA views, MC dropout) and the
   saliency maps (:func:`medxai.pipeline.predict_stage`, :func:`~medxai.pipeline.explain_stage`);
3. the writers (:class:`Writers`: writer processes that load no model, or with ``writers=0``
   :data:`WRITER_THREADS` threads) write the result folders from plain picklable
   :class:`~medxai.pipeline.WriteTask` s (:func:`medxai.pipeline.write_stage`: uncertainty map,
   NIfTI, PNG, DICOM objects, report) while the network runs on the next batch. Results are
   emitted in the order of the series; a writer process that dies loses nothing (its series
   are written again).

Every queue between the stages is bounded (:data:`AHEAD` batches read ahead, at most
:data:`AHEAD` batches waiting to be written), so memory does not grow with the number of series.
The model is loaded once per worker process (:func:`worker_bundle`) and used by one chunk at a
time. Nothing here touches the manifest: results go back to the process that owns it.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import os
import pickle
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medxai.batch.types import Job, Result
from medxai.errors import MedxaiError, ModelError, ModelMismatchError
from medxai.inference import (
    Prediction,
    Prepared,
    check_input_fits,
    network_on,
    predict_batch,
    prepare_input,
    resolve_device,
)
from medxai.io.types import LoadedImage
from medxai.models.bundle import ModelBundle
from medxai.models.fit import FitRules, ModelChoice
from medxai.pipeline import (
    SegmentOptions,
    WriteTask,
    explain_stage,
    input_facts,
    predict_stage,
    saliency_forward,
    saliency_maps,
    write_stage,
    write_task,
)
from medxai.uncertainty import (
    SampleAccumulator,
    ViewCollector,
    tta_accumulator,
    uncertainty_method,
)

#: The hint of a series that the header scan gave to a model (no --model) and that the model's
#: fit rules refuse once the image is read (spacing, field of view, body part).
REFUSED_AFTER_SCAN_HINT = (
    "the headers alone did not show it (spacing, field of view, body part); "
    "`medxai models` lists each model's fit rules: no bundled model takes these series. "
    "To run one on them anyway, name it with --model"
)

__all__ = [
    "AHEAD",
    "MAX_WRITE_ATTEMPTS",
    "WRITER_THREADS",
    "ChunkPipeline",
    "WorkerConfig",
    "Writers",
    "default_writers",
    "error_result",
    "load_stack",
    "predict_batch",
    "process_chunk",
    "run_chunk",
    "worker_bundle",
    "worker_name",
    "worker_start_method",
    "write_one",
]

ResultFn = Callable[[Result], None]

#: Batches read ahead of the network, and batches of results waiting for the writer, at most.
AHEAD = 2
#: Writer threads when no writer process is asked for (``writers=0``): the DICOM, NIfTI and PNG
#: writers spend much of their time in zlib, numpy and Pillow, which release the GIL, so two
#: threads write about 1.2x as many result folders per second as one.
WRITER_THREADS = 2
#: How often a writer process may die while writing a series before the series fails.
MAX_WRITE_ATTEMPTS = 3


@dataclass
class WorkerConfig:
    """What a worker needs besides the series: the model and the output options (picklable).

    Attributes:
        model: the bundle folder (absolute; on a cluster, a path every worker can read).
        weights_sha256: the weights the job was started with; a worker refuses other weights.
        options: the pipeline options (``overwrite`` is forced on: the manifest decides).
        batch_size: 2D images per forward pass.
    """

    model: str
    weights_sha256: str | None
    options: SegmentOptions
    batch_size: int = 8


def worker_name() -> str:
    """``host:pid`` of this process, recorded with each result."""
    return f"{socket.gethostname()}:{os.getpid()}"


# ---------------------------------------------------------------------------------------------
# the model, once per process
# ---------------------------------------------------------------------------------------------

_BUNDLES: dict[tuple[str, str | None], tuple[ModelBundle, threading.Lock]] = {}
_BUNDLES_LOCK = threading.Lock()


def worker_bundle(path: str, weights_sha256: str | None) -> tuple[ModelBundle, threading.Lock]:
    """The bundle at ``path``, loaded once per process, and the lock that keeps two threads of
    one worker from using its network at the same time.

    Raises:
        ModelError: the bundle cannot be loaded, or its weights are not the job's.
    """
    key = (str(path), weights_sha256)
    with _BUNDLES_LOCK:
        if key not in _BUNDLES:
            from medxai.models.bundle import load_bundle

            bundle = load_bundle(path)
            if weights_sha256 and bundle.weights_sha256 != weights_sha256:
                raise ModelError(
                    f"weights SHA-256 is {bundle.weights_sha256}, the batch job was "
                    f"started with {weights_sha256}",
                    path=path,
                    hint="every worker must see the same model bundle",
                )
            _BUNDLES[key] = (bundle, threading.Lock())
        return _BUNDLES[key]


# ---------------------------------------------------------------------------------------------
# reading a stack
# ---------------------------------------------------------------------------------------------


def load_stack(job: Job) -> LoadedImage:
    """Read the stack of ``job``: one file (2D image or multi-frame object) or the given slice
    files of a series, through medxai's reader.

    ``job.files`` are absolute paths; ``job.folder``, when set, is a folder that holds exactly
    these files (it becomes the input path the report names and hashes).

    Raises:
        MedxaiError: the files cannot be read or do not form one image.
    """
    from medxai.io.readers import load_dicom_files, load_image

    files = [Path(f) for f in job.files]
    if len(files) == 1:
        return load_image(files[0])
    folder = Path(job.folder or os.path.commonpath([str(f) for f in files]))
    loaded = load_dicom_files(folder, files)
    if not job.folder:
        # the common folder holds other files too: name (and hash) the first slice instead
        loaded.path = files[0]
    return loaded


def can_batch(bundle: ModelBundle) -> bool:
    """Whether images go through ``bundle`` in batches: 2D whole-image models."""
    return bundle.spatial_dims == 2 and bundle.inference.get("mode", "whole_image") == "whole_image"


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------


def _result(
    job: Job,
    state: str,
    *,
    reason: str | None = None,
    detail: str | None = None,
    outputs: list[str] | None = None,
    timings: dict[str, float | None] | None = None,
    model: str | None = None,
) -> Result:
    return Result(
        id=job.id,
        state=state,
        reason=reason,
        detail=detail,
        outputs=outputs,
        timings=timings or {},
        worker=worker_name(),
        output_name=job.output_name,
        model=model,
    )


def error_result(
    job: Job,
    exc: BaseException,
    timings: dict[str, float | None] | None = None,
    model: str | None = None,
) -> Result:
    """Skipped when the input does not fit the model; failed for any other error, with the
    message (and, for an unexpected error, the traceback in ``detail``)."""
    if isinstance(exc, ModelMismatchError):
        reason = f"does not fit the model: {exc}"
        return _result(job, "skipped", reason=reason, timings=timings, model=model)
    if isinstance(exc, MedxaiError):
        return _result(job, "failed", reason=str(exc), timings=timings, model=model)
    return _result(
        job,
        "failed",
        reason=f"internal error: {type(exc).__name__}: {exc}",
        detail="".join(traceback.format_exception(exc))[-4000:],
        timings=timings,
        model=model,
    )


# ---------------------------------------------------------------------------------------------
# writers: threads of this process, or writer processes that load no model
# ---------------------------------------------------------------------------------------------


def write_one(task: WriteTask, job: Job, timings: dict[str, float | None]) -> Result:
    """The write stage of one series (:func:`medxai.pipeline.write_stage`), as a
    :class:`Result`; runs in a writer thread or a writer process. Never raises for a bad series:
    the result says ``failed`` and why."""
    t0 = time.perf_counter()
    timings = dict(timings)
    ahead = float(timings.pop("ahead", None) or 0.0)
    try:
        res = write_stage(task)
    except Exception as exc:  # noqa: BLE001 - one series never stops the others; recorded
        timings["total"] = round(ahead + time.perf_counter() - t0, 4)
        return error_result(job, exc, timings, model=task.model.name)
    rt = res.report.get("timings_s") or {}
    timings["write"] = round(sum(v for k, v in rt.items() if k.startswith("write")), 4)
    timings["total"] = round(ahead + time.perf_counter() - t0, 4)
    done = _result(job, "done", outputs=list(res.files), timings=timings, model=task.model.name)
    done.quality_score = (res.report.get("quality") or {}).get("score")
    return done


def default_writers() -> int:
    """Writer processes by default: one per core but the network's on machines with more than
    two cores; 0 (writer threads) on two cores or fewer, where the writers' zlib, numpy and
    Pillow work already fills the cores from threads (they release the GIL) and writer
    processes only add their start-up and the copy of each result (measured: docs/benchmarks.md,
    "Writer processes")."""
    cores = os.cpu_count() or 1
    return cores - 1 if cores > 2 else 0


def warm_writer_process(dicom: bool) -> int:
    """A writer process's set-up ahead of its first series (:meth:`Writers.warm`); its pid."""
    if dicom:
        from medxai.io.writers import warm_dicom_writers

        warm_dicom_writers()
    return os.getpid()


def init_writer_process(parent_pid: int) -> None:
    """Initializer of writer processes: one torch thread each, library warnings silenced
    (problems are in the results), and an exit when the network process dies (so that a
    killed run leaves no writer behind to race with the next run)."""
    init_worker_process(1, parent_pid)


class _Write:
    """One series handed to the writers: its task (kept until its result is taken, so that a
    writer's death loses nothing), the future, and how many writers died while holding it; or
    a result made before writing (a failed read, a skip)."""

    def __init__(
        self,
        task: WriteTask | None,
        job: Job,
        timings: dict[str, float | None],
        result: Result | None = None,
    ) -> None:
        self._task, self.job, self.timings = task, job, timings
        self.future: cf.Future[Result] | None = None
        self.result = result
        self.crashes = 0

    @property
    def task(self) -> WriteTask:
        assert self._task is not None
        return self._task

    def done(self) -> bool:
        return self.result is not None or (self.future is not None and self.future.done())


class Writers:
    """Where the write stage runs: ``processes`` writer processes (one torch thread each), or
    with ``processes=0`` :data:`WRITER_THREADS` threads of this process.

    Writer processes are forked when ``fork`` is true and forking is safe at the time
    (:func:`worker_start_method`: Linux, no other thread in this process, CUDA not
    initialised): a forked writer is ready at once with this process's imports. Otherwise they
    are spawned: each imports medxai (about 3 CPU-seconds) and loads no model. Pass ``fork``
    only where the writers will never need CUDA (a run on the CPU).

    A writer process that dies (kill -9, out of memory) breaks the pool: a new pool is started
    and every series it held is written again, one at a time, so that a series that kills its
    writer is found; it fails after :data:`MAX_WRITE_ATTEMPTS` deaths, the others are written.
    Result folders are committed by one rename, so writing a series again after its writer died
    replaces nothing but a folder with the same content.
    """

    def __init__(self, processes: int = 0, *, fork: bool = False) -> None:
        self.processes = max(0, int(processes))
        self.restarts = 0
        self._fork = fork
        #: how the writer processes of the current pool started (None: threads)
        self.start_method: str | None = None
        self._pool: cf.Executor = self._make()

    def _make(self) -> cf.Executor:
        if self.processes == 0:
            self.start_method = None
            return cf.ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="medxai-write")
        import multiprocessing

        # decided per pool: one started again after a writer died finds this process's
        # threads running, so it is spawned
        self.start_method = "fork" if self._fork and worker_start_method(1) == "fork" else "spawn"
        return cf.ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context(self.start_method),
            initializer=init_writer_process,
            initargs=(os.getpid(),),
        )

    def __enter__(self) -> Writers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def warm(self, dicom: bool = False) -> None:
        """Start the writer processes now (they import medxai in the background), not at the
        first series; with ``dicom``, each also sets up the DICOM writers (highdicom's tables,
        0.6-0.9 CPU-s a process) before its first object."""
        if self.processes:
            for _ in range(self.processes):
                self._pool.submit(warm_writer_process, dicom)

    def submit(self, task: WriteTask, job: Job, timings: dict[str, float | None]) -> _Write:
        w = _Write(task, job, timings)
        try:
            w.future = self._pool.submit(write_one, task, job, timings)
        except BrokenProcessPool as exc:  # a writer died while none was busy: see result()
            w.future = cf.Future()
            w.future.set_exception(exc)
        return w

    def result(self, w: _Write, pending: Sequence[_Write] = ()) -> Result:
        """The result of ``w``; after a writer's death, ``pending`` (the other series handed
        on and not taken yet, ``w`` among them) are written again first."""
        if w.result is not None:
            return w.result
        assert w.future is not None
        try:
            return w.future.result()
        except BrokenProcessPool:
            self._recover([p for p in pending if p.result is None] or [w])
        except Exception as exc:  # noqa: BLE001 - e.g. a task that cannot be pickled
            w.result = error_result(w.job, exc, model=w.task.model.name)
        assert w.result is not None
        return w.result

    def _recover(self, lost: Sequence[_Write]) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        pool: cf.Executor | None = None
        for w in lost:
            fut = w.future
            if fut is not None and fut.done() and not fut.cancelled():
                exc = fut.exception()
                if exc is None:
                    w.result = fut.result()
                    continue
                if not isinstance(exc, BrokenProcessPool):
                    w.result = error_result(w.job, exc, model=w.task.model.name)
                    continue
            w.crashes += 1
            while w.result is None:
                _remove_partials(w.task)
                if w.crashes >= MAX_WRITE_ATTEMPTS:
                    w.result = error_result(
                        w.job,
                        MedxaiError(f"its writer process died {w.crashes} times while writing it"),
                        model=w.task.model.name,
                    )
                    break
                if pool is None:
                    self.restarts += 1
                    pool = self._make()
                try:
                    w.result = pool.submit(write_one, w.task, w.job, w.timings).result()
                except BrokenProcessPool:
                    w.crashes += 1
                    pool.shutdown(wait=True, cancel_futures=True)
                    pool = None
                except Exception as exc:  # noqa: BLE001 - e.g. a task that cannot be pickled
                    w.result = error_result(w.job, exc, model=w.task.model.name)
        self._pool = pool if pool is not None else self._make()


def _remove_partials(task: WriteTask) -> None:
    """The temporary folders a dead writer left for ``task`` (no writer is alive then)."""
    import shutil

    for p in task.out_root.glob(f".{task.name}.partial-*"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# one chunk of series
# ---------------------------------------------------------------------------------------------


@dataclass
class _Item:
    """A series on its way through the pipeline."""

    job: Job
    loaded: LoadedImage
    read_s: float
    prediction: Prediction | None = None
    #: the saliency maps of the batched prediction's kept forward pass, and their seconds
    saliency: dict[int, torch.Tensor] | None = None
    explain_s: float | None = None
    #: the TTA views of the batched prediction, for the uncertainty map (not predicted again)
    views: SampleAccumulator | None = None
    #: the model's input made from it by the decode thread (None: made by the network's)
    prepared: Prepared | None = None


def _read(job: Job, bundle: ModelBundle, prepare: bool = False) -> _Item:
    """Stage 1 (decode thread): read the stack; a model chosen from headers has its full fit
    rules (spacing, extent, body part) checked on the read image, before any prediction. With
    ``prepare`` (a batched whole-image model) the model's input is made here too, off the
    network's thread (an image it cannot be made of is left to the network's thread, which
    reports why)."""
    t0 = time.perf_counter()
    loaded = load_stack(job)
    if job.model_choice:
        problems = FitRules.from_bundle_config(bundle.config).problems(input_facts(loaded))
        if problems:
            # no path (the manifest row names the series) and no --model hint (none was given):
            # series refused alike read alike, so that the summary counts them together
            raise ModelMismatchError(
                f"{bundle.name} was chosen by the series' headers, but the image read does not "
                f"fit it: {'; '.join(problems)}",
                hint=REFUSED_AFTER_SCAN_HINT,
            )
    prepared = None
    if prepare:
        try:
            check_input_fits(bundle, loaded.image, str(loaded.path))
            prepared = prepare_input(bundle, loaded.image)
        except Exception:  # noqa: BLE001 - the network's thread meets it again and reports it
            prepared = None
    return _Item(job, loaded, time.perf_counter() - t0, prepared=prepared)


class ChunkPipeline:
    """The stages of :func:`process_chunk` (see the module docstring) for a stream of series.

    Args:
        jobs: the series, in order (any iterable: it is read as the pipeline needs them, so a
            driver can claim series just in time).
        bundle: the loaded model (this thread alone uses its network).
        options: output options (``overwrite`` is forced on).
        batch_size: 2D images per forward pass.
        emit: called with each :class:`Result`, in this thread, in the order of ``jobs``.
        writers: where the write stage runs (default: writer threads of this process).
        network_done: called once the network's part of every series is done, before the
            last writes are waited for (a dask task gives its worker slot back there).
    """

    def __init__(
        self,
        jobs: Iterable[Job],
        bundle: ModelBundle,
        options: SegmentOptions,
        batch_size: int,
        emit: ResultFn,
        writers: Writers | None = None,
        network_done: Callable[[], None] | None = None,
    ) -> None:
        self.network_done = network_done
        self.bundle = bundle
        self.options = dataclasses.replace(options, overwrite=True)
        self.emit = emit
        self.batched = can_batch(bundle)
        self.group_size = max(1, batch_size) if self.batched else 1
        self.queue: Iterator[Job] = iter(jobs)
        self.reads: deque[tuple[Job, cf.Future[_Item]]] = deque()
        self.writes: deque[_Write] = deque()
        self.device = resolve_device(options.device)
        self.uncertainty, _ = uncertainty_method(bundle, options.uncertainty, options.tta)
        self.writers = writers

    def run(self) -> None:
        """Process every job; returns when the last result is emitted."""
        with contextlib.ExitStack() as stack:
            self.decoder = stack.enter_context(
                cf.ThreadPoolExecutor(1, thread_name_prefix="medxai-decode")
            )
            # the TTA views' label maps and sums for the uncertainty, off the network's thread
            self.viewer = stack.enter_context(
                cf.ThreadPoolExecutor(1, thread_name_prefix="medxai-views")
            )
            if self.writers is None:
                self.writers = stack.enter_context(Writers(0))
            # the network held on its device, in its layout, for the whole stream: each
            # batch's prediction then finds it ready (medxai.inference.network_on)
            stack.enter_context(network_on(self.bundle.network, self.device))
            self._read_ahead()
            while self.reads:
                for item in self._predict(self._next_group()):
                    self._network(item)
                self._drain(block=False)
            if self.network_done is not None:
                self.network_done()
            self._drain(block=True)

    # -- stage 1: reading ahead ---------------------------------------------------------------
    def _read_ahead(self) -> None:
        while len(self.reads) < AHEAD * self.group_size:
            job = next(self.queue, None)
            if job is None:
                return
            self.reads.append((job, self.decoder.submit(_read, job, self.bundle, self.batched)))

    def _next_group(self) -> list[_Item]:
        """Up to ``group_size`` read series (a failed read becomes its series' result)."""
        group: list[_Item] = []
        while self.reads and len(group) < self.group_size:
            job, fut = self.reads.popleft()
            self._read_ahead()
            try:
                group.append(fut.result())
            except Exception as exc:  # noqa: BLE001 - recorded as the series' failure
                self._hand_on_result(job, error_result(job, exc, model=self.bundle.name))
        return group

    # -- stage 2: the network -----------------------------------------------------------------
    def _predict(self, group: list[_Item]) -> list[_Item]:
        """Batched prediction of the fitting items of ``group`` (the others become skipped
        results). Without batching, items pass through untouched: :meth:`_network` predicts
        them one at a time. A batch that fails falls back to one image at a time, which reports
        the error of the image that caused it."""
        if not self.batched or not group:
            return group
        fitting = []
        for item in group:
            try:
                check_input_fits(self.bundle, item.loaded.image, str(item.loaded.path))
                fitting.append(item)
            except ModelMismatchError as exc:
                self._hand_on_result(item.job, error_result(item.job, exc, model=self.bundle.name))
        views = (
            [tta_accumulator(self.bundle) for _ in fitting] if self.uncertainty == "tta" else None
        )
        # the saliency's forward pass is the batch's identity view: only backward passes remain
        kept = (
            saliency_forward(self.bundle, self.options, self.device)
            if self.options.explain
            else None
        )
        try:
            preds = predict_batch(
                self.bundle,
                [it.loaded.image for it in fitting],
                device=self.device,
                tta=self.options.tta,
                each_view=ViewCollector(views, self.viewer) if views is not None else None,
                identity_forward=kept,
                prepared=[it.prepared for it in fitting],
            )
        except Exception:  # noqa: BLE001 - the single-image path reports it
            if kept is not None:
                kept.release()
            return fitting
        for k, (item, pred) in enumerate(zip(fitting, preds)):
            item.prediction = pred
            item.views = views[k] if views is not None else None
            if kept is not None:
                self._explain_kept(item, kept, k)
        if kept is not None:
            kept.release()
        return fitting

    def _explain_kept(self, item: _Item, kept: Any, index: int) -> None:
        """The saliency maps of image ``index`` of the batch from its kept forward pass; on an
        error none (the explain stage then makes them on its own, and reports the error)."""
        t0 = time.perf_counter()
        try:
            item.saliency = saliency_maps(
                self.bundle, item.loaded, self.options, self.device, item.prediction, kept, index
            )
        except Exception:  # noqa: BLE001 - the explain stage explains and reports it
            item.saliency = None
            return
        item.explain_s = time.perf_counter() - t0

    def _network(self, item: _Item) -> None:
        """Everything that needs the network, in this thread: the prediction (unless batched),
        the uncertainty samples (TTA views, MC dropout: never in a writer, where they would
        race with the next prediction) and the saliency maps; then the write task goes to the
        writers."""
        t0 = time.perf_counter()
        opts, job = self.options, item.job
        timings: dict[str, float | None] = {"read": round(item.read_s, 4)}
        try:
            kept = None
            if item.prediction is None:
                check_input_fits(self.bundle, item.loaded.image, str(item.loaded.path))
                kept = saliency_forward(self.bundle, opts, self.device) if opts.explain else None
            predicted = predict_stage(
                item.loaded,
                self.bundle,
                opts,
                self.device,
                prediction=item.prediction,
                views=item.views,
                kept=kept,
            )
            explained = explain_stage(
                item.loaded,
                self.bundle,
                opts,
                self.device,
                predicted.prediction,
                maps=item.saliency,
                kept=kept,
            )
            if item.saliency is not None:
                explained.seconds = item.explain_s
            choice = ModelChoice.from_dict(job.model_choice) if job.model_choice else None
            task = write_task(
                item.loaded,
                self.bundle,
                job.out_root,
                job.name,
                opts,
                predicted,
                explained,
                self.device,
                choice,
            )
        except Exception as exc:  # noqa: BLE001 - one series never stops the others; recorded
            timings["total"] = round(item.read_s + time.perf_counter() - t0, 4)
            self._hand_on_result(job, error_result(job, exc, timings, model=self.bundle.name))
            return
        pred = predicted.prediction
        timings["predict"] = round(predicted.timings.get("predict", pred.seconds), 4)
        timings["explain"] = round(explained.seconds, 4) if explained.seconds is not None else None
        batched = pred.seconds if item.prediction is not None else 0.0
        timings["ahead"] = item.read_s + batched + time.perf_counter() - t0
        self._wait_room()
        assert self.writers is not None
        self.writes.append(self.writers.submit(task, job, timings))

    # -- stage 3: writing ---------------------------------------------------------------------
    def _wait_room(self) -> None:
        """Bounded: at most :data:`AHEAD` batches wait for the writers."""
        while len(self.writes) >= AHEAD * self.group_size:
            self._emit_first()

    def _hand_on_result(self, job: Job, result: Result) -> None:
        """A result made here (a failed read, a skip, a network error), emitted in its turn."""
        self.writes.append(_Write(None, job, {}, result))

    def _emit_first(self) -> None:
        assert self.writers is not None
        w = self.writes[0]
        result = self.writers.result(w, self.writes)
        self.writes.popleft()
        self.emit(result)

    def _drain(self, block: bool) -> None:
        while self.writes and (block or self.writes[0].done()):
            self._emit_first()


def process_chunk(
    jobs: Iterable[Job],
    bundle: ModelBundle,
    options: SegmentOptions,
    *,
    batch_size: int = 8,
    on_result: ResultFn | None = None,
    writers: Writers | None = None,
    network_done: Callable[[], None] | None = None,
) -> list[Result]:
    """Segment the series of ``jobs``, one :class:`Result` per series, in the order of
    ``jobs``; ``on_result`` sees each as it is ready. ``writers``: where the write stage runs
    (default: writer threads of this process); ``network_done``: see :class:`ChunkPipeline`.
    Never raises for a bad series: its result says
    ``failed`` or ``skipped`` and why."""
    results: list[Result] = []

    def emit(r: Result) -> None:
        results.append(r)
        if on_result is not None:
            on_result(r)

    try:
        pipeline = ChunkPipeline(jobs, bundle, options, batch_size, emit, writers, network_done)
    except MedxaiError as exc:  # the device cannot be used: every series fails alike
        for job in jobs:
            emit(error_result(job, exc))
        return results
    pipeline.run()
    return results


_PROCESS_WRITERS: list[Writers] = []


def _shared_writers() -> Writers:
    """The writer threads of this worker process, shared by its chunks (a chunk that finished
    with the network writes while the next one predicts)."""
    with _BUNDLES_LOCK:
        if not _PROCESS_WRITERS:
            _PROCESS_WRITERS.append(Writers(0))
        return _PROCESS_WRITERS[0]


def _leave_dask_slot() -> None:
    """Inside a dask task: give the worker's thread slot back (``secede``), so that the next
    task's network work overlaps this one's writing; nothing elsewhere."""
    try:
        from distributed import get_worker, secede

        get_worker()
    except (ImportError, ValueError):
        return
    secede()


#: in a local worker process: the write end of the pipe that each result is sent through to
#: the driving process as soon as it is made (:func:`stream_result`); empty elsewhere
_STREAM: list[Any] = []

#: the largest pickled result sent through the pipe: with the 4-byte length before it, one
#: write of at most ``PIPE_BUF`` (4096 bytes on Linux) bytes, which the kernel never interleaves
#: with another process's write and never leaves half done when its writer is killed
STREAM_MAX_BYTES = 4092


def stream_result(result: Result) -> None:
    """Send ``result`` to the driving process now (a local worker process only). Best effort:
    a result too large for one atomic write (a long traceback) is not sent, and comes back
    with its chunk like every result does."""
    if not _STREAM:
        return
    data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > STREAM_MAX_BYTES:
        return
    with contextlib.suppress(OSError):  # the driver is gone: this process ends with it
        _STREAM[0].send_bytes(data)


def run_chunk(
    jobs: Sequence[Job], config: WorkerConfig, on_result: ResultFn | None = None
) -> list[Result]:
    """Worker entry point (process pool and dask): the model from this process's cache, then
    :func:`process_chunk` with this process's writer threads. The network is held (its lock)
    until the chunk's network work is done; then it is free for the next chunk (in a dask
    worker, the task leaves its slot) while this one's last results are written. A model that
    cannot be loaded fails every series of the chunk. ``on_result`` sees each result as it is
    made (default: :func:`stream_result` in a local worker process)."""
    import warnings

    if on_result is None and _STREAM:
        on_result = stream_result
    try:
        bundle, lock = worker_bundle(config.model, config.weights_sha256)
    except MedxaiError as exc:
        return [error_result(job, exc) for job in jobs]
    held = [lock.acquire()]

    def network_done() -> None:
        if held[0]:
            lock.release()
            held[0] = False
        _leave_dask_slot()

    try:
        with warnings.catch_warnings():
            # problems are in the results; pydicom's warnings would flood the workers' logs
            warnings.simplefilter("ignore")
            return process_chunk(
                jobs,
                bundle,
                config.options,
                batch_size=config.batch_size,
                on_result=on_result,
                writers=_shared_writers(),
                network_done=network_done,
            )
    finally:
        if held[0]:
            lock.release()


def keep_bundle(bundle: ModelBundle, config: WorkerConfig) -> None:
    """Put ``bundle``, loaded by this process already, in this process's worker cache under
    ``config``'s model, so that chunks run here (:func:`run_chunk`) use it instead of loading
    the model a second time."""
    with _BUNDLES_LOCK:
        _BUNDLES.setdefault((config.model, config.weights_sha256), (bundle, threading.Lock()))


def warm_worker(config: WorkerConfig, dicom: bool) -> None:
    """A worker process's start before its first chunk: the model loaded (into this process's
    cache) and, when the run writes DICOM, the writers' one-time set-up (highdicom's tables)."""
    worker_bundle(config.model, config.weights_sha256)
    if dicom:
        from medxai.io.writers import warm_dicom_writers

        warm_dicom_writers()


def run_chunk_here(
    jobs: Sequence[Job],
    config: WorkerConfig,
    torch_threads: int,
    on_result: ResultFn | None = None,
) -> list[Result]:
    """:func:`run_chunk` in a thread of the driving process (local workers with
    ``workers=None``) with this many torch threads: its share of the cores, which changes as
    the worker processes become ready (the driving thread runs no network)."""
    torch.set_num_threads(max(1, torch_threads))
    return run_chunk(jobs, config, on_result)


def worker_start_method(torch_threads: int) -> str:
    """How local worker processes start: ``"fork"`` where that is safe, else ``"spawn"``.

    A forked worker is ready in about 0.03 s with this process's imports, model and highdicom
    tables; a spawned one pays about 5 CPU-seconds for them, which on a small machine is the
    time of dozens of images. Fork is safe only when all of these hold, so each is required:

    - Linux (macOS's system libraries do not support fork without exec);
    - one torch thread per worker: libgomp's OpenMP thread pool does not survive a fork, so a
      forked child that runs torch with 2 or more threads after this process ran parallel work
      hangs (seen with torch 2.13's CPU build), while one thread starts no OpenMP team;
    - no other Python thread in this process: one could hold a lock (the network's, an
      import's) that the child would wait on forever;
    - CUDA not initialised here (it cannot be used in a forked child).
    """
    import multiprocessing
    import sys

    if (
        sys.platform.startswith("linux")
        and torch_threads == 1
        and "fork" in multiprocessing.get_all_start_methods()
        and threading.active_count() == 1
        and not torch.cuda.is_initialized()
    ):
        return "fork"
    return "spawn"


def _after_fork_in_child() -> None:
    """In a forked worker: new locks for the model cache (a lock is copied in the state it had)
    and no writer threads (threads are not copied; the first chunk starts its own)."""
    global _BUNDLES_LOCK
    _BUNDLES_LOCK = threading.Lock()
    for key, (bundle, _lock) in list(_BUNDLES.items()):
        _BUNDLES[key] = (bundle, threading.Lock())
    _PROCESS_WRITERS.clear()
    _STREAM.clear()  # the initializer gives a local worker its own


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def init_worker_process(torch_threads: int, parent_pid: int, stream: Any = None) -> None:
    """Initializer of local worker processes (ours alone): torch threads shared fairly between
    workers, library warnings silenced (problems are recorded in the manifest), each result
    sent to the parent as it is made when ``stream`` (a pipe's write end) is given, and an exit
    when the parent process dies (so a killed run leaves no orphans)."""
    import warnings

    warnings.simplefilter("ignore")
    torch.set_num_threads(max(1, torch_threads))
    _STREAM[:] = [stream] if stream is not None else []

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="medxai-parent-watch", daemon=True).start()
