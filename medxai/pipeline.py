"""What ``medxai segment`` does, as one function the CLI, the batch runner and the Python API
all call: read -> predict -> explain -> write, one output folder per input.

Each input's outputs are written by :func:`medxai.outputs.write_result_folder`: into a hidden
temporary folder beside the final one, moved into place with one rename when everything is
written, so an interrupted run never leaves a half-written result folder behind (and
``medxai batch`` can resume safely).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medxai._version import __version__
from medxai.choices import FORMAT_CHOICES
from medxai.errors import InputError, OutputExistsError
from medxai.inference import (
    Prediction,
    network_on,
    predict,
    prepare_input,
    resolve_device,
    restore_output,
)
from medxai.io.readers import load_image
from medxai.io.types import LoadedImage
from medxai.models.bundle import ModelBundle
from medxai.models.fit import InputFacts, ModelChoice, facts_from_meta
from medxai.outputs import ResultFolder, label_info, output_name, write_result_folder

__all__ = [
    "FORMATS",
    "SegmentOptions",
    "SegmentResult",
    "segment_loaded",
    "segment_path",
    "segment",
    "default_formats",
    "output_name",
    "compute_saliency",
    "input_volumes",
    "saliency_maps",
]

#: Output formats ``--format`` accepts.
FORMATS = FORMAT_CHOICES

ProgressFn = Callable[[str], None]


@dataclass
class SegmentOptions:
    """Options of one ``segment`` run (CLI flags of the same names)."""

    formats: Sequence[str] | None = None
    explain: str | None = "gradcam"
    device: str = "auto"
    roi_size: Sequence[int] | None = None
    overlap: float | None = None
    sw_batch_size: int | None = None
    tta: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.formats is not None:
            bad = [f for f in self.formats if f not in FORMATS]
            if bad:
                raise InputError(
                    f"unknown output format(s) {bad}", hint=f"use any of: {', '.join(FORMATS)}"
                )
        if self.explain in ("none", ""):
            self.explain = None


@dataclass
class SegmentResult:
    """What segmenting one input produced."""

    input: str
    output_dir: Path
    files: list[str]
    report: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output_dir": str(self.output_dir),
            "files": self.files,
            "labels": self.report.get("labels", []),
            "timings_s": self.report.get("timings_s"),
        }


def default_formats(loaded: LoadedImage) -> list[str]:
    """DICOM inputs get every format (RTSTRUCT only for volumes); pictures and NIfTI/NRRD
    volumes get NIfTI, PNG and JSON."""
    if loaded.dicom is not None:
        series = not loaded.dicom.is_multiframe and len(loaded.dicom.datasets) > 1
        return [f for f in FORMATS if series or f != "dicom-rtstruct"]
    return ["nifti", "png", "json"]


def _digest(loaded: LoadedImage) -> str:
    """SHA-256 over the input's files: the DICOM files it was read from, or the file itself."""
    path = Path(loaded.path)
    if loaded.dicom is not None:
        files = sorted(Path(p) for p in loaded.dicom.paths)
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def compute_saliency(
    bundle: ModelBundle,
    loaded: LoadedImage,
    method: str,
    label: int,
    device: torch.device,
    roi_size: Sequence[int] | None = None,
    overlap: float | None = None,
) -> torch.Tensor:
    """Saliency ``(1, I, J[, K])`` of ``label`` on the input's grid, in [0, 1].

    Whole-image models are explained on the model's input grid and the map is resized back like
    the prediction; sliding-window models are explained window by window and blended
    (:func:`medxai.explain.sliding_window_saliency`).
    """
    from medxai.explain import explain as run_explain
    from medxai.explain import sliding_window_saliency

    contract = getattr(bundle, "contract", None)
    if contract is not None and contract.form == "monai":
        # a MONAI bundle: its own preprocessing onto the model grid, MONAI's inverse back
        contract.check_saliency_method(method)
        x, data = bundle.model_input(loaded.image)
        roi = list(roi_size or contract.inference.roi_size or x.shape[2:])
        with network_on(bundle.network, device) as net:
            if contract.inference.inferer == "SlidingWindowInferer":
                sal = sliding_window_saliency(
                    net,
                    x.to(device),
                    method,
                    roi_size=roi,
                    overlap=float(overlap if overlap is not None else contract.inference.overlap),
                    target_label=label,
                )
            else:
                sal = run_explain(net, x.to(device), method=method, target_label=label)
        return bundle.to_input_grid(sal[0].detach().float().cpu(), data).clamp(0, 1)
    x, state = prepare_input(bundle, loaded.image)
    spec = bundle.contract.inference
    with network_on(bundle.network, device) as net:
        if spec.mode == "whole_image":
            sal = run_explain(net, x.to(device), method=method, target_label=label)
        else:
            sal = sliding_window_saliency(
                net,
                x.to(device),
                method,
                roi_size=list(roi_size or spec.roi_size or x.shape[2:]),
                overlap=float(overlap if overlap is not None else spec.overlap),
                target_label=label,
            )
    return restore_output(sal[0].detach().float().cpu(), state).clamp(0, 1)


def saliency_maps(
    bundle: ModelBundle,
    loaded: LoadedImage,
    opts: SegmentOptions,
    device: torch.device,
    prediction: Prediction | None = None,
) -> dict[int, torch.Tensor]:
    """One saliency map ``(1, *spatial)`` per foreground label of ``bundle`` (``opts.explain``'s
    method, :func:`compute_saliency`), by label value, on the input's grid; empty when no
    saliency is asked for. ``prediction`` is the prediction of ``loaded`` (for explanation
    targets defined by it)."""
    if not opts.explain:
        return {}
    return {
        int(lab["value"]): compute_saliency(
            bundle, loaded, opts.explain, int(lab["value"]), device, opts.roi_size, opts.overlap
        )
        for lab in bundle.foreground_labels
    }


def _report(
    loaded: LoadedImage,
    bundle: ModelBundle,
    pred: Prediction,
    device: torch.device,
    method: str | None,
    energy: dict[int, float],
    timings: dict[str, float],
    files: list[str],
    digest: str,
) -> dict[str, Any]:
    from medxai.io.writers import label_statistics

    meta = loaded.image.meta
    spacing = list(meta.get("spacing", []))
    return {
        "medxai_version": __version__,
        "input": {
            "path": str(loaded.path),
            "sha256": digest,
            "form": meta.get("medxai_form"),
            "modality": meta.get("modality"),
            "shape": list(loaded.image.shape[1:]),
            "channels": int(loaded.image.shape[0]),
            "spacing": spacing,
            "orientation": meta.get("axis_codes"),
            "has_patient_geometry": bool(meta.get("has_patient_geometry")),
            "study_instance_uid": meta.get("study_instance_uid"),
            "series_instance_uid": meta.get("series_instance_uid"),
            "warnings": list(meta.get("geometry_warnings", [])),
            # which volume of a multi-volume DICOM input (index, count, label, split key)
            "volume": meta.get("volume"),
        },
        "model": {
            "name": bundle.name,
            "version": bundle.version,
            "weights_sha256": bundle.weights_sha256,
            "path": str(bundle.path) if bundle.path else None,
            "tta": pred.tta,
            "tta_sizes": bundle.inference.get("tta_sizes") if pred.tta != "none" else None,
            "threshold": bundle.inference.get("threshold"),
            "postprocessing": bundle.config.get("postprocessing") or {},
        },
        "device": str(device),
        # radiographs have mm spacing (PixelSpacing or ImagerPixelSpacing) without patient
        # geometry: their areas are in mm2 too, and report.json says which spacing it was
        "labels": label_statistics(
            pred.labels[0].numpy(),
            spacing,
            label_info(bundle),
            bool(meta.get("has_patient_geometry")) or bool(meta.get("pixel_spacing_source")),
        ),
        "pixel_spacing_source": meta.get("pixel_spacing_source"),
        "saliency": {
            "method": method,
            "energy_in_mask": {str(k): round(v, 4) for k, v in energy.items()},
        },
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "files": files,
    }


def segment_loaded(
    loaded: LoadedImage,
    bundle: ModelBundle,
    out_root: str | Path,
    options: SegmentOptions | None = None,
    *,
    name: str | None = None,
    progress: ProgressFn | None = None,
    prediction: Prediction | None = None,
    choice: ModelChoice | None = None,
    saliency: dict[int, torch.Tensor] | None = None,
) -> SegmentResult:
    """Segment (and explain) an image already read, writing its output folder under
    ``out_root``. See :func:`segment_path`. A ``prediction`` made elsewhere (the batch runner
    predicts 2D images in batches) is used instead of predicting again, and so are ``saliency``
    maps made elsewhere (:func:`saliency_maps`; the batch runner explains the next image while
    this one is written)."""
    opts = options or SegmentOptions()
    say = progress or (lambda _m: None)
    out_root = Path(out_root)
    name = name or output_name(loaded.path)
    final = out_root / name
    if final.exists() and not opts.overwrite:
        raise OutputExistsError(
            "exists already",
            path=final,
            hint="pass --overwrite to replace it, or choose another -o",
        )
    formats = list(opts.formats or default_formats(loaded))
    device = resolve_device(opts.device)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    if prediction is None:
        say(f"{name}: predicting on {device}")
        pred = predict(
            bundle,
            loaded.image,
            device=device,
            roi_size=opts.roi_size,
            overlap=opts.overlap,
            sw_batch_size=opts.sw_batch_size,
            tta=opts.tta,
            source=str(loaded.path),
        )
        timings["predict"] = time.perf_counter() - t
    else:
        pred = prediction
        timings["predict"] = prediction.seconds
    given_saliency = saliency
    saliency = {}
    energy: dict[int, float] = {}
    if opts.explain:
        t = time.perf_counter()
        if given_saliency is None:
            say(f"{name}: explaining with {opts.explain}")
            saliency = saliency_maps(bundle, loaded, opts, device, pred)
        else:
            saliency = given_saliency
        for value, sal in saliency.items():
            mask = pred.labels == value
            total = float(sal.sum())
            energy[value] = float(sal[mask].sum()) / total if total > 0 else 0.0
        timings["explain"] = time.perf_counter() - t
    report: dict[str, Any] = {}

    def finish(tmp: Path, written: ResultFolder) -> None:
        timings.update(written.timings)
        report.update(
            _report(
                loaded,
                bundle,
                pred,
                device,
                opts.explain,
                energy,
                timings,
                written.files,
                _digest(loaded),
            )
        )
        report["skipped_outputs"] = written.skipped
        report["model"]["choice"] = (
            choice.to_dict()
            if choice is not None
            else {"chosen": bundle.name, "reason": "given with --model"}
        )
        if "json" in formats:
            from medxai.io.writers import write_report_json

            write_report_json(report, tmp / "report.json")
            written.files.append("report.json")
            report["files"] = written.files

    written = write_result_folder(
        out_root,
        name,
        loaded,
        bundle,
        pred,
        saliency,
        formats,
        overwrite=opts.overwrite,
        finish=finish,
        method=opts.explain,
    )
    files = written.files
    say(f"{name}: wrote {len(files)} file(s) to {final}")
    return SegmentResult(input=str(loaded.path), output_dir=final, files=files, report=report)


def input_facts(loaded: LoadedImage) -> InputFacts:
    """What the fit rules look at in ``loaded`` (shape, modality, spacing, body part)."""
    body_part = loaded.dicom.first.get("BodyPartExamined", "") if loaded.dicom else ""
    return facts_from_meta(loaded.image.shape, loaded.image.meta, str(body_part or ""))


def choose_bundle(loaded: LoadedImage) -> tuple[ModelBundle, ModelChoice]:
    """The bundled model whose fit rules accept ``loaded`` (loaded once per process, cached),
    and the choice with its reason.

    Raises:
        ModelMismatchError: no bundled model takes the input; the message says why each refused.
    """
    from medxai.models.registry import choose_bundled_model, load_model

    choice = choose_bundled_model(input_facts(loaded), str(loaded.path))
    return load_model(choice.name, cache=True), choice


def segment_path(
    path: str | Path,
    bundle: ModelBundle | None,
    out_root: str | Path,
    options: SegmentOptions | None = None,
    *,
    name: str | None = None,
    progress: ProgressFn | None = None,
    volume: int | None = None,
) -> SegmentResult:
    """Read ``path`` and segment it: the one function behind ``medxai segment`` and ``batch``.

    ``volume``: which volume of a multi-volume DICOM input (see :func:`input_volumes`).

    With ``bundle`` None the bundled model is chosen by the input (:func:`choose_bundle`) and
    the choice and its reason are recorded in ``report["model"]["choice"]``.

    Writes ``out_root/<name>/``: ``labels.nii.gz`` (+ ``labels.json``), ``saliency_<label>.nii.gz``,
    ``preview.png``, ``seg.dcm``, ``overlay_sc/``, ``report.json`` as ``options.formats`` says.

    Raises:
        MedxaiError: unreadable input, wrong input for the model, output exists, ...
    """
    t = time.perf_counter()
    loaded = load_image(path, volume=volume)
    read_s = time.perf_counter() - t
    choice = None
    if bundle is None:
        bundle, choice = choose_bundle(loaded)
        if progress:
            progress(f"{name or output_name(loaded.path)}: {choice.reason}")
    result = segment_loaded(
        loaded, bundle, out_root, options, name=name, progress=progress, choice=choice
    )
    result.report.setdefault("timings_s", {})["read"] = round(read_s, 4)
    return result


def input_volumes(path: str | Path, volume: int | str = "all") -> list[tuple[int | None, str]]:
    """The volumes of ``path`` to segment, as ``(index, name suffix)``: ``[(None, "")]`` for an
    input holding one volume; for a DICOM series or enhanced object holding several (echoes,
    b-values, ...: :func:`medxai.io.readers.list_volumes`), each one (``volume="all"``) or the
    one numbered ``volume`` (1-based), with the suffix ``_<label>`` (``_echo2``) that names its
    result folder.

    Raises:
        SeriesError: ``volume`` is not one of the input's volumes.
        MedxaiError: the input cannot be read.
    """
    from medxai.errors import SeriesError
    from medxai.io.readers import list_volumes

    vols = list_volumes(path)
    if volume != "all" and not 1 <= int(volume) <= len(vols):
        raise SeriesError(
            f"holds {len(vols)} volume(s); there is no volume {volume}",
            path=path,
            hint=f"choose 1..{len(vols)} or all (`medxai info` lists them)",
        )
    if len(vols) == 1:
        return [(None, "")]
    chosen = vols if volume == "all" else [vols[int(volume) - 1]]
    return [(v.index, f"_{v.label or v.index}") for v in chosen]


def segment(
    inputs: str | Path | Iterable[str | Path],
    model: str | Path | ModelBundle | None = None,
    output: str | Path = "medxai-results",
    **options: Any,
) -> list[SegmentResult]:
    """Python API: segment one or more inputs with a model (bundled name, folder or bundle;
    None picks a bundled model per input by its fit rules).

    ``options`` are :class:`SegmentOptions` fields. The model is loaded once.
    """
    from medxai.models.registry import load_model

    bundle = model if isinstance(model, ModelBundle) or model is None else load_model(model)
    opts = SegmentOptions(**options)
    paths = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    return [
        segment_path(p, bundle, output, opts, name=output_name(p) + suffix, volume=index)
        for p in paths
        for index, suffix in input_volumes(p)
    ]


def unique_names(paths: Sequence[str | Path]) -> list[str]:
    """Output names for several inputs; repeated stems get ``_2``, ``_3``, ... suffixes."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        base = output_name(p)
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names
