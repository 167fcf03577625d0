"""The worker side of a batch job: read a stack, segment it with the same pipeline function as
``medxai segment`` (:func:`medxai.pipeline.segment_loaded`), report the outcome as a plain dict.

One chunk of series runs as a small pipeline inside one worker:

- a decode thread reads the next stacks (DICOM decoding) while the model works on the current
  ones;
- 2D images go through the network in batches (:func:`predict_batch`) when the model takes whole
  images; volumes go one at a time (sliding window);
- without saliency, the outputs of a batch are written by a writer thread while the network runs
  on the next batch (saliency needs the network, so with it writing stays in line).

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

from medxai.errors import MedxaiError, ModelError, ModelMismatchError
from medxai.inference import Prediction, check_input_fits, resolve_device
from medxai.io.types import LoadedImage
from medxai.models.bundle import ModelBundle
from medxai.models.fit import FitRules, ModelChoice
from medxai.pipeline import SegmentOptions, input_facts, segment_loaded

__all__ = [
    "WorkerConfig",
    "error_result",
    "load_stack",
    "predict_batch",
    "process_chunk",
    "run_chunk",
    "worker_bundle",
    "worker_name",
]

ResultFn = Callable[[dict[str, Any]], None]

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


def load_stack(job: dict[str, Any]) -> LoadedImage:
    """Read the stack of ``job``: one file (2D image or multi-frame object) or the given slice
    files of a series, through medxai's reader.

    ``job["files"]`` are absolute paths; ``job["folder"]``, when set, is a folder that holds
    exactly these files (it becomes the input path the report names and hashes).

    Raises:
        MedxaiError: the files cannot be read or do not form one image.
    """
    from medxai.io.readers import load_dicom_files, load_image

    files = [Path(f) for f in job["files"]]
    if len(files) == 1:
        return load_image(files[0])
    folder = Path(job.get("folder") or os.path.commonpath([str(f) for f in files]))
    loaded = load_dicom_files(folder, files)
    if not job.get("folder"):
        # the common folder holds other files too: name (and hash) the first slice instead
        loaded.path = files[0]
    return loaded


# ---------------------------------------------------------------------------------------------
# batched prediction
# ---------------------------------------------------------------------------------------------


def can_batch(bundle: ModelBundle) -> bool:
    """Whether images go through ``bundle`` in batches: 2D whole-image models."""
    return bundle.spatial_dims == 2 and bundle.inference.get("mode", "whole_image") == "whole_image"


def predict_batch(
    bundle: ModelBundle, images: Sequence[torch.Tensor], device: str | torch.device = "auto"
) -> list[Prediction]:
    """:func:`medxai.inference.predict` for several 2D images in one forward pass per flip.

    Each image is prepared as ``predict`` prepares it (intensity, resize to the model's
    ``spatial_size``), the batch ``(N, C, H, W)`` goes through the network (with the bundle's
    test-time augmentation), and each result is resized back onto its own image's grid.
    The labels equal ``predict``'s (up to floating-point ties).

    Raises:
        ModelMismatchError: an image does not fit the model (checked before any work).
    """
    from medxai.inference import (
        labels_from_probabilities,
        network_on,
        tta_mode,
        whole_image_probabilities,
    )

    if not can_batch(bundle):
        raise ModelError(
            f"model {bundle.name!r} is not a 2D whole-image model; predict one image at a time"
        )
    for img in images:
        check_input_fits(bundle, img)
    if not images:
        return []
    dev = resolve_device(device)
    t0 = time.perf_counter()
    tta = tta_mode(bundle.inference)
    with network_on(bundle.network, dev):
        probs = whole_image_probabilities(bundle, images, dev, tta)
    each = (time.perf_counter() - t0) / len(images)
    out = []
    for img, p in zip(images, probs):
        labels = labels_from_probabilities(bundle, p)
        affine = torch.as_tensor(getattr(img, "affine", torch.eye(4)))
        out.append(Prediction(probabilities=p, labels=labels, affine=affine, seconds=each, tta=tta))
    return out


# ---------------------------------------------------------------------------------------------
# one chunk of series
# ---------------------------------------------------------------------------------------------


def _result(
    job: dict[str, Any],
    state: str,
    *,
    reason: str | None = None,
    detail: str | None = None,
    outputs: list[str] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    return {
        "id": job["id"],
        "state": state,
        "reason": reason,
        "detail": detail,
        "outputs": outputs,
        "timings": timings or {},
        "worker": worker_name(),
        "output_name": job.get("output_name"),
        "model": job.get("model_name"),
    }


def error_result(
    job: dict[str, Any], exc: BaseException, timings: dict[str, float] | None = None
) -> dict[str, Any]:
    """Skipped when the input does not fit the model; failed for any other error, with the
    message (and, for an unexpected error, the traceback in ``detail``)."""
    if isinstance(exc, ModelMismatchError):
        return _result(job, "skipped", reason=f"does not fit the model: {exc}", timings=timings)
    if isinstance(exc, MedxaiError):
        return _result(job, "failed", reason=str(exc), timings=timings)
    return _result(
        job,
        "failed",
        reason=f"internal error: {type(exc).__name__}: {exc}",
        detail="".join(traceback.format_exception(exc))[-4000:],
        timings=timings,
    )


def _timed_load(job: dict[str, Any]) -> tuple[LoadedImage, float]:
    t0 = time.perf_counter()
    loaded = load_stack(job)
    return loaded, time.perf_counter() - t0


def _segment_one(
    job: dict[str, Any],
    loaded: LoadedImage,
    read_s: float,
    bundle: ModelBundle,
    options: SegmentOptions,
    prediction: Prediction | None,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    timings = {"read": round(read_s, 4)}
    job = {**job, "model_name": bundle.name}
    try:
        kwargs: dict[str, Any] = {}
        if prediction is not None:
            kwargs["prediction"] = prediction
        if job.get("model_choice"):
            # chosen from headers: check the full rules (spacing, extent, body part) on the image
            FitRules.from_bundle_config(bundle.config).check(
                input_facts(loaded), bundle.name, str(loaded.path)
            )
            kwargs["choice"] = ModelChoice.from_dict(job["model_choice"])
        res = segment_loaded(loaded, bundle, job["out_root"], options, name=job["name"], **kwargs)
    except Exception as exc:  # noqa: BLE001 - one series never stops the others; recorded
        timings["total"] = round(read_s + time.perf_counter() - t0, 4)
        return error_result(job, exc, timings)
    rt = res.report.get("timings_s") or {}
    timings.update(
        {
            "predict": rt.get("predict", prediction.seconds if prediction is not None else None),
            "explain": rt.get("explain"),
            "write": round(sum(v for k, v in rt.items() if k.startswith("write")), 4),
            "total": round(read_s + time.perf_counter() - t0, 4),
        }
    )
    return _result(job, "done", outputs=list(res.files), timings=timings)


def process_chunk(
    jobs: Sequence[dict[str, Any]],
    bundle: ModelBundle,
    options: SegmentOptions,
    *,
    batch_size: int = 8,
    on_result: ResultFn | None = None,
) -> list[dict[str, Any]]:
    """Segment the series of ``jobs`` (dicts with ``id``, ``files``, ``folder``, ``out_root``,
    ``name``), one result dict per series, in completion order; ``on_result`` sees each as it
    is ready. Never raises for a bad series: its result says ``failed`` or ``skipped`` and why.
    """
    options = dataclasses.replace(options, overwrite=True)
    results: list[dict[str, Any]] = []

    def emit(r: dict[str, Any]) -> None:
        results.append(r)
        if on_result is not None:
            on_result(r)

    batched = can_batch(bundle) and _PIPELINE_TAKES_PREDICTION
    group_size = max(1, batch_size) if batched else 1
    write_behind = batched and not options.explain
    try:
        device = resolve_device(options.device)
    except MedxaiError as exc:
        for job in jobs:
            emit(error_result(job, exc))
        return results
    queue = deque(jobs)
    loads: deque[tuple[dict[str, Any], cf.Future[tuple[LoadedImage, float]]]] = deque()
    writes: deque[cf.Future[dict[str, Any]]] = deque()
    with (
        cf.ThreadPoolExecutor(1, thread_name_prefix="medxai-decode") as decoder,
        cf.ThreadPoolExecutor(1, thread_name_prefix="medxai-write") as writer,
    ):

        def fill() -> None:
            while queue and len(loads) < 2 * group_size:
                job = queue.popleft()
                loads.append((job, decoder.submit(_timed_load, job)))

        def drain(block: bool) -> None:
            while writes and (block or writes[0].done()):
                emit(writes.popleft().result())

        fill()
        while loads:
            group: list[tuple[dict[str, Any], LoadedImage, float]] = []
            while loads and len(group) < group_size:
                job, fut = loads.popleft()
                fill()
                try:
                    loaded, read_s = fut.result()
                except Exception as exc:  # noqa: BLE001 - recorded as the series' failure
                    emit(error_result(job, exc))
                    continue
                group.append((job, loaded, read_s))
            preds: list[Prediction | None] = [None] * len(group)
            if batched and group:
                fitting = []
                for i, (job, loaded, _r) in enumerate(group):
                    try:
                        check_input_fits(bundle, loaded.image, str(loaded.path))
                        fitting.append(i)
                    except ModelMismatchError as exc:
                        emit(error_result(job, exc))
                try:
                    for i, p in zip(
                        fitting, predict_batch(bundle, [group[i][1].image for i in fitting], device)
                    ):
                        preds[i] = p
                except Exception:  # noqa: BLE001 - fall back to one at a time, which reports
                    preds = [None] * len(group)
                group = [g for i, g in enumerate(group) if i in fitting]
                preds = [preds[i] for i in fitting]
            for (job, loaded, read_s), pred in zip(group, preds):
                if write_behind and pred is not None:
                    writes.append(
                        writer.submit(_segment_one, job, loaded, read_s, bundle, options, pred)
                    )
                else:
                    emit(_segment_one(job, loaded, read_s, bundle, options, pred))
            drain(block=False)
        drain(block=True)
    return results


def run_chunk(jobs: Sequence[dict[str, Any]], config: WorkerConfig) -> list[dict[str, Any]]:
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
