"""The driver of a batch job: :func:`run_batch` scans the export, updates the manifest, hands the
pending series to workers (this process, local worker processes, or a dask cluster) and records
every outcome as it comes back. The manifest (in the output folder) is the single source of
truth; only this process writes it.

Resume: the output folder is locked for the run (an advisory lock the OS drops when the process
dies). On start, series a dead run left ``running`` go back to ``pending`` and its half-written
temporary folders are removed; results are only ever committed by the pipeline's atomic rename,
so a ``done`` row means a complete folder, and a folder without a ``done`` row is rewritten.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import json
import multiprocessing
import os
import pickle
import re
import shutil
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medxai.batch.manifest import MANIFEST_NAME, Manifest
from medxai.batch.runner import (
    WorkerConfig,
    Writers,
    can_batch,
    init_worker_process,
    keep_bundle,
    process_chunk,
    run_chunk,
    run_chunk_here,
    warm_worker,
    worker_start_method,
)
from medxai.batch.scan import ModelRequirements, Stack, fit_reason, scan_export
from medxai.batch.schedule import MAX_ATTEMPTS, JobsFor, OnResult, drive, guided_chunks
from medxai.batch.types import Job, Result
from medxai.choices import BATCH_DEFAULT_FORMATS
from medxai.errors import InputError, MedxaiError, ModelMismatchError
from medxai.inference import resolve_device
from medxai.io.atomic import write_text_atomic
from medxai.io.writers import warm_dicom_writers
from medxai.models.bundle import ModelBundle
from medxai.models.fit import InputFacts, ModelChoice
from medxai.pipeline import SegmentOptions

__all__ = [
    "BatchProgress",
    "BatchSummary",
    "run_batch",
    "writes_dicom",
    "LOCK_NAME",
    "SUMMARY_NAME",
]

LOCK_NAME = ".medxai-batch.lock"
SUMMARY_NAME = "summary.json"


@dataclass
class BatchProgress:
    """A progress report: ``phase`` is ``scan`` (files) or ``process`` (series of this run)."""

    phase: str
    done: int
    total: int
    counts: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        """Items per second so far."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0


ProgressFn = Callable[[BatchProgress], None]


@dataclass
class BatchSummary:
    """What a batch run found and did; :meth:`to_dict` is what ``--json`` prints.

    ``exit_code`` is 0 when everything that fits the model is done and no file is damaged, 1
    when a series or a file failed.
    """

    export_dir: str
    output: str
    manifest: str
    csv: dict[str, str]
    model: dict[str, Any]
    files: dict[str, int]
    series: dict[str, int]
    this_run: dict[str, int]
    scan: dict[str, float]
    process: dict[str, float]
    failed: list[dict[str, Any]]
    skipped_reasons: dict[str, int]
    file_reasons: dict[str, int]
    backend: str

    @property
    def exit_code(self) -> int:
        return 1 if self.series.get("failed") or self.files.get("failed") else 0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["exit_code"] = self.exit_code
        return d


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


#: file descriptors of the output-folder locks this process holds (:func:`_locked`)
_HELD_LOCK_FDS: set[int] = set()


def _close_held_locks_in_child() -> None:
    """After a fork, in the child: let go of its copies of the output-folder locks. A ``flock``
    belongs to the open file, which a forked child shares; a local worker process that kept its
    copy would hold the lock after the run's process died (a worker notices that within a
    second), and a run started at once on the same folder would be refused (filelock 4 lets go
    itself; 3.x, which medxai also supports, does not). The descriptor is pointed at /dev/null
    rather than closed, so that a library that closes it later closes nothing of another's."""
    if not _HELD_LOCK_FDS:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        for fd in _HELD_LOCK_FDS:
            with contextlib.suppress(OSError):
                os.dup2(null, fd)
    finally:
        os.close(null)
    _HELD_LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_locks_in_child)


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the output folder for the run (``filelock``: ``flock`` on POSIX,
    ``LockFileEx`` on Windows; the OS releases it when the process dies, so a killed run never
    blocks the next; forked worker processes drop their copy, :func:`_close_held_locks_in_child`).
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(out / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout as exc:
        raise InputError(
            "another medxai batch run is writing to this output folder",
            path=out,
            hint="wait for it to finish, or use another -o",
        ) from exc
    fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
    held = fd if isinstance(fd, int) else -1
    if held >= 0:
        _HELD_LOCK_FDS.add(held)
    try:
        yield
    finally:
        _HELD_LOCK_FDS.discard(held)
        lock.release()


def _clean_partials(out: Path) -> int:
    """Remove the temporary folders (``.<name>.partial-<pid>``, ``.<name>.old-<pid>``) a dead run
    left in the output tree; only called while holding the lock."""
    n = 0
    for pattern in (".*.partial-*", ".*.old-*", "*/.*.partial-*", "*/.*.old-*"):
        for p in out.glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
                n += 1
    return n


def _write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def _model_settings(bundle: ModelBundle | None) -> dict[str, Any]:
    """The model part of a job's settings; ``None``: the bundled models chosen by the input."""
    if bundle is None:
        from medxai.models.registry import list_models

        cards = [m.card() for m in list_models() if m.available]
        return {
            "auto": [
                {
                    "name": c.get("name"),
                    "version": str(c.get("version")),
                    "weights_sha256": c.get("weights_sha256"),
                }
                for c in cards
            ]
        }
    return {"name": bundle.name, "version": bundle.version, "weights_sha256": bundle.weights_sha256}


#: what differs between series refused for the same rule: the input's own values
#: (medxai.models.fit.FitRules.problems: "..., this is 240x240x170 mm")
_INPUT_VALUES = re.compile(r", this (?:is|has|one's) [^;\n]*")


def group_reasons(reasons: dict[str, int]) -> dict[str, int]:
    """Skip reasons with the input's own values left out (a field of view, a spacing: the
    manifest keeps them per series), counted together, most common first."""
    grouped: dict[str, int] = {}
    for reason, n in reasons.items():
        key = _INPUT_VALUES.sub("", reason)
        grouped[key] = grouped.get(key, 0) + n
    return dict(sorted(grouped.items(), key=lambda kv: (-kv[1], kv[0])))


def batch_options(options: SegmentOptions) -> SegmentOptions:
    """``options`` with :data:`medxai.choices.BATCH_DEFAULT_FORMATS` when they name no formats
    (the job's settings record the formats themselves)."""
    if options.formats:
        return options
    return dataclasses.replace(options, formats=list(BATCH_DEFAULT_FORMATS))


def _settings(export: Path, bundle: ModelBundle | None, options: SegmentOptions) -> dict[str, Any]:
    """What must not change between runs of one job (device and workers may)."""
    return {
        "export_dir": str(export),
        "model": _model_settings(bundle),
        # the formats themselves, not "the defaults": a job that a release with other default
        # formats started is refused on resume instead of switching formats part-way
        "formats": sorted(batch_options(options).formats or []),
        "explain": options.explain or None,
        "roi_size": list(options.roi_size) if options.roi_size else None,
        "overlap": options.overlap,
        # None (the model's default) reads as before for manifests written without these keys
        "uncertainty": options.uncertainty,
        "mc_samples": options.mc_samples if options.uncertainty == "mc-dropout" else None,
    }


def _chunks(
    rows: Sequence[dict[str, Any]], batch_size: int, spatial_dims: int
) -> list[list[dict[str, Any]]]:
    """Chunks of series for one worker call: ``batch_size`` 2D images (one forward pass), or one
    volume."""
    out: list[list[dict[str, Any]]] = []
    if spatial_dims == 2:
        for i in range(0, len(rows), max(1, batch_size)):
            out.append(list(rows[i : i + max(1, batch_size)]))
    else:
        out = [[r] for r in rows]
    return out


def _job_for(row: dict[str, Any], export: Path, out: Path, folders: dict[str, str]) -> Job:
    study, series = row["output_name"].split("/", 1)
    files = [str(export / f) for f in row["files"]]
    parent = os.path.dirname(row["files"][0]) if row["files"] else ""
    folder = None
    if (
        len(files) > 1
        and all(os.path.dirname(f) == parent for f in row["files"])
        and folders.get(parent) == row["id"]
    ):
        folder = str(export / parent)
    return Job(
        id=row["id"],
        files=tuple(files),
        out_root=str(out / study),
        name=series,
        output_name=row["output_name"],
        folder=folder,
    )


def _folder_owners(man: Manifest) -> dict[str, str]:
    """Folders (relative) all of whose files, in all subfolders, belong to one series:
    ``{folder: series id}``. Such a folder can stand for the series (the report names and
    hashes it); other series are named by their first file."""
    conflict = object()
    missing = object()
    owner: dict[str, Any] = {}
    for path, sid in man.file_series():
        d = os.path.dirname(path)
        while True:
            cur = owner.get(d, missing)
            owner[d] = sid if cur is missing else (cur if cur == sid else conflict)
            if not d:
                break
            d = os.path.dirname(d)
    return {d: s for d, s in owner.items() if isinstance(s, str)}


def stack_facts(stack: Stack) -> InputFacts:
    """What the fit rules can know of a stack from its headers (no spacing or body part: those
    are checked again on the read image, see :func:`medxai.batch.runner.process_chunk`)."""
    dims = 3 if stack.dims == 3 else 2
    shape = (
        (stack.columns, stack.rows, stack.n_slices) if dims == 3 else (stack.columns, stack.rows)
    )
    return InputFacts(
        spatial_dims=dims,
        channels=stack.channels,
        modality=(stack.modality or "").upper(),
        form="dicom",
        shape=shape,
    )


@dataclass
class _AutoPlan:
    """Without ``--model``: the bundled model each stack goes to, and why the others refused."""

    choices: dict[str, ModelChoice] = field(default_factory=dict)
    fit: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def for_stacks(cls, stacks: Sequence[Stack]) -> _AutoPlan:
        from medxai.models.registry import choose_bundled_model

        plan = cls()
        for stack in stacks:
            try:
                plan.choices[stack.id] = choose_bundled_model(stack_facts(stack))
                plan.fit[stack.id] = None
            except ModelMismatchError as exc:
                plan.fit[stack.id] = str(exc)
        return plan

    def groups(self, rows: Sequence[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
        """Pending rows by chosen model, in registry order."""
        from medxai.models.registry import list_models

        out = []
        for m in list_models():
            mine = [
                r for r in rows if r["id"] in self.choices and self.choices[r["id"]].name == m.name
            ]
            if mine:
                out.append((m.name, mine))
        return out


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------


def run_batch(
    export_dir: str | Path,
    output: str | Path,
    *,
    model: str | Path | ModelBundle | None = None,
    options: SegmentOptions | None = None,
    workers: int | None = 1,
    scheduler: str | None = None,
    retry_failed: bool = False,
    batch_size: int = 8,
    scan_workers: int | None = None,
    progress: ProgressFn | None = None,
    writers: int | Writers = 0,
) -> BatchSummary:
    """Segment every series of a PACS export that fits the model; resumable.

    Args:
        export_dir: the export (any folder tree of DICOM files, DICOMDIRs and other files).
        output: results folder: ``<study>/<series>/`` per series, ``manifest.sqlite``,
            ``manifest_series.csv``, ``manifest_files.csv``, ``summary.json``.
        model: bundled model name, bundle folder or a loaded :class:`ModelBundle`.
        options: output formats, saliency method, device, ... (``overwrite`` is ignored: the
            manifest decides what runs again).
        workers: 1 runs in this process; N > 1 starts N local worker processes (or, with
            ``scheduler="local"``, a dask LocalCluster of N workers). The model is loaded once per
            worker. None: :func:`auto_workers` decides for each model's series once the export
            is scanned (worker processes for a long CPU-only run of 2D images, else 1).
        scheduler: a dask.distributed scheduler address, or ``"local"``; the workers must see
            the export, output and model paths.
        retry_failed: run failed series (and re-read damaged files) again.
        batch_size: 2D images per forward pass (and per worker call).
        scan_workers: parallel header readers (default: CPU count, at most 8).
        progress: called with :class:`BatchProgress` as files are scanned and series finish.
        writers: with ``workers=1`` and no scheduler, the writer processes this (the network's)
            process feeds (:class:`medxai.batch.runner.Writers`; they load no model); 0 writes
            with threads of this process. Worker processes and dask workers write with threads.
            A :class:`~medxai.batch.runner.Writers` is used as it is and left open (a caller
            that runs many jobs, like the DICOM node, starts its writer processes once).
            Writer processes are forked on a CPU run where that is safe, else started with
            ``spawn``: a script that calls this with ``writers > 0`` needs the
            ``if __name__ == "__main__":`` guard.

    Returns:
        a :class:`BatchSummary` (also written to ``summary.json``).

    Raises:
        MedxaiError: the export is missing, the model cannot be loaded, the output folder holds
            a job with other settings or is in use by another run. Problems with single files or
            series never raise: they are recorded in the manifest.
    """
    export, out = _check_folders(export_dir, output)
    opts = options or SegmentOptions()
    warming = _warm_writers_here(opts, workers, scheduler, writers)
    run = _Run(
        export=export,
        out=out,
        bundle=_open_model(model, workers, scheduler),
        opts=opts,
        say=progress or (lambda _p: None),
        workers=workers,
        scheduler=scheduler,
        batch_size=batch_size,
        writers=writers.processes if isinstance(writers, Writers) else max(0, writers),
        pool=writers if isinstance(writers, Writers) else None,
        warming=warming,
    )
    with _locked(out):
        man = Manifest(out / MANIFEST_NAME)
        try:
            return _run_locked(run, man, retry_failed, scan_workers)
        finally:
            man.close()


def _warm_writers_here(
    opts: SegmentOptions, workers: int | None, scheduler: str | None, writers: int | Writers
) -> threading.Thread | None:
    """Where this process will write DICOM objects itself, their one-time set-up
    (:func:`~medxai.io.writers.warm_dicom_writers`) started in a thread now, while the model
    loads and the export is scanned."""
    if scheduler or (workers or 1) > 1 or not writes_dicom(opts):
        return None
    # writer threads of this process write; forked writer processes inherit the set-up
    if isinstance(writers, Writers) or (writers and not _writers_fork(opts)):
        return None
    thread = threading.Thread(target=warm_dicom_writers, name="medxai-warm-writers", daemon=True)
    thread.start()
    return thread


def _writers_fork(options: SegmentOptions) -> bool:
    """Whether this run's writer processes may be forked: a run on the CPU (the writers then
    never meet CUDA); :class:`~medxai.batch.runner.Writers` still checks that forking is safe
    when it starts them."""
    try:
        return resolve_device(options.device).type == "cpu"
    except MedxaiError:  # the run reports the device when it loads the model
        return False


def writes_dicom(options: SegmentOptions) -> bool:
    """Whether a batch with ``options`` writes DICOM objects."""
    return any(f.startswith("dicom") for f in batch_options(options).formats or [])


def _check_folders(export_dir: str | Path, output: str | Path) -> tuple[Path, Path]:
    """The export (an existing folder) and the output folder (created; not the export)."""
    export = Path(export_dir).expanduser().resolve()
    if not export.is_dir():
        raise InputError(
            "is not a folder" if export.exists() else "does not exist",
            path=export_dir,
            hint="give the folder of a PACS export",
        )
    out = Path(output).expanduser().resolve()
    if out == export:
        raise InputError(
            "the output folder must not be the export folder", path=out, hint="use e.g. -o results/"
        )
    out.mkdir(parents=True, exist_ok=True)
    return export, out


def _open_model(
    model: str | Path | ModelBundle | None, workers: int | None, scheduler: str | None
) -> ModelBundle | None:
    """The loaded model; None: each series goes to the bundled model whose fit rules accept
    it."""
    if model is None:
        return None
    if not isinstance(model, ModelBundle):
        from medxai.models.registry import load_model

        return load_model(model)
    if model.path is None and ((workers or 1) > 1 or scheduler):
        raise InputError(
            "a model bundle that is not saved to a folder can only run with "
            "workers=1 and no scheduler",
            hint="save it with save_bundle",
        )
    return model


@dataclass
class _Run:
    """One run's settings and what its steps found and did."""

    export: Path
    out: Path
    bundle: ModelBundle | None
    opts: SegmentOptions
    say: ProgressFn
    #: None: :func:`auto_workers` for each model's series
    workers: int | None
    scheduler: str | None
    batch_size: int
    writers: int = 0
    pool: Writers | None = None
    t_start: float = field(default_factory=time.perf_counter)
    plan: _AutoPlan | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"done": 0, "failed": 0, "skipped": 0})
    process_s: float = 0.0
    #: CPU seconds while processing: this process (every thread) and its child processes
    #: (local workers, writer processes); not dask workers
    process_cpu_s: float = 0.0
    backend: str = "in process"
    #: the DICOM writers' set-up, in a thread of this process during the scan
    warming: threading.Thread | None = None

    def workers_for(self, bundle: ModelBundle, images: int) -> int:
        """The worker count for ``images`` series of ``bundle``: the one asked for, or
        :func:`auto_workers` (``workers=None``). Where worker processes may start, the
        writers' set-up is waited for first: the workers are then forked with it done."""
        if self.scheduler:
            return self.workers if self.workers is not None else 1
        if self.workers is None or self.workers > 1:
            self.settle()
        if self.workers is not None:
            return self.workers
        return auto_workers(bundle, images, self.opts.device, self.writers)

    def settle(self) -> None:
        """Wait for this process's background set-up, so that it runs no thread but this."""
        if self.warming is not None:
            self.warming.join()

    @property
    def model_path(self) -> str:
        b = self.bundle
        return str(Path(b.path).resolve()) if b is not None and b.path is not None else ""


@dataclass
class _Found:
    """What the scan step found: the scan, the series it requeued, the series to run."""

    scan: Any
    recovered: dict[str, int]
    retried: int
    missing: list[str]
    pending: list[dict[str, Any]]


def _run_locked(
    run: _Run, man: Manifest, retry_failed: bool, scan_workers: int | None
) -> BatchSummary:
    """The run, holding the output folder's lock: scan, process, summary."""
    settings = _settings(run.export, run.bundle, run.opts)
    man.check_settings(settings)
    run_id = man.start_run(
        {
            **settings,
            "workers": run.workers if run.workers is not None else "auto",
            "writers": run.writers,
            "scheduler": run.scheduler,
            "device": run.opts.device,
            "retry_failed": retry_failed,
        }
    )
    status = "interrupted"
    try:
        with contextlib.ExitStack() as stack:
            own_pool = bool(
                run.pool is None and run.writers and not run.scheduler and (run.workers or 1) <= 1
            )
            forked = own_pool and _writers_fork(run.opts)
            if own_pool and not forked:
                # spawned (a GPU run: a forked writer must never meet CUDA): started now, so
                # that each imports medxai and sets up the DICOM writers during the scan
                run.pool = stack.enter_context(Writers(run.writers))
                run.pool.warm(dicom=writes_dicom(run.opts))
            found = _scan_step(run, man, retry_failed, scan_workers)
            if forked:
                # forked after the scan, once this process has set up the DICOM writers
                # (highdicom's tables, 0.6-0.9 CPU-s): each writer inherits them, ready at
                # once, instead of setting them up again at its first object
                run.settle()
                run.pool = stack.enter_context(Writers(run.writers, fork=True))
            _process_step(run, man, found.pending)
        status = "finished"
    finally:
        man.release([r["id"] for r in man.series("running")])
        csv_paths = man.export_csv(run.out)
        if status != "finished":
            man.finish_run(run_id, status, {})
    summary = _summary(man, run, found, csv_paths)
    man.finish_run(
        run_id,
        status,
        {
            "scan": summary.scan,
            "process": summary.process,
            "this_run": summary.this_run,
            "wall_s": round(time.perf_counter() - run.t_start, 3),
        },
    )
    _write_json_atomic(run.out / SUMMARY_NAME, summary.to_dict())
    return summary


def _scan_step(run: _Run, man: Manifest, retry_failed: bool, scan_workers: int | None) -> _Found:
    """Recover a dead run's claims, scan the export (unchanged files from the manifest), store
    the scan with each stack's fit, requeue what must run again; the series to run."""
    recovered = man.recover(MAX_ATTEMPTS)
    _clean_partials(run.out)
    known = man.known_files()
    if retry_failed:
        known = {k: v for k, v in known.items() if not v.failed}
    t0 = time.perf_counter()
    scan = scan_export(
        run.export,
        workers=scan_workers,
        exclude=[run.out] if run.export in run.out.parents else [],
        known=known,
        progress=lambda d, n: run.say(BatchProgress("scan", d, n, {}, time.perf_counter() - t0)),
    )
    if run.bundle is None:
        run.plan = _AutoPlan.for_stacks(scan.stacks)
        fit = run.plan.fit
    else:
        req = ModelRequirements.from_bundle(run.bundle)
        fit = {s.id: fit_reason(s, req) for s in scan.stacks}
    man.sync_scan(scan.files, scan.stacks, fit)
    retried = man.retry_failed() if retry_failed else 0
    # a done series whose folder was removed runs again
    missing = [r["id"] for r in man.series("done") if not (run.out / r["output_name"]).is_dir()]
    man.requeue(missing)
    return _Found(scan, recovered, retried, missing, man.pending())


def _process_step(run: _Run, man: Manifest, pending: list[dict[str, Any]]) -> None:
    """Run the pending series, model by model, on the configured backend; each result is
    recorded in the manifest as it comes back."""
    c1 = _cpu_seconds()  # before the clock starts: its first call imports psutil
    t1 = time.perf_counter()
    total = len(pending)

    def on_result(r: Result) -> None:
        man.record(r)
        run.counts[r.state] = run.counts.get(r.state, 0) + 1
        done = sum(run.counts.values())
        run.say(BatchProgress("process", done, total, dict(run.counts), time.perf_counter() - t1))

    run.say(BatchProgress("process", 0, total, dict(run.counts), 0.0))
    _process_groups(run, man, pending, on_result, run.pool)
    run.process_s = time.perf_counter() - t1
    run.process_cpu_s = _cpu_seconds() - c1


def _cpu_seconds() -> float:
    """CPU seconds of this process (every thread) and of its child processes: those that have
    ended (the local worker processes, which end with each model's series) and those still
    running (the writer processes, which end after the processing step). The difference of two
    readings counts a child's CPU between them, also one that ended in between."""
    total = time.process_time()
    try:
        import resource
    except ImportError:  # not on Windows
        pass
    else:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += kids.ru_utime + kids.ru_stime
    return total + _running_children_cpu()


def _running_children_cpu() -> float:
    """CPU seconds of this process's running child processes (and theirs); 0 where psutil
    cannot tell."""
    try:
        import psutil
    except ImportError:
        return 0.0
    total = 0.0
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                times = child.cpu_times()
                total += times.user + times.system
    return total


def _process_groups(
    run: _Run,
    man: Manifest,
    pending: list[dict[str, Any]],
    on_result: OnResult,
    writers: Writers | None,
) -> None:
    for grp_bundle, rows in _model_groups(run, pending):
        jobs_for = _JobFactory(run.export, run.out, man, run.plan.choices if run.plan else None)
        config = WorkerConfig(
            model=str(Path(grp_bundle.path).resolve()) if grp_bundle.path is not None else "",
            weights_sha256=grp_bundle.weights_sha256,
            options=batch_options(run.opts),
            batch_size=run.batch_size,
        )
        run.backend = _run_backend(
            man,
            _chunks(rows, run.batch_size, grp_bundle.spatial_dims),
            jobs_for,
            config,
            grp_bundle,
            on_result,
            run.scheduler,
            run.workers_for(grp_bundle, len(rows)),
            writers,
            # workers chosen by the run: this process works too while the others start
            inline=run.workers is None,
        )
        if writers is not None and writers.processes:
            run.backend += f", {writers.processes} writer processes"
        # what a worker process killed while writing left (its series ran again elsewhere);
        # nothing is being written now
        _clean_partials(run.out)


#: a CPU-only batch of at least this many 2D images runs on local workers by default
#: (``workers=None``) when they start by fork (:func:`worker_start_method`: one torch thread
#: each, on Linux): this process and one worker process per other core, each with its share of
#: the torch threads. A forked worker is ready in a few hundredths of a second, so two chunks
#: of images already pay (docs/benchmarks.md, "Local workers on a CPU").
AUTO_WORKERS_MIN_IMAGES_FORKED = 16
#: the same when the workers must be spawned (more than one torch thread each, or not Linux):
#: a spawned worker's start costs about 5 CPU-seconds (imports, model, highdicom's tables),
#: repaid at about 120 photos on the 2-core reference machine
AUTO_WORKERS_MIN_IMAGES = 200
#: at most this many worker processes by default (each holds the model and its own pipeline)
AUTO_WORKERS_MAX = 8


def auto_workers(
    bundle: ModelBundle,
    images: int,
    device: str,
    writer_processes: int,
    cores: int | None = None,
    start_method: str | None = None,
) -> int:
    """Worker processes for ``workers=None``: one per core (at most :data:`AUTO_WORKERS_MAX`)
    for a batchable 2D model saved to a folder, on the CPU, writing with threads
    (``writer_processes`` 0), with at least :data:`AUTO_WORKERS_MIN_IMAGES_FORKED` images to
    run where the workers are forked (``start_method``, default :func:`worker_start_method`),
    :data:`AUTO_WORKERS_MIN_IMAGES` where they are spawned; else 1 (this process).

    Why: one process's torch threads keep waiting for the writer threads they share the cores
    with (on 2 cores its forward pass takes twice its time alone); independent pipelines with
    one torch thread each do not wait. On a GPU one process feeds the device, and writer
    processes (on more than two cores by default) take the writing off its CPU."""
    cores = cores or os.cpu_count() or 1
    n = min(cores, AUTO_WORKERS_MAX)
    method = start_method or worker_start_method(max(1, cores // n))
    least = AUTO_WORKERS_MIN_IMAGES_FORKED if method == "fork" else AUTO_WORKERS_MIN_IMAGES
    if (
        cores < 2
        or writer_processes > 0
        or images < least
        or bundle.path is None
        or not can_batch(bundle)
        or not _is_cpu(device)
    ):
        return 1
    return n


def _is_cpu(device: str) -> bool:
    """Whether ``device`` resolves to the CPU; a device this machine lacks is not (the run
    then reports it for every series, as it does for a short run)."""
    try:
        return resolve_device(device).type == "cpu"
    except InputError:
        return False


def _model_groups(
    run: _Run, pending: list[dict[str, Any]]
) -> list[tuple[ModelBundle, list[dict[str, Any]]]]:
    """The pending rows by model: all with the given model, or by the model chosen for each."""
    if run.bundle is not None:
        return [(run.bundle, pending)]
    from medxai.models.registry import load_model

    groups = run.plan.groups(pending) if run.plan else []
    return [(load_model(name, cache=True), rows) for name, rows in groups]


class _JobFactory:
    """Turns manifest rows into the :class:`Job` workers take (with the model choice, when the
    model was chosen by the input)."""

    def __init__(
        self, export: Path, out: Path, man: Manifest, choices: dict[str, ModelChoice] | None = None
    ) -> None:
        self.export, self.out = export, out
        self.folders = _folder_owners(man)
        self.choices = choices or {}

    def __call__(self, row: dict[str, Any]) -> Job:
        job = _job_for(row, self.export, self.out, self.folders)
        if row["id"] in self.choices:
            job = dataclasses.replace(job, model_choice=self.choices[row["id"]].to_dict())
        return job


def _run_backend(
    man: Manifest,
    chunks: Sequence[Sequence[dict[str, Any]]],
    jobs_for: JobsFor,
    config: WorkerConfig,
    bundle: ModelBundle,
    on_result: OnResult,
    scheduler: str | None,
    workers: int,
    writers: Writers | None = None,
    inline: bool = False,
) -> str:
    """Run ``chunks`` on the configured backend; returns its name for the summary. ``inline``:
    with ``workers`` > 1, this process is one of the local workers."""
    if scheduler:
        from medxai.batch.dask_runner import run_on_dask

        run_on_dask(man, chunks, jobs_for, config, on_result, scheduler=scheduler, workers=workers)
        return f"dask ({scheduler})"
    if workers > 1:
        # this process's chunks use the model it has loaded, and forked workers inherit it
        keep_bundle(bundle, config)
        _run_process_pool(man, chunks, jobs_for, config, on_result, workers, inline)
        if inline:
            others = workers - 1
            return f"this process and {others} local worker process{'es' if others > 1 else ''}"
        return f"{workers} local worker processes"
    _run_inline(man, chunks, jobs_for, bundle, config, on_result, writers)
    return "in process"


def _summary(man: Manifest, run: _Run, found: _Found, csv_paths: dict[str, Path]) -> BatchSummary:
    counts = man.counts()
    for table in counts:
        counts[table]["total"] = sum(counts[table].values())
    failed = [
        {"series": r["output_name"], "id": r["id"], "reason": r["reason"]}
        for r in man.series("failed")
    ]
    failed += [
        {"file": f["path"], "reason": f["reason"]}
        for f in man.files("failed")
        if f["kind"] != "image"
    ]
    images = run.counts.get("done", 0)
    bundle, scan = run.bundle, found.scan
    return BatchSummary(
        export_dir=str(run.export),
        output=str(run.out),
        manifest=str(run.out / MANIFEST_NAME),
        csv={k: str(v) for k, v in csv_paths.items()},
        model=(
            {
                "name": bundle.name,
                "version": bundle.version,
                "path": run.model_path,
                "weights_sha256": bundle.weights_sha256,
            }
            if bundle is not None
            else {
                "chosen_by_input": _model_settings(None)["auto"],
                "series_per_model": man.model_counts(),
            }
        ),
        files=counts["files"],
        series=counts["series"],
        this_run=run.counts
        | {
            "requeued_after_crash": found.recovered["requeued"],
            "retried_failed": found.retried,
            "rerun_missing_output": len(found.missing),
        },
        scan={
            "files": len(scan.files),
            "headers_read": scan.headers_read,
            "seconds": round(scan.seconds, 3),
            "files_per_s": round(scan.files_per_second, 1),
        },
        process={
            "series": sum(run.counts.values()),
            "images_done": images,
            "seconds": round(run.process_s, 3),
            "images_per_s": round(images / run.process_s, 3) if run.process_s > 0 else 0.0,
            # this process's CPU time (all its threads) and its local worker processes' (not
            # the --writers processes' nor dask workers'): the cost per image that a busy
            # machine's wall time hides
            "cpu_s": round(run.process_cpu_s, 3),
            "cpu_ms_per_image": round(1000 * run.process_cpu_s / images, 1) if images else 0.0,
        },
        failed=failed,
        skipped_reasons=group_reasons(man.reasons("skipped")),
        file_reasons=man.file_reasons(),
        backend=run.backend,
    )


# ---------------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------------


def _run_inline(
    man: Manifest,
    chunks: Sequence[Sequence[dict[str, Any]]],
    jobs_for: JobsFor,
    bundle: ModelBundle,
    config: WorkerConfig,
    on_result: OnResult,
    writers: Writers | None = None,
) -> None:
    """Workers = 1: this process, the bundle already loaded; one pipeline over every chunk
    (no pause between chunks), each chunk claimed in the manifest when the pipeline reads its
    first series, each result recorded as soon as it is ready."""
    from medxai.batch.runner import worker_name

    me = worker_name()

    def claimed() -> Iterator[Job]:
        for chunk in chunks:
            ids = set(man.claim([r["id"] for r in chunk], me))
            yield from (jobs_for(r) for r in chunk if r["id"] in ids)

    process_chunk(
        claimed(),
        bundle,
        config.options,
        batch_size=config.batch_size,
        on_result=on_result,
        writers=writers,
    )


def _run_process_pool(
    man: Manifest,
    chunks: Sequence[Sequence[dict[str, Any]]],
    jobs_for: JobsFor,
    config: WorkerConfig,
    on_result: OnResult,
    workers: int,
    inline: bool = False,
) -> None:
    """N local worker processes (forked where :func:`worker_start_method` allows, else
    spawned), each with the model loaded once; ~2 chunks per worker in flight so that workers
    never wait for the driver; the chunks shrink towards the end (:func:`guided_chunks`).

    With ``inline`` this process is one of the N: a thread of it runs chunks from the start
    with the model it has loaded, while the N - 1 processes start (a spawned one imports and
    loads its own; a forked one has this process's), so their start-up costs the run no time. A chunk run here shares this process's fate, as with
    ``workers=1`` (a series that kills its process ends the run, and the next run finds it);
    the worker processes' chunks are isolated."""
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // workers)
    # each result comes through this pipe as it is made, not with its chunk: recorded at once,
    # a kill -9 of this process then loses no finished series with the chunks in flight
    stream = _ResultStream()

    def make_pool(method: str) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(
            workers - 1 if inline else workers,
            mp_context=multiprocessing.get_context(method),
            initializer=init_worker_process,
            initargs=(threads, os.getpid(), stream.sink),
        )

    chunks = guided_chunks(chunks, workers)
    first = worker_start_method(threads)
    if first == "fork" and writes_dicom(config.options):
        warm_dicom_writers()  # done once here (or already), inherited by every forked worker
    pool = [make_pool(first)]
    here = _InlineWorker(workers * threads, workers - 1, config, stream.put) if inline else None
    if here is not None:
        here.warm(pool[0])

    def submit(jobs: list[Job]) -> cf.Future[list[Result]]:
        if here is not None and here.has_room():
            return here.submit(jobs, config)
        return pool[0].submit(run_chunk, jobs, config)

    def wait_any(futures: list[Any]) -> list[Any]:
        if here is not None:
            return here.wait_any(futures, STREAM_POLL_S)
        return _wait_any(futures, STREAM_POLL_S)

    def restart() -> None:
        pool[0].shutdown(wait=False, cancel_futures=True)
        # asked again: this process's own threads run by now, so the new pool is spawned
        pool[0] = make_pool(worker_start_method(threads))
        if here is not None:
            here.warm(pool[0])

    try:
        drive(
            man,
            chunks,
            jobs_for,
            submit,
            wait_any,
            in_flight=here.in_flight if here is not None else 2 * workers,
            worker=f"pool:{os.getpid()}",
            on_result=on_result,
            on_crash=restart,
            is_crash=lambda e: isinstance(e, BrokenProcessPool),
            survives_crash=here.owns if here is not None else None,
            streamed=stream.take,
        )
    finally:
        if here is not None:
            here.close()
        pool[0].shutdown(wait=True, cancel_futures=True)
        stream.close()


#: how long the driver of local workers waits for a chunk before it takes the results that
#: came through the stream meanwhile
STREAM_POLL_S = 0.1


class _ResultStream:
    """The results that local workers send ahead of their chunks: worker processes through a
    pipe (:func:`medxai.batch.runner.stream_result`: one atomic write each, so a worker killed
    mid-send leaves no half message), this process's own chunks through :meth:`put`. Not on
    Windows, which has no non-blocking pipes: there results come with their chunks."""

    def __init__(self) -> None:
        self._here: deque[Result] = deque()
        self._source: Any = None
        #: the write end that worker processes get (None: they do not stream)
        self.sink: Any = None
        if os.name == "posix":
            self._source, self.sink = multiprocessing.Pipe(duplex=False)
            # a full pipe fails a send (the result then comes with its chunk) instead of
            # blocking a worker that nobody reads any more; a write of at most PIPE_BUF bytes
            # is still whole or not at all
            os.set_blocking(self.sink.fileno(), False)

    def put(self, result: Result) -> None:
        """A result of a chunk run in this process (any thread)."""
        self._here.append(result)

    def take(self) -> list[Result]:
        """Every result that came since the last call."""
        out = []
        while self._here:
            out.append(self._here.popleft())
        while self._source is not None and self._source.poll():
            out.append(pickle.loads(self._source.recv_bytes()))
        return out

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self.sink.close()


def _wait_any(futures: list[Any], timeout: float | None = None) -> list[Any]:
    return list(cf.wait(futures, timeout, return_when=cf.FIRST_COMPLETED).done)


class _InlineWorker:
    """This process as one of the local workers: one thread that runs chunks with its share of
    the ``cores``' torch threads, two chunks at most (one running, one waiting), like each worker
    process. The worker processes get chunks only once they are ready (their model loaded), so
    that no chunk waits in a process that is still starting while this one could run it."""

    def __init__(
        self,
        cores: int,
        processes: int,
        config: WorkerConfig,
        on_result: Callable[[Result], None] | None = None,
    ) -> None:
        self._on_result = on_result
        self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix="medxai-inline")
        self._futures: set[cf.Future[list[Result]]] = set()
        #: every chunk run here that the driver may still hold (done ones included)
        self._mine: weakref.WeakSet[cf.Future[list[Result]]] = weakref.WeakSet()
        self._processes, self._config, self._cores = processes, config, cores
        self._warm: list[cf.Future[None]] = []
        #: worker processes ready when :meth:`in_flight` was last asked
        self._seen_ready = 0

    def warm(self, pool: cf.Executor) -> None:
        """Start (again, after a crash) the worker processes of ``pool``: one warm-up each."""
        dicom = writes_dicom(self._config.options)
        self._warm = [pool.submit(warm_worker, self._config, dicom) for _ in range(self._processes)]

    def _ready(self) -> int:
        return sum(f.done() and f.exception() is None for f in self._warm)

    def in_flight(self) -> int:
        """Chunks to keep in flight: two here and two per worker process that is ready."""
        self._seen_ready = self._ready()
        return 2 * (1 + self._seen_ready)

    def wait_any(self, futures: list[Any], timeout: float | None = None) -> list[Any]:
        """Those of ``futures`` that are done, waiting for one of them, for a worker process
        to become ready, or ``timeout`` seconds (then possibly none: the driver fills the new
        room). A worker process that became ready since :meth:`in_flight` was asked ends the
        wait at once (a forked one is ready within a few hundredths of a second)."""
        if self._ready() != self._seen_ready:
            return [f for f in futures if f.done()]
        starting = [f for f in self._warm if not f.done()]
        done = cf.wait([*futures, *starting], timeout, return_when=cf.FIRST_COMPLETED).done
        return [f for f in futures if f in done]

    def has_room(self) -> bool:
        self._futures = {f for f in self._futures if not f.done()}
        return len(self._futures) < 2

    def submit(self, jobs: list[Job], config: WorkerConfig) -> cf.Future[list[Result]]:
        # the cores shared with the worker processes that are ready (all of them before)
        threads = max(1, self._cores // (1 + self._ready()))
        fut = self._pool.submit(run_chunk_here, jobs, config, threads, self._on_result)
        self._futures.add(fut)
        self._mine.add(fut)
        return fut

    def owns(self, fut: object) -> bool:
        """Whether ``fut`` runs (or ran) here: it lives on when the worker processes die."""
        return fut in self._mine

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
