"""The typed model contract: what a model takes, how it is run and what it gives, parsed once.

A :class:`ModelContract` is built when a bundle is loaded, whichever form the bundle has
(medxai's own ``configs/inference.json`` or a MONAI model-zoo bundle), and is frozen. Inference,
saliency and the CLI read it instead of re-reading raw config dicts, so each default (the
sliding-window overlap, the inference mode, ...) lives here once.

This module is torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medxai.choices import SALIENCY_METHODS, SALIENCY_TARGETS
from medxai.errors import ExplainError, ModelError

__all__ = [
    "DEFAULT_OVERLAP",
    "DEFAULT_SW_BATCH_SIZE",
    "DEFAULT_BLEND_MODE",
    "INFERENCE_MODES",
    "HOOK_METHODS",
    "HOOK_FREE_METHODS",
    "LabelSpec",
    "InputSpec",
    "InferenceSpec",
    "GridSpec",
    "SaliencySpec",
    "saliency_spec_from_config",
    "ModelContract",
    "contract_from_medxai_config",
]

#: Sliding-window defaults (MONAI's ``SlidingWindowInferer`` defaults are 0.25 and 1; medxai's
#: own bundles have always used a batch of 4 windows).
DEFAULT_OVERLAP = 0.25
DEFAULT_SW_BATCH_SIZE = 4
DEFAULT_BLEND_MODE = "gaussian"
#: ``whole_image``/``sliding_window``: medxai's own inference; ``monai``: the bundle's own
#: preprocessing, inferer and postprocessing (MONAI model-zoo bundles).
INFERENCE_MODES = ("whole_image", "sliding_window", "monai")
#: Saliency methods that need forward/backward hooks on a named layer (not on TorchScript).
HOOK_METHODS = ("gradcam", "gradcampp", "hirescam", "layercam")
#: Saliency methods that need only the network's input and output.
HOOK_FREE_METHODS = ("smoothgrad", "occlusion", "ig")


@dataclass(frozen=True)
class LabelSpec:
    """One output label: its value in the label map, name and display colour (RGB 0-255)."""

    value: int
    name: str
    color: tuple[int, int, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "name": self.name}
        if self.color is not None:
            out["color"] = list(self.color)
        return out


@dataclass(frozen=True)
class InputSpec:
    """What the network takes: spatial dims (2 or 3), channels, the DICOM modalities it was made
    for (empty: any) and the channels' names in order (e.g. ``T1c, T1, T2, FLAIR``)."""

    spatial_dims: int
    channels: int
    modalities: tuple[str, ...] = ()
    channel_names: tuple[str, ...] = ()

    def describe(self) -> str:
        names = f" ({', '.join(self.channel_names)})" if self.channel_names else ""
        mods = f", modality {'/'.join(self.modalities)}" if self.modalities else ""
        return f"{self.spatial_dims}D, {self.channels} channel(s){names}{mods}"


@dataclass(frozen=True)
class InferenceSpec:
    """How the network is run.

    Attributes:
        mode: one of :data:`INFERENCE_MODES`.
        roi_size: sliding-window size in voxels (None: whole image / the bundle's inferer).
        overlap: sliding-window overlap fraction.
        sw_batch_size: windows per forward pass.
        blend_mode: window blending (``gaussian`` or ``constant``).
        tta: test-time augmentation (``none``, ``flips``, ``dihedral``; sliding-window
            models: ``flips``).
        tta_axes: the model-grid axes ``flips`` mirrors (None: every axis), e.g. ``(0,)``
            (left-right in RAS) for labels that mean anterior/posterior.
        tta_sizes: extra input sizes of multi-scale TTA.
        threshold: foreground probability cut of binary models (None: argmax).
        inferer: the MONAI inferer class name (MONAI bundles), else ``""``.
        amp: the bundle asks for mixed precision (honoured on CUDA only).
    """

    mode: str = "whole_image"
    roi_size: tuple[int, ...] | None = None
    overlap: float = DEFAULT_OVERLAP
    sw_batch_size: int = DEFAULT_SW_BATCH_SIZE
    blend_mode: str = DEFAULT_BLEND_MODE
    tta: str = "none"
    tta_axes: tuple[int, ...] | None = None
    tta_sizes: tuple[tuple[int, ...], ...] = ()
    threshold: float | None = None
    inferer: str = ""
    amp: bool = False

    @property
    def tiling(self) -> str:
        """How the network meets the model-grid input: ``whole`` (one pass), ``sliding``
        (MONAI's sliding window) or ``slices`` (a 2D network over a volume's slices)."""
        if self.inferer == "SliceInferer":
            return "slices"
        if self.inferer == "SlidingWindowInferer" or self.mode == "sliding_window":
            return "sliding"
        return "whole"


@dataclass(frozen=True)
class SaliencySpec:
    """The model's default explanation: what ``--explain auto`` (the CLI default of ``segment``,
    ``explain``, ``batch`` and ``listen``) computes.

    Read from the bundle config's ``saliency`` section (``configs/inference.json``), e.g.
    ``{"method": "hirescam", "layer": "encoder.2", "target": "segment"}``; a bundle without one
    gets Seg-Grad-CAM at the default layer on the segment. The bundled models' values were chosen
    by measurement on their validation data (docs/explainability.md, benchmarks/saliency_choice.py).

    Attributes:
        method: a name of :data:`medxai.choices.SALIENCY_METHODS`.
        layer: CAM layer name or role alias (``encoder.2``, ``skip.0``...); None: the method's
            default (:func:`medxai.explain.default_target_layer`).
        target: a region of :data:`medxai.choices.SALIENCY_TARGETS`.
        options: further method options (e.g. ``{"samples": 4}`` for ``smoothgrad``).
        measured: where the choice was measured (free text for reports), ``""`` when it was not.
        reason: why medxai chose this default when the bundle does not name one (MONAI bundles:
            the architecture's Grad-CAM layer, or a gradient-free method), ``""`` otherwise.
    """

    method: str = "gradcam"
    layer: str | None = None
    target: str = "segment"
    options: Mapping[str, Any] = field(default_factory=dict)
    measured: str = ""
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "layer": self.layer,
            "target": self.target,
            "options": dict(self.options),
            "measured": self.measured,
            **({"reason": self.reason} if self.reason else {}),
        }


def saliency_spec_from_config(section: Any, where: str = "saliency") -> SaliencySpec:
    """Parse and check a bundle's ``saliency`` section (``None``: the plain default).

    Raises:
        ModelError: not an object, an unknown key, method or target, or a layer that is not text.
    """
    if section is None:
        return SaliencySpec()
    if not isinstance(section, Mapping):
        raise ModelError(f"{where} must be an object, got {type(section).__name__}")
    known = {"method", "layer", "target", "options", "measured"}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ModelError(
            f"{where} has unknown key(s) {unknown}", hint=f"known keys: {', '.join(sorted(known))}"
        )
    method = section.get("method", "gradcam")
    if method not in SALIENCY_METHODS:
        raise ModelError(
            f"{where}.method is {method!r}", hint=f"use one of {', '.join(SALIENCY_METHODS)}"
        )
    target = section.get("target", "segment")
    if target not in SALIENCY_TARGETS:
        raise ModelError(
            f"{where}.target is {target!r}", hint=f"use one of {', '.join(SALIENCY_TARGETS)}"
        )
    layer = section.get("layer")
    if layer is not None and (not isinstance(layer, str) or not layer.strip()):
        raise ModelError(f"{where}.layer is {layer!r}", hint="a layer name or role, e.g. encoder.2")
    if layer is not None and method not in HOOK_METHODS:
        raise ModelError(
            f"{where}.layer is set but {method!r} reads no layer",
            hint=f"a layer applies to {', '.join(HOOK_METHODS)}; remove it",
        )
    options = section.get("options") or {}
    if not isinstance(options, Mapping):
        raise ModelError(f"{where}.options must be an object, got {options!r}")
    return SaliencySpec(
        method=str(method),
        layer=layer,
        target=str(target),
        options=dict(options),
        measured=str(section.get("measured", "")),
    )


@dataclass(frozen=True)
class GridSpec:
    """How medxai brings an input onto a medxai-form model's grid
    (:func:`medxai.preprocessing.bundle_model_grid`; MONAI bundles run their own chain):

    Attributes:
        spatial_size: a whole-image model's input size.
        spacing: a sliding-window model's voxel size in mm (None: the input's voxels).
        intensity: ``preprocessing.intensity`` (``kind`` ``scale``/``zscore``/``none``, ...).
    """

    spatial_size: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    intensity: Mapping[str, Any] = field(default_factory=lambda: {"kind": "none"})


@dataclass(frozen=True)
class ModelContract:
    """A frozen, typed description of a model bundle.

    Attributes:
        name, version: from the bundle's metadata.
        form: ``medxai`` (medxai's own bundle) or ``monai`` (a MONAI model-zoo bundle).
        weights: ``state_dict`` (``models/model.pt``) or ``torchscript`` (``models/model.ts``).
        network: the network's class name (e.g. ``UNet``).
        input: :class:`InputSpec`.
        preprocessing: the steps onto the model grid, in order, as short descriptions.
        inference: :class:`InferenceSpec`.
        postprocessing: the steps after the network, in order, as short descriptions.
        labels: the label map's labels (value 0 = background included when the model has it).
        replaced: what medxai does instead of the bundle (e.g. ``LoadImaged -> medxai reader``).
        layer_hooks: whether layer hooks work on the network (False for TorchScript), which
            Grad-CAM-type saliency needs.
        saliency: the model's default explanation (:class:`SaliencySpec`).
        grid: onto the model grid (:class:`GridSpec`; medxai-form bundles).
        clean_up: the label clean-up steps after the argmax (``keep_largest_component``,
            ``keep_components``, ``fill_holes``; :func:`medxai.postprocess.postprocess_labels`).
    """

    name: str
    version: str
    form: str
    weights: str
    network: str
    input: InputSpec
    inference: InferenceSpec
    labels: tuple[LabelSpec, ...]
    preprocessing: tuple[str, ...] = ()
    postprocessing: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()
    layer_hooks: bool = True
    extras: Mapping[str, Any] = field(default_factory=dict)
    saliency: SaliencySpec = field(default_factory=SaliencySpec)
    grid: GridSpec = field(default_factory=GridSpec)

    @property
    def clean_up(self) -> Mapping[str, Any]:
        return dict(self.extras.get("postprocessing") or {})

    @property
    def foreground_labels(self) -> tuple[LabelSpec, ...]:
        return tuple(lab for lab in self.labels if lab.value != 0)

    @property
    def saliency_methods(self) -> tuple[str, ...]:
        """The saliency methods that apply to this model."""
        return (HOOK_METHODS if self.layer_hooks else ()) + HOOK_FREE_METHODS

    def check_saliency_method(self, method: str) -> None:
        """Raise :class:`ExplainError` when ``method`` cannot run on this model (Grad-CAM-type
        methods on a TorchScript network); the message names the methods that work."""
        if isinstance(method, str) and method in HOOK_METHODS and not self.layer_hooks:
            raise ExplainError(
                f"saliency method {method!r} needs layer hooks, which the TorchScript network of "
                f"model {self.name!r} does not offer",
                hint=f"use --explain {' or '.join(HOOK_FREE_METHODS)} (these work on TorchScript), "
                "or --explain none; or give the bundle models/model.pt (a state dict)",
            )


def _ints(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (int(value),)
    return tuple(int(v) for v in value)


def _color(value: Any) -> tuple[int, int, int] | None:
    if value is None:
        return None
    r, g, b = (int(v) for v in value)
    return (r, g, b)


def _tta(inference: Mapping[str, Any]) -> str:
    return str(inference.get("tta") or ("flips" if inference.get("tta_flips") else "none"))


def contract_from_medxai_config(
    config: Mapping[str, Any], metadata: Mapping[str, Any]
) -> ModelContract:
    """The contract of a medxai-form bundle (``config`` = its ``configs/inference.json``, already
    checked by :func:`medxai.models.bundle.load_bundle`)."""
    inp = config.get("input", {}) or {}
    net = config.get("network_def", {}) or {}
    inf = config.get("inference", {}) or {}
    pre = config.get("preprocessing", {}) or {}
    mode = str(inf.get("mode", "whole_image"))
    steps = []
    if mode == "whole_image" and pre.get("spatial_size"):
        steps.append(f"resize to {list(pre['spatial_size'])}")
    if mode == "sliding_window" and int(inp.get("spatial_dims", 2)) == 3:
        steps.append("reorient to RAS")
        if pre.get("spacing"):
            steps.append(f"resample to {list(pre['spacing'])} mm")
    if pre.get("intensity"):
        steps.append(f"intensity {dict(pre['intensity'])}")
    post = config.get("postprocessing") or {}
    post_steps = [
        "softmax",
        f"threshold {inf['threshold']}" if inf.get("threshold") is not None else "argmax",
    ] + [k for k, v in post.items() if v]
    target = str(net.get("_target_", "?")).rsplit(".", 1)[-1]
    return ModelContract(
        name=str(metadata.get("name", "unnamed")),
        version=str(metadata.get("version", "0")),
        form="medxai",
        weights="state_dict",
        network=target,
        input=InputSpec(
            spatial_dims=int(inp.get("spatial_dims", 2)),
            channels=int(inp.get("channels", 1)),
            modalities=tuple(str(m) for m in inp.get("modalities", []) or []),
        ),
        inference=InferenceSpec(
            mode=mode,
            roi_size=_ints(inf.get("roi_size")),
            overlap=float(inf.get("overlap", DEFAULT_OVERLAP)),
            sw_batch_size=int(inf.get("sw_batch_size", DEFAULT_SW_BATCH_SIZE)),
            blend_mode=str(inf.get("blend_mode", DEFAULT_BLEND_MODE)),
            tta=_tta(inf),
            tta_axes=_ints(inf.get("tta_axes")),
            tta_sizes=tuple(tuple(int(v) for v in s) for s in inf.get("tta_sizes") or []),
            threshold=(float(inf["threshold"]) if inf.get("threshold") is not None else None),
        ),
        labels=tuple(
            LabelSpec(
                int(lab["value"]),
                str(lab.get("name", f"label {lab['value']}")),
                _color(lab.get("color")),
            )
            for lab in config.get("labels", [])
        ),
        preprocessing=tuple(steps),
        postprocessing=tuple(post_steps),
        extras={"postprocessing": dict(post)},
        saliency=saliency_spec_from_config(config.get("saliency")),
        grid=GridSpec(
            spatial_size=_ints(pre.get("spatial_size")),
            spacing=tuple(float(v) for v in pre["spacing"]) if pre.get("spacing") else None,
            intensity=dict(pre.get("intensity") or {"kind": "none"}),
        ),
    )


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct display colours (a fixed, repeatable list): the palette module's
    :func:`medxai.palette.distinct_colors`."""
    from medxai.palette import distinct_colors

    return distinct_colors(n)


def labels_from_names(names: Mapping[int, str] | Sequence[str]) -> tuple[LabelSpec, ...]:
    """Labels for ``{value: name}`` (or names in value order), with :func:`default_palette`
    colours for the foreground."""
    items = sorted(names.items()) if isinstance(names, Mapping) else list(enumerate(names))
    palette = default_palette(len(items))
    out, k = [], 0
    for v, n in items:
        if int(v) == 0:
            out.append(LabelSpec(0, str(n), None))
        else:
            out.append(LabelSpec(int(v), str(n), palette[k]))
            k += 1
    return tuple(out)
