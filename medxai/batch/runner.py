"""The worker side of a batch job: read a stack, segment it with the same pipeline functions as
``medxai segment`` (:func:`medxai.pipeline.segment_loaded`), report the outcome as a
:class:`~medxai.batch.types.Result`.

One chunk of series runs as a three-stage pipeline inside one worker (:class:`ChunkPipeline`):

1. a decode thread reads the next stacks (DICOM decoding) and checks a chosen model's full fit
   rules on them, while the network works on the current ones;
2. this thread runs the network: 2D images go through it in batches
   (:func:`medxai.inference.predict_batch`) when the model takes whole images, then their
   saliency maps are computed (saliency needs the network, so it stays here); volumes go one
   at a time (sliding window) and are written in line;
3. writer threads (:data:`WRITERS`) write the 2D result folders (NIfTI, PNG, DICOM objects,
   report) while the network runs on the next batch; results are emitted in order.

Every queue between the stages is bounded (:data:`AHEAD` batches read ahead, at most
:data:`AHEAD` batches waiting to be written), so memory does not grow with the number of series.
The model is loaded once per worker process (:func:`worker_bundle`) and used by one chunk at a
time. Nothing here touches the manifest: results go back to the process that owns it.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import inspect
import os
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medxai.batch.types import Job, Result
from medxai.errors import MedxaiError, ModelError, ModelMismatchError
from medxai.inference import Prediction, check_input_fits, predict_batch, resolve_device
from medxai.io.types import LoadedImage
from medxai.models.bundle import ModelBundle
from medxai.models.fit import FitRules, ModelChoice
from medxai.pipeline import (
    SegmentOptions,
    input_facts,
    saliency_forward,
    saliency_maps,
    segment_loaded,
)
from medxai.uncertainty import SampleAccumulator, tta_accumulator, uncertainty_method

#: The hint of a series that the header scan gave to a model (no --model) and that the model's
#: fit rules refuse once the image is read (spacing, field of view, body part).
REFUSED_AFTER_SCAN_HINT = (
    "the headers alone did not show it (spacing, field of view, body part); "
    "`medxai models` lists each model's fit rules: no bundled model takes these series. "
    "To run one on them anyway, name it with --model"
)

__all__ = [
    "AHEAD",
    "WRITERS",
    "ChunkPipeline",
    "WorkerConfig",
    "error_result",
    "load_stack",
    "predict_batch",
    "process_chunk",
    "run_chunk",
    "worker_bundle",
    "worker_name",
]

ResultFn = Callable[[Result], None]

#: Batches read ahead of the network, and batches of results waiting for the writer, at most.
AHEAD = 2
#: Writer threads: the DICOM, NIfTI and PNG writers spend much of their time in zlib, numpy and
#: Pillow, which release the GIL, so two threads write about 1.2x as many result folders per
#: second as one (48 ISIC photos, default outputs, Grad-CAM, 2 cores: 2.5-2.6 -> 2.9-3.1 images/s).
WRITERS = 2

# segment_loaded(prediction=...) lets a prediction made in a batch be used as it is
_PIPELINE_TAKES_PREDICTION = "prediction" in inspect.signature(segment_loaded).parameters


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
# one chunk of series
# ---------------------------------------------------------------------------------------------


@dataclass
class _Item:
    """A series on its way through the pipeline."""

    job: Job
    loaded: LoadedImage
    read_s: float
    prediction: Prediction | None = None
    saliency: dict[int, torch.Tensor] | None = None
    explain_s: float | None = None
    #: the TTA views of the batched prediction, for the uncertainty map (not predicted again)
    views: SampleAccumulator | None = None


def _read(job: Job, bundle: ModelBundle) -> _Item:
    """Stage 1 (decode thread): read the stack; a model chosen from headers has its full fit
    rules (spacing, extent, body part) checked on the read image, before any prediction."""
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
    return _Item(job, loaded, time.perf_counter() - t0)


def _write(item: _Item, bundle: ModelBundle, options: SegmentOptions) -> Result:
    """Stage 3 (writer thread, or in line): the result folder of one series, through
    :func:`medxai.pipeline.segment_loaded` (which predicts and explains only what was not done
    before)."""
    t0 = time.perf_counter()
    timings: dict[str, float | None] = {"read": round(item.read_s, 4)}
    job = item.job
    kwargs: dict[str, Any] = {}
    if item.prediction is not None:
        kwargs["prediction"] = item.prediction
    if item.saliency is not None:
        kwargs["saliency"] = item.saliency
    if item.views is not None:
        kwargs["views"] = item.views
    if job.model_choice:
        kwargs["choice"] = ModelChoice.from_dict(job.model_choice)
    try:
        res = segment_loaded(item.loaded, bundle, job.out_root, options, name=job.name, **kwargs)
    except Exception as exc:  # noqa: BLE001 - one series never stops the others; recorded
        timings["total"] = round(item.read_s + time.perf_counter() - t0, 4)
        return error_result(job, exc, timings, model=bundle.name)
    rt = res.report.get("timings_s") or {}
    pred = item.prediction
    timings["predict"] = rt.get("predict", pred.seconds if pred is not None else None)
    timings["explain"] = item.explain_s if item.explain_s is not None else rt.get("explain")
    timings["write"] = round(sum(v for k, v in rt.items() if k.startswith("write")), 4)
    ahead = (item.explain_s or 0.0) + (pred.seconds if pred is not None else 0.0)
    timings["total"] = round(item.read_s + ahead + time.perf_counter() - t0, 4)
    done = _result(job, "done", outputs=list(res.files), timings=timings, model=bundle.name)
    done.quality_score = (res.report.get("quality") or {}).get("score")
    return done


class ChunkPipeline:
    """The three stages of :func:`process_chunk` (see the module docstring) for one chunk.

    Args:
        jobs: the series, in order.
        bundle: the loaded model (this thread alone uses its network).
        options: output options (``overwrite`` is forced on).
        batch_size: 2D images per forward pass.
        emit: called with each :class:`Result`, in this thread, as it is ready.
    """

    def __init__(
        self,
        jobs: Sequence[Job],
        bundle: ModelBundle,
        options: SegmentOptions,
        batch_size: int,
        emit: ResultFn,
    ) -> None:
        self.bundle = bundle
        self.options = dataclasses.replace(options, overwrite=True)
        self.emit = emit
        self.batched = can_batch(bundle) and _PIPELINE_TAKES_PREDICTION
        self.group_size = max(1, batch_size) if self.batched else 1
        self.queue: deque[Job] = deque(jobs)
        self.reads: deque[tuple[Job, cf.Future[_Item]]] = deque()
        self.writes: deque[cf.Future[Result]] = deque()
        self.device = resolve_device(options.device)
        self.uncertainty, _ = uncertainty_method(bundle, options.uncertainty, options.tta)

    def run(self) -> None:
        """Process every job; returns when the last result is emitted."""
        with (
            cf.ThreadPoolExecutor(1, thread_name_prefix="medxai-decode") as self.decoder,
            cf.ThreadPoolExecutor(WRITERS, thread_name_prefix="medxai-write") as self.writer,
        ):
            self._read_ahead()
            while self.reads:
                group = self._next_group()
                for item in self._predict(group):
                    self._hand_on(item)
                self._drain(block=False)
            self._drain(block=True)

    # -- stage 1: reading ahead ---------------------------------------------------------------
    def _read_ahead(self) -> None:
        while self.queue and len(self.reads) < AHEAD * self.group_size:
            job = self.queue.popleft()
            self.reads.append((job, self.decoder.submit(_read, job, self.bundle)))

    def _next_group(self) -> list[_Item]:
        """Up to ``group_size`` read series (the failed reads are emitted)."""
        group: list[_Item] = []
        while self.reads and len(group) < self.group_size:
            job, fut = self.reads.popleft()
            self._read_ahead()
            try:
                group.append(fut.result())
            except Exception as exc:  # noqa: BLE001 - recorded as the series' failure
                self.emit(error_result(job, exc, model=self.bundle.name))
        return group

    # -- stage 2: the network -----------------------------------------------------------------
    def _predict(self, group: list[_Item]) -> list[_Item]:
        """Batched prediction and saliency of the fitting items of ``group`` (the others are
        emitted as skipped). Without batching, items pass through untouched: the pipeline
        predicts them in line. A batch that fails falls back to one image at a time, which
        reports the error of the image that caused it."""
        if not self.batched or not group:
            return group
        fitting = []
        for item in group:
            try:
                check_input_fits(self.bundle, item.loaded.image, str(item.loaded.path))
                fitting.append(item)
            except ModelMismatchError as exc:
                self.emit(error_result(item.job, exc, model=self.bundle.name))
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
                each_view=(lambda i, p: views[i].add(p)) if views is not None else None,
                identity_forward=kept,
            )
        except Exception:  # noqa: BLE001 - the single-image path reports it
            return fitting
        for k, (item, pred) in enumerate(zip(fitting, preds)):
            item.prediction = pred
            item.views = views[k] if views is not None else None
            if self.options.explain:
                self._explain(item, kept, k)
        if kept is not None:
            kept.release()
        return fitting

    def _explain(self, item: _Item, kept: Any = None, index: int = 0) -> None:
        t0 = time.perf_counter()
        try:
            item.saliency = saliency_maps(
                self.bundle, item.loaded, self.options, self.device, item.prediction, kept, index
            )
        except Exception:  # noqa: BLE001 - the writer's segment_loaded explains and reports
            item.saliency = None
            return
        item.explain_s = time.perf_counter() - t0

    # -- stage 3: writing ---------------------------------------------------------------------
    def _hand_on(self, item: _Item) -> None:
        """To the writer threads when the network's work on ``item`` is done (prediction,
        saliency, uncertainty samples; bounded: at most :data:`AHEAD` batches wait), else in
        line."""
        # MC dropout (and TTA views not collected) run the network while writing: in line, so
        # that no other thread uses the network (dropout switched on, the RNG seeded) meanwhile
        method = self.uncertainty
        uncertainty_done = method is None or (method == "tta" and item.views is not None)
        network_done = (
            item.prediction is not None
            and (not self.options.explain or item.saliency is not None)
            and uncertainty_done
        )
        if not network_done:
            self.emit(_write(item, self.bundle, self.options))
            return
        while len(self.writes) >= AHEAD * self.group_size:
            self.emit(self.writes.popleft().result())
        self.writes.append(self.writer.submit(_write, item, self.bundle, self.options))

    def _drain(self, block: bool) -> None:
        while self.writes and (block or self.writes[0].done()):
            self.emit(self.writes.popleft().result())


def process_chunk(
    jobs: Sequence[Job],
    bundle: ModelBundle,
    options: SegmentOptions,
    *,
    batch_size: int = 8,
    on_result: ResultFn | None = None,
) -> list[Result]:
    """Segment the series of ``jobs``, one :class:`Result` per series, in completion order;
    ``on_result`` sees each as it is ready. Never raises for a bad series: its result says
    ``failed`` or ``skipped`` and why."""
    results: list[Result] = []

    def emit(r: Result) -> None:
        results.append(r)
        if on_result is not None:
            on_result(r)

    try:
        pipeline = ChunkPipeline(jobs, bundle, options, batch_size, emit)
    except MedxaiError as exc:  # the device cannot be used: every series fails alike
        for job in jobs:
            emit(error_result(job, exc))
        return results
    pipeline.run()
    return results


def run_chunk(jobs: Sequence[Job], config: WorkerConfig) -> list[Result]:
    """Worker entry point (process pool and dask): the model from this process's cache, then
    :func:`process_chunk`. A model that cannot be loaded fails every series of the chunk."""
    import warnings

    try:
        bundle, lock = worker_bundle(config.model, config.weights_sha256)
    except MedxaiError as exc:
        return [error_result(job, exc) for job in jobs]
    with lock, warnings.catch_warnings():
        # problems are in the results; pydicom's warnings would flood the workers' logs
        warnings.simplefilter("ignore")
        return process_chunk(jobs, bundle, config.options, batch_size=config.batch_size)


def init_worker_process(torch_threads: int, parent_pid: int) -> None:
    """Initializer of local worker processes (ours alone): torch threads shared fairly between
    workers, library warnings silenced (problems are recorded in the manifest), and an exit when
    the parent process dies (so a killed run leaves no orphans)."""
    import warnings

    warnings.simplefilter("ignore")
    torch.set_num_threads(max(1, torch_threads))

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="medxai-parent-watch", daemon=True).start()
