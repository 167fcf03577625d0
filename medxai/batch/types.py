"""What passes between the parts of a batch run: a :class:`Job` (one series to segment, made by
the driver from a manifest row, taken by a worker) and a :class:`Result` (its outcome, made by
the worker, recorded by :meth:`medxai.batch.manifest.Manifest.record`).

Both are plain, picklable dataclasses (they travel to worker processes and dask workers), and
this module imports neither torch nor pydicom.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Job", "Result", "RESULT_STATES"]

#: The states a worker reports (the manifest also knows ``pending`` and ``running``).
RESULT_STATES = ("done", "skipped", "failed")


@dataclass(frozen=True)
class Job:
    """One series for a worker.

    Attributes:
        id: the series id (the manifest's primary key).
        files: absolute paths of its files (one file: a 2D image or a multi-frame object).
        out_root: the folder its result folder goes into (``<output>/<study>``).
        name: the result folder's name (``<series>``).
        output_name: ``<study>/<series>``, as the manifest names it.
        folder: a folder that holds exactly these files (the report names and hashes it), or
            ``None`` (the first file names the series).
        model_choice: when the model was chosen by the input, the choice
            (:meth:`medxai.models.fit.ModelChoice.to_dict`); the worker checks the full fit
            rules on the read image.
    """

    id: str
    files: tuple[str, ...]
    out_root: str
    name: str
    output_name: str
    folder: str | None = None
    model_choice: dict[str, Any] | None = None


@dataclass
class Result:
    """The outcome of one :class:`Job`.

    Attributes:
        id: the series id.
        state: one of :data:`RESULT_STATES`.
        reason: why it was skipped or failed.
        detail: the traceback of an unexpected error.
        outputs: the files written (relative to the result folder) when done.
        timings: seconds of ``read``, ``predict``, ``explain``, ``write``, ``total``.
        worker: ``host:pid`` of the worker.
        output_name: ``<study>/<series>``.
        model: the name of the model that made it.
        quality_score: the segmentation's quality score (report.json ``quality.score``,
            :mod:`medxai.uncertainty`) when done with an uncertainty map, else None.
    """

    id: str
    state: str
    reason: str | None = None
    detail: str | None = None
    outputs: list[str] | None = None
    timings: dict[str, float | None] = field(default_factory=dict)
    worker: str | None = None
    output_name: str | None = None
    model: str | None = None
    quality_score: float | None = None

    def __post_init__(self) -> None:
        if self.state not in RESULT_STATES:
            raise ValueError(f"result state {self.state!r} is not one of {RESULT_STATES}")
