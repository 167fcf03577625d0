"""The result folder: every output of one segmented input, written into a hidden temporary
folder beside the final one and moved into place with one rename when everything is written, so
an interrupted run never leaves a half-written result folder behind (and ``medxai batch`` can
resume safely).

:func:`write_result_folder` is the one writer of result folders; ``medxai segment`` (through
:mod:`medxai.pipeline`) and the MONAI transform :class:`medxai.transforms.SaveSegmentation` both
call it. Layer: above :mod:`medxai.inference` and :mod:`medxai.io.writers`, below the pipeline.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medxai.errors import InputError, MedxaiError, OutputExistsError
from medxai.inference import Prediction
from medxai.io.types import LoadedImage
from medxai.models.bundle import ModelBundle
from medxai.uncertainty import Uncertainty

__all__ = [
    "ResultFolder",
    "write_result_folder",
    "write_outputs",
    "commit_folder",
    "output_name",
    "label_info",
]


@dataclass
class ResultFolder:
    """What :func:`write_result_folder` wrote: the folder, its files (relative paths), seconds
    per writer, and the formats skipped with the reason."""

    path: Path
    files: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_VOLUME_SUFFIXES = (
    ".nii.gz",
    ".nii",
    ".nrrd",
    ".nhdr",
    ".mha",
    ".mhd",
    ".dcm",
    ".dicom",
    ".jpg",
    ".jpeg",
    ".png",
    ".tif",
    ".tiff",
    ".bmp",
)


def output_name(path: str | Path) -> str:
    """A safe folder name for an input: its file stem (or folder name), sanitised.

    Only the user's own path is used (never header values), characters outside
    ``[A-Za-z0-9._-]`` become ``_``, leading dots are dropped, and the result is at most 100
    characters, so a name can never climb out of the output folder.
    """
    p = Path(path)
    name = p.name
    low = name.lower()
    for suf in _VOLUME_SUFFIXES:
        if low.endswith(suf) and len(name) > len(suf):
            name = name[: -len(suf)]
            break
    name = _SAFE.sub("_", name).lstrip(".")[:100].strip("_") or "input"
    return name


class _ObjectClock:
    """CPU seconds of this thread per object written, into ``into`` (nothing when None)."""

    def __init__(self, into: dict[str, float] | None) -> None:
        self.into = into

    @contextlib.contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        if self.into is None:
            yield
            return
        c = time.thread_time()
        try:
            yield
        finally:
            self.into[key] = self.into.get(key, 0.0) + time.thread_time() - c


def label_info(bundle: ModelBundle) -> list[dict[str, Any]]:
    """The bundle's labels (value, name, colour, ...) as fresh dicts."""
    return [dict(lab) for lab in bundle.labels]


def write_outputs(
    tmp: Path,
    loaded: LoadedImage,
    bundle: ModelBundle,
    pred: Prediction,
    saliency: dict[int, torch.Tensor],
    formats: Sequence[str],
    name: str,
    *,
    method: str | None = None,
    uncertainty: Uncertainty | None = None,
    seg_type: str = "binary",
    split_labels: bool = False,
    uid_seed: str | None = None,
    object_cpu: dict[str, float] | None = None,
) -> tuple[list[str], dict[str, float], list[dict[str, Any]]]:
    """Write ``formats`` of one result into the folder ``tmp``: NIfTI labels (+ labels.json) and
    one saliency map per label, the PNG preview, DICOM SEG, Parametric Map (one per saliency
    map, ``pm_saliency_<label>.dcm``), TID 1500 SR (``sr.dcm``; it references the SEG, which is
    then written too), RT Structure Set (``rtstruct.dcm``, series with patient geometry) and
    Secondary Capture (for pictures on a placeholder study made from the picture). ``method`` is
    the saliency method, recorded in the PM and SR. ``uncertainty``, when given, adds
    ``uncertainty.nii.gz`` and ``uncertainty_variance.nii.gz`` (NIfTI), ``pm_uncertainty.dcm``
    (Parametric Map of the entropy) and the quality score in the SR.

    ``seg_type`` is the DICOM SEG's type (``binary``, ``labelmap``, ``fractional``: the
    prediction's probabilities); ``split_labels`` adds one ``mask_<label>.nii.gz`` per
    foreground label (with ``nifti``). ``object_cpu``, when given, gets the CPU seconds of this
    thread per object written (``nifti_labels``, ``nifti_saliency_<label>``, ``preview``,
    ``seg``, ``sc``, ``pm_saliency_<label>``, ``sr``, ...: benchmarks/bench_outputs_cost.py).

    ``uid_seed``: the DICOM objects' new UIDs (SOP instance, series, ...) are derived from it
    (:func:`medxai.io.writers.derived_uids`) instead of drawn at random, so the same result
    written again carries the same UIDs; it must name the source instances, the model and the
    settings (:func:`medxai.pipeline.result_uid_seed`).

    Returns:
        the files written (relative to ``tmp``), seconds per writer, and the formats skipped
        with the reason (a DICOM output that cannot be made does not stop the others).
    """
    from medxai.io import writers as w

    files: list[str] = []
    times: dict[str, float] = {}
    skipped: list[dict[str, Any]] = []
    labels = pred.labels[0].numpy()
    affine = pred.affine.numpy()
    info = label_info(bundle)
    colors = {int(lab["value"]): lab.get("color") for lab in info}
    first_sal = next(iter(saliency.values()))[0].numpy() if saliency else None
    clock = _ObjectClock(object_cpu)
    t = time.perf_counter()
    if "nifti" in formats:
        with clock("nifti_labels"):
            files.append(
                w.write_nifti_labels(
                    labels,
                    affine,
                    tmp / "labels.nii.gz",
                    info,
                    model_name=bundle.name,
                    model_version=bundle.version,
                ).name
            )
            files.append("labels.json")
        for value, sal in saliency.items():
            lab_name = output_name(
                next((lab["name"] for lab in info if lab["value"] == value), f"label{value}")
            )
            with clock(f"nifti_saliency_{lab_name}"):
                path = w.write_nifti_map(
                    sal[0].numpy(), affine, tmp / f"saliency_{lab_name}.nii.gz"
                )
            files.append(path.name)
        if uncertainty is not None:
            with clock("nifti_uncertainty"):
                files += _write_uncertainty_nifti(tmp, uncertainty, affine)
        if split_labels:
            with clock("nifti_split_masks"):
                files += _write_split_masks(tmp, labels, affine, info)
        times["write_nifti"] = time.perf_counter() - t
    if "png" in formats:
        t = time.perf_counter()
        with clock("preview"):
            files.append(_write_preview(tmp, loaded, bundle, labels, saliency, info, method))
        times["write_png"] = time.perf_counter() - t
    if any(f.startswith("dicom-") for f in formats):
        t = time.perf_counter()
        # the source header is prepared once for the SEG, the maps and the SR
        with w.shared_source_headers():
            try:
                probabilities = pred.probabilities.numpy() if seg_type == "fractional" else None
                with w.derived_uids(uid_seed):
                    written, source, seg = _write_dicom(
                        tmp,
                        loaded,
                        bundle,
                        labels,
                        first_sal,
                        formats,
                        info,
                        colors,
                        seg_type,
                        probabilities,
                        clock,
                        pred.segments.numpy() if pred.segments is not None else None,
                    )
                files += written
            except MedxaiError as exc:
                # the other outputs stand; the report says why there is no DICOM
                skipped.append(
                    {"formats": [f for f in formats if f.startswith("dicom")], "reason": str(exc)}
                )
            else:
                with w.derived_uids(uid_seed and uid_seed + " maps"):
                    files += _write_dicom_maps(
                        tmp,
                        loaded,
                        bundle,
                        labels,
                        saliency,
                        formats,
                        info,
                        method,
                        uncertainty,
                        clock,
                        source,
                        seg,
                        skipped,
                    )
        times["write_dicom"] = time.perf_counter() - t
    return files, times, skipped


def _write_dicom(
    tmp: Path,
    loaded: LoadedImage,
    bundle: ModelBundle,
    labels: np.ndarray,
    first_sal: np.ndarray | None,
    formats: Sequence[str],
    info: list[dict[str, Any]],
    colors: dict[int, Any],
    seg_type: str = "binary",
    probabilities: np.ndarray | None = None,
    clock: _ObjectClock | None = None,
    segments: np.ndarray | None = None,
) -> tuple[list[str], Any, Any]:
    """DICOM SEG and/or Secondary Capture outputs (a placeholder study for pictures), the
    DICOM source they reference (the input's, or the placeholder study's header) and the SEG
    dataset written (None without one), which the SR references. ``segments``: overlapping
    masks, one per foreground label, written as overlapping segments (binary SEG)."""
    clock = clock or _ObjectClock(None)
    from medxai.io import writers as w

    files: list[str] = []
    image = loaded.image
    source = loaded.dicom
    if source is None:
        if image.ndim != 3:
            raise InputError(
                "DICOM SEG/SC output for a non-DICOM volume needs patient geometry medxai "
                "cannot invent",
                path=loaded.path,
                hint="use --format nifti,png,json for NIfTI/NRRD inputs",
            )
        picture = image.numpy()
        if picture.dtype != np.uint8 and picture.shape[0] == 3:
            picture = np.clip(picture, 0, 255).astype(np.uint8)
        with clock("source_photo"):
            source = w.create_photo_study(
                picture, tmp / "source_photo.dcm", source_name=Path(loaded.path).name
            )
        files.append("source_photo.dcm")
    seg = None
    if "dicom-seg" in formats or "dicom-sr" in formats:
        with clock("seg"):
            seg = w.dicom_seg_dataset(
                labels,
                source,
                info,
                bundle.name,
                bundle.version,
                seg_type=seg_type,
                probabilities=probabilities,
                segments=segments,
            )
            path = w.save_dicom(seg, tmp / "seg.dcm")
        files.append(path.name)
    if "dicom-sc" in formats:
        with clock("sc"):
            rgb = w.overlay_rgb(image.numpy(), labels, first_sal, colors)
            paths = w.write_dicom_sc(rgb, source, tmp / "overlay_sc", bundle.name, bundle.version)
        files += [f"overlay_sc/{p.name}" for p in paths]
    return files, source, seg


def _write_dicom_maps(
    tmp: Path,
    loaded: LoadedImage,
    bundle: ModelBundle,
    labels: np.ndarray,
    saliency: dict[int, torch.Tensor],
    formats: Sequence[str],
    info: list[dict[str, Any]],
    method: str | None,
    uncertainty: Uncertainty | None = None,
    clock: _ObjectClock | None = None,
    source: Any = None,
    seg: Any = None,
    skipped: list[dict[str, Any]] | None = None,
) -> list[str]:
    """Parametric Maps of the saliency maps (and of the uncertainty map), the RTSTRUCT and the
    TID 1500 SR (after :func:`_write_dicom`, whose DICOM source and SEG dataset they reference:
    ``source``, ``seg``; without ``seg`` the SR reads ``seg.dcm``).

    Each kind is written on its own: one that cannot be made goes into ``skipped`` with the
    reason (None: the error is raised) and the others are still written."""
    job = _MapsJob(
        tmp,
        loaded,
        bundle,
        labels,
        info,
        method,
        uncertainty,
        clock or _ObjectClock(None),
        source if source is not None else loaded.dicom,
        seg,
        {value: sal[0].numpy() for value, sal in saliency.items()},
    )
    files: list[str] = []
    for fmt, write in (
        ("dicom-pm", job.parametric_maps),
        ("dicom-rtstruct", job.rtstruct),
        ("dicom-sr", job.sr),
    ):
        if fmt not in formats:
            continue
        try:
            files += write()
        except MedxaiError as exc:
            if skipped is None:
                raise
            skipped.append({"formats": [fmt], "reason": str(exc)})
    return files


@dataclass
class _MapsJob:
    """What the PM, RTSTRUCT and SR writers of one result share."""

    tmp: Path
    loaded: LoadedImage
    bundle: ModelBundle
    labels: np.ndarray
    info: list[dict[str, Any]]
    method: str | None
    uncertainty: Uncertainty | None
    clock: _ObjectClock
    source: Any
    seg: Any
    maps: dict[int, np.ndarray]

    def parametric_maps(self) -> list[str]:
        from medxai.io import writers as w

        bundle, source, files = self.bundle, self.source, []
        names = {
            int(lab["value"]): str(lab.get("name") or f"label{lab['value']}") for lab in self.info
        }
        first_number = w.series_number_for(None, source.first, w.DEFAULT_PM_SERIES_OFFSET)
        for index, (value, sal) in enumerate(self.maps.items()):
            pm_name = output_name(names.get(value, str(value)))
            with self.clock(f"pm_saliency_{pm_name}"):
                path = w.write_dicom_pm(
                    sal,
                    source,
                    self.tmp / f"pm_saliency_{pm_name}.dcm",
                    model_name=bundle.name,
                    model_version=bundle.version,
                    weights_sha256=bundle.weights_sha256,
                    method=self.method,
                    label_name=names.get(value),
                    series_number=None if index == 0 else first_number + index,
                )
            files.append(path.name)
        if self.uncertainty is not None:
            with self.clock("pm_uncertainty"):
                path = w.write_dicom_pm(
                    self.uncertainty.entropy[0].numpy(),
                    source,
                    self.tmp / "pm_uncertainty.dcm",
                    model_name=bundle.name,
                    model_version=bundle.version,
                    weights_sha256=bundle.weights_sha256,
                    method=f"{self.uncertainty.method}-entropy",
                    quantity="uncertainty",
                    series_number=first_number + len(self.maps),
                )
            files.append(path.name)
        return files

    def rtstruct(self) -> list[str]:
        from medxai.io import writers as w

        with self.clock("rtstruct"):
            path = w.write_dicom_rtstruct(
                self.labels,
                self.source,
                self.info,
                self.tmp / "rtstruct.dcm",
                model_name=self.bundle.name,
                model_version=self.bundle.version,
            )
        return [path.name]

    def sr(self) -> list[str]:
        from medxai.io import writers as w

        meta = self.loaded.image.meta
        spacing = list(meta.get("spacing", [])) if meta.get("has_patient_geometry") else None
        with self.clock("sr"):
            path = w.write_dicom_sr(
                self.labels,
                self.source,
                self.seg if self.seg is not None else self.tmp / "seg.dcm",
                self.info,
                self.tmp / "sr.dcm",
                model_name=self.bundle.name,
                model_version=self.bundle.version,
                weights_sha256=self.bundle.weights_sha256,
                spacing=spacing,
                saliency=self.maps,
                method=self.method,
                quality_score=(
                    self.uncertainty.quality_score if self.uncertainty is not None else None
                ),
            )
        return [path.name]


def _write_uncertainty_nifti(tmp: Path, uncertainty: Uncertainty, affine: np.ndarray) -> list[str]:
    """``uncertainty.nii.gz`` (normalised entropy, 0..1) and ``uncertainty_variance.nii.gz``."""
    from medxai.io import writers as w

    return [
        w.write_nifti_map(
            uncertainty.entropy[0].numpy(),
            affine,
            tmp / "uncertainty.nii.gz",
            description=f"uncertainty {uncertainty.method} entropy/log(K)",
        ).name,
        w.write_nifti_map(
            uncertainty.variance[0].numpy(),
            affine,
            tmp / "uncertainty_variance.nii.gz",
            description=f"uncertainty {uncertainty.method} variance",
        ).name,
    ]


def _write_preview(
    tmp: Path,
    loaded: LoadedImage,
    bundle: ModelBundle,
    labels: np.ndarray,
    saliency: dict[int, torch.Tensor],
    info: list[dict[str, Any]],
    method: str | None,
) -> str:
    """``preview.png``: titled panels, one row per label, sizes in mm (where the input has a
    spacing), the heat map's colour bar and meaning, the model (:mod:`medxai.io.writers.preview`)."""
    from medxai.io import writers as w

    meta = loaded.image.meta
    known = bool(meta.get("has_patient_geometry")) or bool(meta.get("pixel_spacing_source"))
    spacing = list(meta.get("spacing", [])) if known else None
    preview = w.PreviewInfo(bundle.name, bundle.version, method, None, spacing or None)
    maps = {value: sal[0].numpy() for value, sal in saliency.items()}
    path, _ = w.write_clinical_preview(
        loaded.image.numpy(), labels, maps, tmp / "preview.png", info, preview
    )
    return path.name


def _write_split_masks(
    tmp: Path, labels: np.ndarray, affine: np.ndarray, info: list[dict[str, Any]]
) -> list[str]:
    """``mask_<label>.nii.gz``: one uint8 0/1 mask per foreground label of the model (present
    or not), on the input grid (``--split-labels``)."""
    from medxai.io import writers as w

    files = []
    for lab in info:
        value = int(lab["value"])
        if value == 0:
            continue
        name = str(lab.get("name") or f"label{value}")
        path = tmp / f"mask_{output_name(name)}.nii.gz"
        files.append(w.write_nifti_mask(labels, value, affine, path, name=name).name)
    return files


def commit_folder(tmp: Path, final: Path, overwrite: bool) -> None:
    """Move the finished temporary folder into place (replacing ``final`` if asked to)."""
    if final.exists():
        if not overwrite:
            raise OutputExistsError("exists already", path=final, hint="pass --overwrite")
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


def write_result_folder(
    out_root: str | Path,
    name: str,
    loaded: LoadedImage,
    bundle: ModelBundle,
    pred: Prediction,
    saliency: dict[int, torch.Tensor],
    formats: Sequence[str],
    *,
    overwrite: bool = False,
    finish: Callable[[Path, ResultFolder], None] | None = None,
    method: str | None = None,
    uncertainty: Uncertainty | None = None,
    seg_type: str = "binary",
    split_labels: bool = False,
    uid_seed: str | None = None,
) -> ResultFolder:
    """Write ``out_root/<name>/`` atomically: :func:`write_outputs` into a hidden temporary
    folder, then ``finish(tmp, result)`` (e.g. the JSON report, which may append to
    ``result.files``, or a check that raises), then one rename into place (replacing an
    existing folder only with ``overwrite``). On any error the temporary folder is removed and
    nothing else changes.

    Args:
        saliency: per foreground label value, its ``(1, *spatial)`` map on the input grid.
        formats: any of :data:`medxai.choices.FORMAT_CHOICES` (``json`` is the caller's, in
            ``finish``).
        method: the saliency method that made ``saliency`` (recorded in the DICOM PM and SR).
        seg_type, split_labels, uid_seed: see :func:`write_outputs`.
        uncertainty: the uncertainty map and quality score (:mod:`medxai.uncertainty`), or None.
    """
    out_root = Path(out_root)
    final = out_root / name
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = out_root / f".{name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        files, timings, skipped = write_outputs(
            tmp,
            loaded,
            bundle,
            pred,
            saliency,
            formats,
            name,
            method=method,
            uncertainty=uncertainty,
            seg_type=seg_type,
            split_labels=split_labels,
            uid_seed=uid_seed,
        )
        result = ResultFolder(final, files, timings, skipped)
        if finish is not None:
            finish(tmp, result)
        commit_folder(tmp, final, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
