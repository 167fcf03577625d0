"""What ``medxai segment`` does, as stages the CLI, the batch runner, the DICOM node and the
Python API all compose: read -> predict -> explain -> write, one output folder per input.

The stages pass plain, picklable data (as nnU-Net v2's predictor does, predicting on the device
and exporting in a process pool): :func:`predict_stage` (the network: prediction, TTA views or MC
dropout passes) -> :class:`Predicted`; :func:`explain_stage` (the network: saliency) ->
:class:`Explained`; :func:`write_task` bundles them with the image and the model without its
network into a :class:`WriteTask`, which :func:`write_stage` turns into the result folder in
any thread or process (the uncertainty map and scores are computed there, from the samples).
:func:`segment_loaded` runs the three in one thread.

Each input's outputs are written by :func:`medxai.outputs.write_result_folder`: into a hidden
temporary folder beside the final one, moved into place with one rename when everything is
written, so an interrupted run never leaves a half-written result folder behind (and
``medxai batch`` can resume safely).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medxai._version import __version__
from medxai.choices import FORMAT_CHOICES, SEG_TYPES
from medxai.errors import ExplainError, InputError, MedxaiError, OutputExistsError
from medxai.inference import (
    Prediction,
    network_on,
    predict,
    resolve_device,
    runner_for,
)
from medxai.io.readers import load_image
from medxai.io.types import LoadedImage
from medxai.models.bundle import ModelBundle
from medxai.models.fit import InputFacts, ModelChoice, facts_from_meta
from medxai.outputs import ResultFolder, label_info, output_name, write_result_folder
from medxai.uncertainty import (
    QUALITY_DEFINITION,
    SampleAccumulator,
    Samples,
    Uncertainty,
    ViewCollector,
    summarise,
    tta_accumulator,
    uncertainty_method,
)

__all__ = [
    "FORMATS",
    "SegmentOptions",
    "SegmentResult",
    "segment_loaded",
    "Predicted",
    "Explained",
    "WriteTask",
    "predict_stage",
    "explain_stage",
    "write_task",
    "write_stage",
    "writer_model",
    "uncertainty_samples",
    "segment_path",
    "segment",
    "held_network",
    "default_formats",
    "output_name",
    "compute_saliency",
    "ExplainSettings",
    "resolve_explain",
    "left_out_region",
    "region_from_box",
    "region_from_mask_file",
    "input_volumes",
    "saliency_maps",
    "result_uid_seed",
    "saliency_forward",
]

#: Output formats ``--format`` accepts.
FORMATS = FORMAT_CHOICES

ProgressFn = Callable[[str], None]


@dataclass
class SegmentOptions:
    """Options of one ``segment`` run (CLI flags of the same names)."""

    formats: Sequence[str] | None = None
    #: ``auto``: the model's default explanation (its bundle's ``saliency`` section); a method
    #: name; or None / ``none`` for no saliency.
    explain: str | None = "auto"
    #: CAM layer(s) (``encoder.2``, ``skip.0``, a module name...); None: the model's / method's.
    explain_layer: str | None = None
    #: ``segment``, ``border``, ``missed``, ``image`` or ``roi``; None: the model's (``auto``) or
    #: ``segment``.
    explain_target: str | None = None
    #: a user region: a box ``(x0, y0, x1, y1[, z0, z1])`` in pixels (voxels) of the input's
    #: array (stops exclusive), or the path of a mask file on the input's grid.
    explain_roi: Sequence[int] | str | Path | None = None
    #: what runs instead of a method that needs layer hooks (Grad-CAM family) on a network
    #: without them (TorchScript): a hook-free method (``smoothgrad``, ``occlusion``, ``ig``) or
    #: ``none``. None: ``smoothgrad`` for ``explain="auto"``; a named method is refused.
    explain_fallback: str | None = None
    device: str = "auto"
    roi_size: Sequence[int] | None = None
    overlap: float | None = None
    sw_batch_size: int | None = None
    tta: str | None = None
    #: ``tta``, ``mc-dropout`` or ``none``; None: ``tta`` when the model runs with TTA
    #: (:func:`medxai.uncertainty.uncertainty_method`).
    uncertainty: str | None = None
    #: MC dropout passes (``uncertainty="mc-dropout"``), drawn with ``mc_seed``.
    mc_samples: int = 8
    mc_seed: int = 0
    overwrite: bool = False
    #: the DICOM SEG's type: ``binary``, ``labelmap`` or ``fractional`` (the probabilities).
    seg_type: str = "binary"
    #: also one ``mask_<label>.nii.gz`` per foreground label (with the ``nifti`` format).
    split_labels: bool = False
    #: the DICOM results' UIDs derived from the source instances, the model and these options
    #: (:func:`result_uid_seed`) instead of random: the same result made again (a crashed
    #: ``medxai listen`` rebuilding it) is the same instance to a PACS. DICOM inputs only.
    derived_uids: bool = False

    def __post_init__(self) -> None:
        if self.seg_type not in SEG_TYPES:
            raise InputError(
                f"unknown SEG type {self.seg_type!r}", hint=f"use one of: {', '.join(SEG_TYPES)}"
            )
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


@dataclass(frozen=True)
class ExplainSettings:
    """The explanation one run computes, resolved from :class:`SegmentOptions` and the model.

    Attributes:
        method: a saliency method name.
        layer: CAM layer(s) or None (the method's default layer).
        target: ``segment``, ``border``, ``missed``, ``image`` or ``roi``.
        options: further method options (the model's, e.g. SmoothGrad's ``samples``).
        chosen_by: ``model default`` (``--explain auto``: the bundle's ``saliency`` section) or
            ``given`` (a method named by the caller); with the reason for a fallback, if any.
        roi: the user region as given (a box or a mask file), for the report; None otherwise.
        fallback: why the asked method was replaced (it needs layer hooks that a TorchScript
            network lacks) and by what, naming the methods that work; ``""`` when it was not.
    """

    method: str
    layer: str | None = None
    target: str = "segment"
    options: dict[str, Any] | None = None
    chosen_by: str = "given"
    roi: Sequence[int] | str | Path | None = None
    fallback: str = ""

    def describe(self) -> str:
        at = f" at {self.layer}" if self.layer else ""
        return f"{self.method}{at}, target {self.target}"


def resolve_explain(bundle: Any, opts: SegmentOptions) -> ExplainSettings | None:
    """What to explain with: ``opts.explain == "auto"`` takes the model's default method, layer,
    target and options (:class:`medxai.models.contract.SaliencySpec`); a named method takes its
    own default layer and the ``segment`` target. ``explain_layer``/``explain_target``/
    ``explain_roi`` override either. None when no saliency is asked for.

    A model whose network offers no layer hooks (TorchScript) and whose default needs them falls
    back to ``smoothgrad``, or to ``opts.explain_fallback`` (which also applies to a named
    Grad-CAM-family method; ``none``: no saliency); the report's saliency section says so
    (``fallback``, naming the methods that work).

    Raises:
        ExplainError: a layer for a method that reads none, ``roi`` without a region, a
            region together with another named target, or a named Grad-CAM-family method on a
            TorchScript network without ``explain_fallback`` (the message names the methods that
            work).
    """
    from medxai.models.contract import HOOK_FREE_METHODS, HOOK_METHODS

    if not opts.explain:
        return None
    contract = bundle.contract
    if opts.explain == "auto":
        spec = contract.saliency
        method, layer, target = spec.method, spec.layer, spec.target
        options = dict(spec.options)
        # a MONAI bundle without its own choice: the architecture's layer, or occlusion, and why
        chosen = f"model default: {spec.reason}" if spec.reason else "model default"
    else:
        method, layer, target, options, chosen = opts.explain, None, "segment", {}, "given"
    if opts.explain_layer:
        layer = opts.explain_layer
    fallback = ""
    if method in HOOK_METHODS and not contract.layer_hooks:
        instead = opts.explain_fallback or ("smoothgrad" if opts.explain == "auto" else None)
        if instead is None:
            contract.check_saliency_method(method)  # raises, naming the methods that work
        if instead not in (*HOOK_FREE_METHODS, "none"):
            raise ExplainError(
                f"explain fallback {instead!r} is not a method that works without layer hooks",
                hint=f"use one of {', '.join((*HOOK_FREE_METHODS, 'none'))}",
            )
        fallback = (
            f"{'the model default ' if opts.explain == 'auto' else ''}{method} needs layer hooks, "
            f"which the TorchScript network does not offer (methods that work: "
            f"{', '.join(contract.saliency_methods)}); "
            + ("no saliency" if instead == "none" else f"{instead} instead")
        )
        if instead == "none":
            return None
        method, layer, options = str(instead), None, {}
        chosen = f"{chosen}; {fallback}"
    if opts.explain_target:
        target = opts.explain_target
    if opts.explain_roi is not None:
        if opts.explain_target not in (None, "roi"):
            raise ExplainError(
                f"--target {opts.explain_target} and a user region (--roi-box/--roi-mask) were "
                "both given",
                hint="a user region is the region explained (--target roi); drop one of them",
            )
        target = "roi"
    elif target == "roi":
        raise ExplainError(
            "--target roi needs a region",
            hint="give --roi-box x0,y0,x1,y1[,z0,z1] or --roi-mask FILE",
        )
    if layer and method not in HOOK_METHODS:
        raise ExplainError(
            f"saliency method {method!r} reads no layer, but layer {layer!r} was given",
            hint=f"a layer applies to {', '.join(HOOK_METHODS)}",
        )
    return ExplainSettings(method, layer, target, options, chosen, opts.explain_roi, fallback)


def region_from_box(spatial: Sequence[int], box: Sequence[int]) -> torch.Tensor:
    """A boolean region ``(1, *spatial)`` on the input's grid from a box
    ``(x0, y0, x1, y1[, z0, z1])``: pixel (voxel) indices of the input's array axes (medxai reads
    pictures and DICOM as ``(C, column, row[, slice])``, so x is the column, y the row), starts
    inclusive, stops exclusive. A 2D box on a one-slice volume covers its slice.

    Raises:
        ExplainError: wrong number of values, or an empty box / one outside the image.
    """
    from medxai.explain import box_region

    values = [int(v) for v in box]
    nd = len(spatial)
    if nd == 3 and len(values) == 4 and spatial[2] == 1:
        values = values + [0, 1]
    if len(values) != 2 * nd:
        raise ExplainError(
            f"a box on this {nd}D image needs {2 * nd} values, got {len(values)}: {list(box)}",
            hint="x0,y0,x1,y1 for a picture, x0,y0,x1,y1,z0,z1 for a volume",
        )
    if nd == 2:
        x0, y0, x1, y1 = values
        starts, stops = [x0, y0], [x1, y1]
    else:
        x0, y0, x1, y1, z0, z1 = values
        starts, stops = [x0, y0, z0], [x1, y1, z1]
    return box_region(tuple(spatial), starts + stops)[None]


def region_from_mask_file(path: str | Path, spatial: Sequence[int]) -> torch.Tensor:
    """A boolean region ``(1, *spatial)`` from a mask file (picture, NIfTI, ...; non-zero is
    inside) on the input's grid.

    Raises:
        InputError: the file cannot be read, or its grid differs from the input's.
    """
    from medxai.io.readers import read_image

    mask = read_image(path).as_subclass(torch.Tensor)
    if mask.shape[0] > 1:  # an RGB(A) picture
        mask = mask[:1]
    if tuple(mask.shape[1:]) != tuple(spatial):
        raise InputError(
            f"region mask has grid {tuple(mask.shape[1:])}, the input {tuple(spatial)}",
            path=path,
            hint="give a mask on the input's grid (same size as the image)",
        )
    region = mask != 0
    if not region.any():
        raise InputError("region mask is empty (no non-zero pixel)", path=path)
    return region


def left_out_region(
    bundle: Any, pred: Prediction, label: int, low: float = 0.1
) -> tuple[torch.Tensor, dict[str, int]]:
    """What the segmentation left out of ``label``, on the input's grid: the components that
    post-processing removed (kept by the threshold/argmax, dropped by e.g. largest-component
    clean-up) and the pixels whose probability is at least ``low`` but below the cut.

    Returns:
        ``(region (1, *spatial) bool, {"removed_by_postprocessing": n, "below_threshold": m})``.
    """
    prob = pred.probabilities[label]
    final = pred.labels[0] == label
    threshold = bundle.contract.inference.threshold
    if threshold is not None and pred.probabilities.shape[0] == 2:
        raw = prob > threshold
    else:
        raw = pred.probabilities.argmax(dim=0) == label
    removed = raw & ~final
    below = (prob >= low) & ~raw & ~final
    counts = {"removed_by_postprocessing": int(removed.sum()), "below_threshold": int(below.sum())}
    return (removed | below)[None], counts


def _region_on_model_grid(
    bundle: Any, image: torch.Tensor, region: torch.Tensor, shape: Sequence[int]
) -> torch.Tensor:
    """A boolean input-grid region ``(1, *spatial)`` brought onto the model grid ``shape`` by the
    chain that brings the image there (:func:`medxai.preprocessing.bundle_model_grid`: 2D model
    on a one-slice volume: the slice; 3D: reoriented to RAS; then resized), ``(*shape)`` bool."""
    from monai.data import MetaTensor

    from medxai.preprocessing.model_grid import bundle_model_grid, to_model_grid

    like = MetaTensor(region.float(), affine=getattr(image, "affine", torch.eye(4)))
    r, _ = to_model_grid(bundle_model_grid(bundle, shape, kind="region"), like)
    out = r[0] >= 0.5
    if not out.any():  # a region smaller than a model pixel: keep its nearest pixel
        flat = int(r[0].flatten().argmax())
        out.view(-1)[flat] = True
    return out


def compute_saliency(
    bundle: ModelBundle,
    loaded: LoadedImage,
    method: str,
    label: int,
    device: torch.device,
    roi_size: Sequence[int] | None = None,
    overlap: float | None = None,
    *,
    layer: str | None = None,
    target: str = "segment",
    region: torch.Tensor | None = None,
    sign: int | None = None,
    options: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Saliency ``(1, I, J[, K])`` of ``label`` on the input's grid, in [0, 1].

    Whole-image models are explained on the model's input grid and the map is resized back like
    the prediction; sliding-window models are explained window by window and blended
    (:func:`medxai.explain.sliding_window_saliency`).

    Args:
        layer: CAM layer(s) (None: the method's default).
        target: a named region (``segment``, ``border``, ``missed``: the network's pixels just
            below the cut, ``image``) or ``roi`` with ``region``.
        region: a boolean ``(1, *spatial)`` region on the *input's* grid (a user box or mask,
            or :func:`left_out_region`), brought onto the model grid here.
        sign: +1 evidence for the label, -1 against (None: -1 for ``missed``, else +1).
        options: further method options.
    """
    from medxai.explain import SegmentationTarget

    extra = dict(options or {})
    if layer:
        extra["layer"] = layer
    runner = runner_for(bundle)
    contract = bundle.contract
    contract.check_saliency_method(method)
    if region is not None and not runner.regions:
        raise ExplainError(
            f"a user or left-out region is not supported for MONAI bundles yet "
            f"(model {bundle.name!r})",
            hint="use --target segment, border or image with this model",
        )
    x, state = runner.model_input(loaded.image)
    if region is not None:
        model_region = _region_on_model_grid(bundle, loaded.image, region, x.shape[2:])
        question = SegmentationTarget(label, model_region, sign=sign)
    else:
        question = SegmentationTarget(
            label, target, threshold=contract.inference.threshold, sign=sign
        )
    window = (roi_size, overlap)
    with network_on(bundle.network, device) as net:
        sal = _saliency_on_model_grid(bundle, net, x.to(device), method, question, window, extra)
    return runner.to_input_grid(sal[0].detach().float().cpu(), state).clamp(0, 1)


def _saliency_on_model_grid(
    bundle: ModelBundle,
    net: torch.nn.Module,
    x: torch.Tensor,
    method: str,
    question: Any,
    window: tuple[Sequence[int] | None, float | None],
    extra: dict[str, Any],
) -> torch.Tensor:
    """Saliency ``(1, 1, *model_spatial)`` of ``question`` on the model-grid input ``x``, the
    network applied as the model applies it (:attr:`InferenceSpec.tiling`): in one pass,
    window by window blended as the inference blends, or slice by slice."""
    from medxai.explain import explain as run_explain
    from medxai.explain import sliding_window_saliency

    spec = bundle.contract.inference
    if spec.tiling == "sliding":
        roi_size, overlap = window
        return sliding_window_saliency(
            net,
            x,
            method,
            roi_size=list(roi_size or spec.roi_size or x.shape[2:]),
            overlap=float(overlap if overlap is not None else spec.overlap),
            mode=spec.blend_mode,  # blended as the inference blends
            target=question,
            **extra,
        )
    if spec.tiling == "slices":
        axis = 2 + int(getattr(getattr(bundle, "inferer", None), "spatial_dim", 0))
        return torch.stack(
            [
                run_explain(net, x.select(axis, k), method=method, target=question, **extra)
                .detach()
                .cpu()
                for k in range(x.shape[axis])
            ],
            dim=axis,
        )
    if isinstance(question.region, torch.Tensor):  # a user region goes where the network runs
        question = dataclasses.replace(question, region=question.region.to(x.device))
    return run_explain(net, x, method=method, target=question, **extra)


def _user_region(loaded: LoadedImage, roi: Sequence[int] | str | Path) -> torch.Tensor:
    """The user's region ``(1, *spatial)`` on the input's grid: a box or a mask file."""
    spatial = tuple(loaded.image.shape[1:])
    if isinstance(roi, (str, Path)):
        return region_from_mask_file(roi, spatial)
    return region_from_box(spatial, roi)


def saliency_forward(bundle: ModelBundle, opts: SegmentOptions, device: torch.device) -> Any:
    """A :class:`medxai.explain.KeptForward` for ``predict(identity_forward=...)`` when the
    saliency that ``opts`` ask for can come from the prediction's own identity view: a CAM method
    (Grad-CAM family) of a medxai whole-image model, target ``segment``, ``border`` or ``image``
    (no user region), on a device without mixed precision (the saliency's pass runs in float32
    as on its own). Then the saliency costs its backward pass only. None otherwise."""
    from medxai.explain import CAM_METHODS, KeptForward

    settings = resolve_explain(bundle, opts)
    contract = getattr(bundle, "contract", None)
    if (
        settings is None
        or settings.method not in CAM_METHODS
        or settings.target not in ("segment", "border", "image")
        or settings.roi is not None
        or set(settings.options or {}) - {"normalize"}
        or contract is None
        or not runner_for(bundle).keeps_forward
        or device.type == "cuda"
    ):
        return None
    return KeptForward(bundle.network, settings.layer)


def _kept_saliency(
    bundle: ModelBundle,
    kept: Any,
    index: int,
    settings: ExplainSettings,
    label: int,
    state: Any,
) -> torch.Tensor:
    """:func:`compute_saliency` of image ``index`` of the kept forward pass ``kept``: the same
    map, from a backward pass (one per label for the whole batch, kept for its other images),
    brought back onto the image by ``state`` (the prediction's ``grid``, else the runner's
    :meth:`~medxai.inference.ModelRunner.model_input`'s, made once per image)."""
    if label not in kept.maps:
        from medxai.explain import SegmentationTarget

        threshold = bundle.contract.inference.threshold
        question = SegmentationTarget(label, settings.target, threshold=threshold)
        normalize = bool((settings.options or {}).get("normalize", True))
        kept.maps[label] = kept.saliency(settings.method, question, normalize)
    sal = kept.maps[label][index].detach().float().cpu()
    return runner_for(bundle).to_input_grid(sal, state).clamp(0, 1)


def saliency_maps(
    bundle: ModelBundle,
    loaded: LoadedImage,
    opts: SegmentOptions,
    device: torch.device,
    prediction: Prediction | None = None,
    kept: Any = None,
    index: int = 0,
) -> dict[int, torch.Tensor]:
    """One saliency map ``(1, *spatial)`` per foreground label, on the input's grid, as
    ``opts`` and the model say (:func:`resolve_explain`); empty when no saliency is asked for.

    ``kept``: the :func:`saliency_forward` that ran as the prediction's identity view (of a
    batch of images, this one at ``index``): the maps come from its backward passes, the same
    maps as without it.

    The ``missed`` target needs ``prediction``: its region is what the segmentation left out
    (:func:`left_out_region`: components removed by post-processing and pixels just below the
    cut); a label with nothing left out gets no map.

    Raises:
        ExplainError: the settings do not fit (see :func:`resolve_explain`), ``missed`` without
            a prediction, or nothing was left out of any label.
    """
    settings = resolve_explain(bundle, opts)
    if settings is None:
        return {}
    user = _user_region(loaded, settings.roi) if settings.roi is not None else None
    if settings.target == "missed" and prediction is None:
        raise ExplainError("the missed target needs the prediction (what it left out)")
    maps: dict[int, torch.Tensor] = {}
    nothing: list[str] = []
    state: Any = None
    for lab in bundle.foreground_labels:
        value = int(lab["value"])
        region, sign = user, None
        if settings.target == "missed":
            assert prediction is not None
            region, counts = left_out_region(bundle, prediction, value)
            sign = -1
            if not region.any():
                nothing.append(f"{lab.get('name', value)} ({value})")
                continue
        if kept is not None and kept.ran:
            if state is None:  # the grid's inversion, the same for every label of this image
                state = prediction.grid if prediction is not None else None
            if state is None:
                _, state = runner_for(bundle).model_input(loaded.image)
            maps[value] = _kept_saliency(bundle, kept, index, settings, value, state)
            continue
        maps[value] = compute_saliency(
            bundle,
            loaded,
            settings.method,
            value,
            device,
            opts.roi_size,
            opts.overlap,
            layer=settings.layer,
            target=settings.target,
            region=region,
            sign=sign,
            options=settings.options,
        )
    if not maps and nothing:
        raise ExplainError(
            f"nothing was left out of {', '.join(nothing)}: no component was removed by "
            "post-processing and no pixel is just below the threshold (probability >= 0.1)",
            hint="there is no 'why not here?' to explain for this image; use --target segment "
            "or border, or a --roi-box",
        )
    return maps


def _informativeness(
    sal: torch.Tensor, pred: Prediction, value: int, region: torch.Tensor | None
) -> dict[str, Any]:
    """How much the written map says beyond the mask, on the input grid (report.json)."""
    from medxai.explain import energy_in_mask, informativeness

    s = sal[None].float()
    mask = (pred.labels == value)[None]
    scores = informativeness(s, pred.probabilities[value][None, None], mask, with_complexity=False)
    keys = ("energy_in_mask", "corr_mask", "corr_probability", "context_share", "sparseness")
    out: dict[str, Any] = {k: float(scores[k][0]) for k in keys}
    if region is not None:
        out["energy_in_region"] = float(energy_in_mask(s, region[None])[0])
        out["region_share"] = float(region.float().mean())
    return {k: (round(v, 4) if v == v else None) for k, v in out.items()}


def _saliency_header(bundle: ModelBundle, settings: ExplainSettings | None) -> dict[str, Any]:
    """report.json's ``saliency`` without its measures: what was explained (method, layer,
    target, region, who chose it). Needs the network (the default CAM layer's name)."""
    if settings is None:
        return {"method": None}
    from medxai.explain import default_target_layer

    layer = settings.layer
    if layer is None and settings.method in ("gradcam", "gradcampp", "hirescam", "layercam"):
        layer = f"{default_target_layer(bundle.network)} (default)"
    info: dict[str, Any] = {
        "method": settings.method,
        "layer": layer,
        "target": settings.target,
        "options": dict(settings.options or {}),
        "chosen_by": settings.chosen_by,
        **({"fallback": settings.fallback} if settings.fallback else {}),
        "region": None,
        "labels": {},
    }
    if settings.roi is not None:
        roi = settings.roi
        info["region"] = (
            {"mask_file": str(roi)} if isinstance(roi, (str, Path)) else {"box": list(roi)}
        )
    return info


def _saliency_measures(
    header: dict[str, Any],
    bundle: ModelBundle,
    loaded: LoadedImage,
    pred: Prediction,
    settings: ExplainSettings | None,
    maps: dict[int, torch.Tensor],
) -> dict[str, Any]:
    """report.json's ``saliency``: ``header`` (:func:`_saliency_header`) with, per label, how
    much the written map says beyond the mask (:func:`_informativeness`: correlation with the
    mask and the probability, context share outside the mask, sparseness, energy in the mask
    and in the region). Needs no network: the write stage runs it, off the network's thread."""
    if settings is None:
        return dict(header)
    info = {**header, "labels": {}}
    user = _user_region(loaded, settings.roi) if settings.roi is not None else None
    for lab in bundle.foreground_labels:
        value = int(lab["value"])
        region = user
        entry: dict[str, Any] = {}
        if settings.target == "missed":
            region, counts = left_out_region(bundle, pred, value)
            entry["left_out_pixels"] = counts
        if value in maps:
            entry.update(_informativeness(maps[value], pred, value, region))
        else:
            entry["map"] = None
            entry["reason"] = "nothing was left out of this label"
        info["labels"][str(value)] = entry
    # kept for readers of the earlier report layout
    info["energy_in_mask"] = {
        k: v.get("energy_in_mask") for k, v in info["labels"].items() if "energy_in_mask" in v
    }
    return info


def _report(
    loaded: LoadedImage,
    bundle: ModelBundle,
    pred: Prediction,
    device: torch.device | str,
    saliency_info: dict[str, Any],
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
            # segment --channels: one file per channel, in order (path and sha256: the first)
            **({"channel_files": loaded.extra["channels"]} if "channels" in loaded.extra else {}),
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
        "saliency": saliency_info,
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "files": files,
    }


# ---------------------------------------------------------------------------------------------
# the stages: predict (network), explain (network), write (no network; any process)
# ---------------------------------------------------------------------------------------------


@dataclass
class Predicted:
    """What the predict stage made of one input (plain, picklable data).

    Attributes:
        prediction: the segmentation on the input's grid.
        samples: the uncertainty samples (TTA views or MC dropout passes) the write stage turns
            into the uncertainty map and quality scores; None without uncertainty.
        uncertainty: the uncertainty method (None: none) and why it was chosen.
        timings: ``predict`` (and ``uncertainty``: the extra passes) in seconds.
    """

    prediction: Prediction
    samples: Samples | None = None
    uncertainty: str | None = None
    uncertainty_reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Explained:
    """What the explain stage made: one saliency map per foreground label on the input's grid,
    the method, and the head of report.json's ``saliency`` section (what was explained; the
    write stage adds the maps' measures, :func:`_saliency_measures`, off the network's
    thread); picklable."""

    maps: dict[int, torch.Tensor]
    method: str | None
    info: dict[str, Any]
    seconds: float | None = None
    settings: ExplainSettings | None = None


@dataclass
class WriteTask:
    """Everything the write stage needs, with no network: it can be pickled to a writer
    process, which loads no model (``model`` is :func:`writer_model` of the bundle)."""

    loaded: LoadedImage
    model: ModelBundle
    out_root: Path
    name: str
    formats: list[str]
    options: SegmentOptions
    predicted: Predicted
    explained: Explained
    device: str
    choice: dict[str, Any] | None = None
    #: the seed of the DICOM objects' derived UIDs (:func:`result_uid_seed`); None: random
    uid_seed: str | None = None


def writer_model(bundle: ModelBundle) -> ModelBundle:
    """What the writers read of a model (name, version, weights, labels, config) without its
    network: small and picklable."""
    return ModelBundle(
        config=bundle.config,
        metadata=bundle.metadata,
        network=torch.nn.Identity(),
        path=bundle.path,
    )


def uncertainty_samples(
    bundle: ModelBundle,
    loaded: LoadedImage,
    pred: Prediction,
    method: str | None,
    device: torch.device,
    opts: SegmentOptions,
    views: SampleAccumulator | None = None,
) -> Samples | None:
    """The network's part of the uncertainty: the TTA views ``views`` collected while
    predicting (run again when there are none), or the MC dropout passes; None for none."""
    if method is None:
        return None
    if method == "tta":
        if views is None or len(views) == 0:
            views = tta_accumulator(bundle)
            predict(
                bundle,
                loaded.image,
                device=device,
                tta=opts.tta,
                roi_size=opts.roi_size,
                overlap=opts.overlap,
                sw_batch_size=opts.sw_batch_size,
                each_view=ViewCollector([views]),
            )
        return views.finish("tta")
    if method == "mc-dropout":
        from medxai.uncertainty import mc_dropout_samples  # looked up at call time

        return mc_dropout_samples(
            bundle,
            loaded.image,
            device,
            samples=opts.mc_samples,
            seed=opts.mc_seed,
            roi_size=opts.roi_size,
            overlap=opts.overlap,
            sw_batch_size=opts.sw_batch_size,
        )
    raise InputError(
        f"unknown uncertainty method {method!r}", hint="use one of tta, mc-dropout, none"
    )


def predict_stage(
    loaded: LoadedImage,
    bundle: ModelBundle,
    opts: SegmentOptions,
    device: torch.device,
    *,
    prediction: Prediction | None = None,
    views: SampleAccumulator | None = None,
    progress: ProgressFn | None = None,
    name: str = "",
    kept: Any = None,
) -> Predicted:
    """Stage 1 (needs the network): the prediction (``prediction`` when made elsewhere, e.g. in
    a batch) and the uncertainty samples (the TTA ``views`` it collected, or the MC dropout
    passes). ``kept``: a :func:`saliency_forward` that the prediction's identity view runs
    (then the explain stage costs only its backward pass)."""
    timings: dict[str, float] = {}
    method, reason = uncertainty_method(bundle, opts.uncertainty, opts.tta)
    if views is None and method == "tta" and prediction is None:
        views = tta_accumulator(bundle)
    if prediction is None:
        if progress:
            progress(f"{name}: predicting on {device}")
        t = time.perf_counter()
        prediction = predict(
            bundle,
            loaded.image,
            device=device,
            roi_size=opts.roi_size,
            overlap=opts.overlap,
            sw_batch_size=opts.sw_batch_size,
            tta=opts.tta,
            source=str(loaded.path),
            each_view=ViewCollector([views]) if views is not None else None,
            identity_forward=kept,
        )
        timings["predict"] = time.perf_counter() - t
    else:
        timings["predict"] = prediction.seconds
    t = time.perf_counter()
    samples = uncertainty_samples(bundle, loaded, prediction, method, device, opts, views)
    if method is not None:
        timings["uncertainty"] = time.perf_counter() - t
    return Predicted(prediction, samples, method, reason, timings)


def explain_stage(
    loaded: LoadedImage,
    bundle: ModelBundle,
    opts: SegmentOptions,
    device: torch.device,
    prediction: Prediction,
    *,
    maps: dict[int, torch.Tensor] | None = None,
    progress: ProgressFn | None = None,
    name: str = "",
    kept: Any = None,
) -> Explained:
    """Stage 2 (needs the network): the saliency maps (``maps`` when made elsewhere; from the
    ``kept`` forward pass of the predict stage when there is one) and the report's
    ``saliency`` section."""
    settings = resolve_explain(bundle, opts)
    seconds = None
    if settings is None:
        maps = {}
    elif maps is None:
        if progress:
            progress(f"{name}: explaining with {settings.describe()}")
        t = time.perf_counter()
        maps = saliency_maps(bundle, loaded, opts, device, prediction, kept)
        if kept is not None:
            kept.release()
        seconds = time.perf_counter() - t
    header = _saliency_header(bundle, settings)
    return Explained(maps, settings.method if settings else None, header, seconds, settings)


def write_task(
    loaded: LoadedImage,
    bundle: ModelBundle,
    out_root: str | Path,
    name: str,
    opts: SegmentOptions,
    predicted: Predicted,
    explained: Explained,
    device: torch.device,
    choice: ModelChoice | None = None,
) -> WriteTask:
    """The input of :func:`write_stage` (picklable; the model without its network)."""
    formats = list(opts.formats or default_formats(loaded))
    return WriteTask(
        loaded=loaded,
        model=writer_model(bundle),
        out_root=Path(out_root),
        name=name,
        formats=formats,
        options=opts,
        predicted=predicted,
        explained=explained,
        device=str(device),
        choice=choice.to_dict() if choice is not None else None,
        uid_seed=result_uid_seed(loaded, bundle, opts, formats) if opts.derived_uids else None,
    )


def write_stage(task: WriteTask, progress: ProgressFn | None = None) -> SegmentResult:
    """Stage 3 (no network; any thread or process): the uncertainty map and scores from the
    samples, the saliency maps' measures, then the result folder (written atomically) with its
    report."""
    loaded, bundle, opts = task.loaded, task.model, task.options
    pred = task.predicted.prediction
    timings: dict[str, float] = dict(task.predicted.timings)
    uncertainty = None
    samples = task.predicted.samples
    if samples is not None:
        t = time.perf_counter()
        seed = opts.mc_seed if samples.method == "mc-dropout" else None
        uncertainty = summarise(samples, pred, seed=seed)
        timings["uncertainty"] = timings.get("uncertainty", 0.0) + time.perf_counter() - t
    if task.explained.seconds is not None:
        timings["explain"] = task.explained.seconds
    formats = task.formats
    report: dict[str, Any] = {}
    ex = task.explained
    saliency_info = _saliency_measures(ex.info, bundle, loaded, pred, ex.settings, ex.maps)

    def finish(tmp: Path, written: ResultFolder) -> None:
        timings.update(written.timings)
        report.update(
            _report(
                loaded,
                bundle,
                pred,
                task.device,
                saliency_info,
                timings,
                written.files,
                _digest(loaded),
            )
        )
        report["skipped_outputs"] = written.skipped
        report.update(_uncertainty_report(uncertainty, task.predicted.uncertainty_reason))
        report["model"]["choice"] = task.choice or {
            "chosen": bundle.name,
            "reason": "given with --model",
        }
        if "json" in formats:
            from medxai.io.writers import write_report_json

            write_report_json(report, tmp / "report.json")
            written.files.append("report.json")
            report["files"] = written.files

    written = write_result_folder(
        task.out_root,
        task.name,
        loaded,
        bundle,
        pred,
        task.explained.maps,
        formats,
        uid_seed=task.uid_seed,
        overwrite=opts.overwrite,
        finish=finish,
        seg_type=opts.seg_type,
        split_labels=opts.split_labels,
        method=task.explained.method,
        uncertainty=uncertainty,
    )
    final = task.out_root / task.name
    if progress:
        progress(f"{task.name}: wrote {len(written.files)} file(s) to {final}")
    return SegmentResult(
        input=str(loaded.path), output_dir=final, files=written.files, report=report
    )


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
    views: SampleAccumulator | None = None,
) -> SegmentResult:
    """Segment (and explain) an image already read, writing its output folder under
    ``out_root``: :func:`predict_stage`, :func:`explain_stage`, :func:`write_stage` in this
    thread. See :func:`segment_path`. A ``prediction`` made elsewhere is used instead of
    predicting again, and so are ``saliency`` maps made elsewhere (:func:`saliency_maps`) and
    the test-time augmentation ``views`` that prediction collected
    (:func:`medxai.uncertainty.tta_accumulator`; without them a given prediction's TTA
    uncertainty runs the views again)."""
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
    device = resolve_device(opts.device)
    # the saliency's forward pass is the prediction's identity view (then only its backward runs)
    kept = (
        saliency_forward(bundle, opts, device) if prediction is None and saliency is None else None
    )
    predicted = predict_stage(
        loaded,
        bundle,
        opts,
        device,
        prediction=prediction,
        views=views,
        progress=say,
        name=name,
        kept=kept,
    )
    explained = explain_stage(
        loaded,
        bundle,
        opts,
        device,
        predicted.prediction,
        maps=saliency,
        progress=say,
        name=name,
        kept=kept,
    )
    task = write_task(loaded, bundle, out_root, name, opts, predicted, explained, device, choice)
    return write_stage(task, say)


#: options that do not change what a result holds (left out of :func:`result_uid_seed`)
_NOT_IN_RESULT = ("device", "sw_batch_size", "overwrite", "derived_uids")


def result_uid_seed(
    loaded: LoadedImage, bundle: ModelBundle, opts: SegmentOptions, formats: Sequence[str]
) -> str | None:
    """What a result's derived UIDs are made from: the SOP Instance UIDs of its DICOM source,
    the model (name, version, weights hash, config digest), medxai's version, the output
    formats and every option that changes the result (not the device, the window batch size or
    ``overwrite``: a result rebuilt on another device keeps its UIDs). None for an input that is not DICOM (its
    placeholder study gets new UIDs each run, so nothing stable names it)."""
    if loaded.dicom is None:
        return None
    options = {
        f.name: getattr(opts, f.name)
        for f in dataclasses.fields(opts)
        if f.name not in _NOT_IN_RESULT and f.name != "formats"
    }
    return json.dumps(
        {
            "sources": sorted(str(ds.get("SOPInstanceUID", "")) for ds in loaded.dicom.datasets),
            "frames": list(loaded.dicom.frame_numbers or []),
            "model": [bundle.name, str(bundle.version), bundle.weights_sha256],
            # a config edited without a new version (threshold, clean-up, saliency) is another
            # result: the config's digest is part of the seed
            "config": hashlib.sha256(
                json.dumps(bundle.config, sort_keys=True, default=str).encode()
            ).hexdigest(),
            "medxai": __version__,
            "formats": sorted(formats),
            "options": options,
        },
        sort_keys=True,
        default=str,
    )


def _uncertainty_report(uncertainty: Uncertainty | None, reason: str) -> dict[str, Any]:
    """report.json's ``uncertainty`` and ``quality`` sections (with the reason when none)."""
    if uncertainty is None:
        return {
            "uncertainty": {"method": None, "reason": reason},
            "quality": {"score": None, "reason": f"no uncertainty map: {reason}"},
        }
    return {
        "uncertainty": {**uncertainty.report(), "reason": reason},
        "quality": {
            "score": uncertainty.quality_score,
            "definition": QUALITY_DEFINITION,
            "scores": {
                k: (round(v, 6) if v is not None else None)
                for k, v in uncertainty.scores.items()
                if k != "quality_score"
            },
        },
    }


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
    with held_network(bundle if len(paths) > 1 else None, opts.device):
        return [
            segment_path(p, bundle, output, opts, name=output_name(p) + suffix, volume=index)
            for p in paths
            for index, suffix in input_volumes(p)
        ]


def held_network(
    bundle: ModelBundle | None, device: str | torch.device
) -> contextlib.AbstractContextManager[Any]:
    """A block in which ``bundle``'s network is held ready on ``device`` for every image that
    runs inside it (:func:`medxai.inference.network_on`: eval mode, device and memory layout
    set up once, not once per image); nothing for no bundle (a model chosen per input) or a
    device that cannot be used (each image then reports that error as it would alone)."""
    if bundle is None:
        return contextlib.nullcontext()
    try:
        dev = resolve_device(device)
    except MedxaiError:
        return contextlib.nullcontext()
    return network_on(bundle.network, dev)


def unique_names(paths: Sequence[str | Path]) -> list[str]:
    """Output names for several inputs; repeated stems get ``_2``, ``_3``, ... suffixes."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        base = output_name(p)
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names
