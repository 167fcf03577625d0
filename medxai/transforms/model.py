"""MONAI transforms around a model bundle: predict, explain, overlay, save.

Array forms take one channel-first image ``(C, I, J[, K])`` (a ``MetaTensor`` from
``LoadImage(reader=MedxaiReader())`` or :func:`medxai.read_image`); dictionary forms (``Xd``)
wrap them with ``keys`` and ``allow_missing_keys`` like MONAI's own. Outputs are ``MetaTensor``
objects that keep the input's meta and applied operations, so ``Invertd`` can take a prediction
made after MONAI spatial transforms back to the original grid.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from medxai.errors import MedxaiError
from medxai.models.bundle import ModelBundle

__all__ = [
    "Predict",
    "Predictd",
    "Saliency",
    "Saliencyd",
    "BlendOverlay",
    "BlendOverlayd",
    "SaveSegmentation",
    "SaveSegmentationd",
]


def _bundle(model: str | Path | ModelBundle | None) -> ModelBundle:
    if isinstance(model, ModelBundle):
        return model
    from medxai.models.registry import load_model

    return load_model(model)


class _PredictOptions(TypedDict):
    """The sliding-window options :class:`Predict` passes to :func:`medxai.inference.predict`."""

    roi_size: Sequence[int] | None
    overlap: float | None
    sw_batch_size: int | None


def _like(data: torch.Tensor, ref: Any) -> MetaTensor:
    """``data`` as a MetaTensor with ``ref``'s meta and applied operations (for Invertd)."""
    if isinstance(ref, MetaTensor):
        out = MetaTensor(data, affine=ref.affine, meta=dict(ref.meta))
        out.applied_operations = list(ref.applied_operations)
        return out
    return MetaTensor(data)


class Predict(Transform):
    """Segment an image with a bundle: returns the label map ``(1, I, J[, K])`` uint8 on the
    image's grid (or the class probabilities ``(K, ...)`` with ``output="probabilities"``).

    Args:
        model: a bundled model name, a bundle folder or a loaded :class:`ModelBundle`.
        device: ``auto|cpu|cuda[:N]|mps``.
        output: ``"labels"`` or ``"probabilities"``.
    """

    OUTPUTS = ("labels", "probabilities")

    def __init__(
        self,
        model: str | Path | ModelBundle | None = None,
        device: str = "auto",
        output: str = "labels",
        roi_size: Sequence[int] | None = None,
        overlap: float | None = None,
        sw_batch_size: int | None = None,
    ) -> None:
        if output not in self.OUTPUTS:
            raise MedxaiError(f"output must be one of {self.OUTPUTS}, got {output!r}")
        self.bundle = _bundle(model)
        self.device = device
        self.output = output
        self.kwargs: _PredictOptions = {
            "roi_size": roi_size,
            "overlap": overlap,
            "sw_batch_size": sw_batch_size,
        }

    def __call__(self, img: torch.Tensor) -> MetaTensor:
        from medxai.inference import predict

        pred = predict(self.bundle, img, device=self.device, **self.kwargs)
        return _like(pred.labels if self.output == "labels" else pred.probabilities, img)


class Predictd(MapTransform):
    """Dictionary form of :class:`Predict`: ``d[output_key] = Predict(d[key])``.

    ``output_key`` defaults to ``"pred"`` (one key) or ``"<key>_pred"`` (several keys).
    """

    def __init__(
        self,
        keys: KeysCollection,
        model: str | Path | ModelBundle | None = None,
        output_key: str | None = None,
        device: str = "auto",
        output: str = "labels",
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.predictor = Predict(model, device, output, **kwargs)
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            out_key = self.output_key or ("pred" if len(self.keys) == 1 else f"{key}_pred")
            d[out_key] = self.predictor(d[key])
        return d


class Saliency(Transform):
    """Saliency of a bundle's segmentation of an image: ``(1, I, J[, K])`` float32 in [0, 1] on
    the image's grid (whole-image models) or blended over sliding windows (volumes).

    Args:
        model: bundle name, folder or :class:`ModelBundle`.
        method: ``gradcam``, ``gradcampp``, ``occlusion`` or ``ig``.
        label: the label to explain.
    """

    def __init__(
        self,
        model: str | Path | ModelBundle | None = None,
        method: str = "gradcam",
        label: int = 1,
        device: str = "auto",
    ) -> None:
        from medxai.explain import get_method

        get_method(method)
        self.bundle = _bundle(model)
        self.method = method
        self.label = int(label)
        self.device = device

    def __call__(self, img: torch.Tensor) -> MetaTensor:
        from medxai.inference import resolve_device
        from medxai.io.types import LoadedImage
        from medxai.pipeline import compute_saliency

        loaded = LoadedImage(
            image=img if isinstance(img, MetaTensor) else MetaTensor(img),
            dicom=None,
            path=Path(str(getattr(img, "meta", {}).get("filename_or_obj", "image"))),
        )
        sal = compute_saliency(
            self.bundle, loaded, self.method, self.label, resolve_device(self.device)
        )
        return _like(sal, img)


class Saliencyd(MapTransform):
    """Dictionary form of :class:`Saliency`: ``d[output_key] = Saliency(d[key])``
    (default output key ``"saliency"`` / ``"<key>_saliency"``)."""

    def __init__(
        self,
        keys: KeysCollection,
        model: str | Path | ModelBundle | None = None,
        method: str = "gradcam",
        label: int = 1,
        output_key: str | None = None,
        device: str = "auto",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.saliency = Saliency(model, method, label, device)
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            out_key = self.output_key or ("saliency" if len(self.keys) == 1 else f"{key}_saliency")
            d[out_key] = self.saliency(d[key])
        return d


class BlendOverlay(Transform):
    """RGB overlay ``(3, I, J[, K])`` uint8: the windowed image, the saliency heat map blended
    in, and the label contours on top (the picture medxai writes as PNG and DICOM SC)."""

    def __init__(
        self, label_colors: Mapping[int, Sequence[int]] | None = None, heat_alpha: float = 0.6
    ) -> None:
        self.label_colors = dict(label_colors or {})
        self.heat_alpha = float(heat_alpha)

    # an array transform of (image, labels[, saliency]), as BlendOverlayd calls it, not of one
    # datum like MONAI's Transform.__call__
    def __call__(  # type: ignore[override]
        self, img: torch.Tensor, labels: torch.Tensor, saliency: torch.Tensor | None = None
    ) -> MetaTensor:
        from medxai.io.writers import overlay_rgb

        lab = (
            np.asarray(labels)[0]
            if np.asarray(labels).ndim == np.asarray(img).ndim
            else np.asarray(labels)
        )
        sal = None
        if saliency is not None:
            s = np.asarray(saliency)
            sal = s[0] if s.ndim == np.asarray(img).ndim else s
        rgb = overlay_rgb(
            np.asarray(img), lab, sal, self.label_colors or None, heat_alpha=self.heat_alpha
        )
        return _like(torch.as_tensor(rgb), img)


class BlendOverlayd(MapTransform):
    """Dictionary form of :class:`BlendOverlay`: ``d[output_key] = BlendOverlay(d[image_key],
    d[label_key], d.get(saliency_key))``."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_key: str = "pred",
        saliency_key: str | None = "saliency",
        output_key: str = "overlay",
        label_colors: Mapping[int, Sequence[int]] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.blend = BlendOverlay(label_colors)
        self.label_key, self.saliency_key, self.output_key = label_key, saliency_key, output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            sal = d.get(self.saliency_key) if self.saliency_key else None
            d[self.output_key] = self.blend(d[key], d[self.label_key], sal)
        return d


class SaveSegmentation(Transform):
    """Write a label map (and optional saliency) for the image it was computed on, with the
    writers of ``medxai segment``: NIfTI with the image's affine, and for DICOM sources a DICOM
    SEG and Secondary Capture overlay referencing them.

    The DICOM headers are read again from ``img.meta["filename_or_obj"]`` (they are not carried
    through MONAI's meta dicts), so the image must come from a file on disk.

    Args:
        output_dir: folder; each image gets ``output_dir/<input name>/``.
        model: the bundle that made the labels (named in the outputs).
        formats: any of ``nifti, dicom-seg, dicom-sc, png``.
    """

    def __init__(
        self,
        output_dir: str | Path,
        model: str | Path | ModelBundle | None = None,
        formats: Sequence[str] = ("nifti", "dicom-seg", "dicom-sc"),
        overwrite: bool = False,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.bundle = _bundle(model)
        self.formats = list(formats)
        self.overwrite = overwrite

    # (image, labels[, saliency]) as SaveSegmentationd calls it; the image must be a MetaTensor
    # read from a file (its meta names the file)
    def __call__(  # type: ignore[override]
        self, img: MetaTensor, labels: torch.Tensor, saliency: torch.Tensor | None = None
    ) -> Path:
        from medxai.inference import Prediction
        from medxai.io.readers import load_image
        from medxai.outputs import ResultFolder, output_name, write_result_folder

        src = Path(str(img.meta["filename_or_obj"]))
        loaded = load_image(src)
        lab = torch.as_tensor(np.asarray(labels)).to(torch.uint8)
        lab = lab if lab.ndim == loaded.image.ndim else lab[None]
        if tuple(lab.shape[1:]) != tuple(loaded.image.shape[1:]):
            raise MedxaiError(
                f"labels {tuple(lab.shape[1:])} are not on the grid of {src.name} "
                f"{tuple(loaded.image.shape[1:])}",
                hint="invert the preprocessing first (monai.transforms.Invertd)",
            )
        pred = Prediction(
            probabilities=lab.float(), labels=lab, affine=loaded.image.affine, seconds=0.0
        )
        sal = (
            {}
            if saliency is None
            else {1: torch.as_tensor(np.asarray(saliency)).reshape(lab.shape)}
        )

        def refuse_skipped(_tmp: Path, written: ResultFolder) -> None:
            if written.skipped:
                raise MedxaiError(written.skipped[0]["reason"])

        written = write_result_folder(
            self.output_dir,
            output_name(src),
            loaded,
            self.bundle,
            pred,
            sal,
            self.formats,
            overwrite=self.overwrite,
            finish=refuse_skipped,
        )
        return written.path


class SaveSegmentationd(MapTransform):
    """Dictionary form of :class:`SaveSegmentation`; stores the output folder in
    ``d["<key>_output"]``."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_key: str = "pred",
        saliency_key: str | None = None,
        output_dir: str | Path = "medxai-results",
        model: str | Path | ModelBundle | None = None,
        formats: Sequence[str] = ("nifti", "dicom-seg", "dicom-sc"),
        overwrite: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.saver = SaveSegmentation(output_dir, model, formats, overwrite)
        self.label_key, self.saliency_key = label_key, saliency_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            sal = d.get(self.saliency_key) if self.saliency_key else None
            d[f"{key}_output"] = str(self.saver(d[key], d[self.label_key], sal))
        return d
