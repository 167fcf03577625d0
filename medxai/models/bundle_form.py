"""The on-disk form of medxai's own bundles: a MONAI bundle with medxai's extras under one key.

Since form 2 (``medxai-bundle/2``), ``configs/inference.json`` of a bundle that medxai trains is a
MONAI inference config that plain MONAI runs (``monai.bundle.ConfigParser``): ``network_def``,
``preprocessing`` (``LoadImaged`` ... onto the model grid), ``inferer`` and ``postprocessing``
(softmax, ``Invertd`` onto the input grid, argmax). Everything only medxai uses lives under the
key ``"medxai"``, which MONAI ignores::

    {
      "network_def": {"_target_": "monai.networks.nets.UNet", ...},
      "preprocessing": {"_target_": "Compose", "transforms": [...]},
      "inferer": {"_target_": "SimpleInferer"},
      "postprocessing": {"_target_": "Compose", "transforms": [...]},
      "medxai": {
        "form": "medxai-bundle/2",
        "input": {...},            fit rules: dims, channels, modalities, pictures, extents, ...
        "preprocessing": {...},    intensity (scale/zscore), spatial_size or spacing
        "inference": {...},        mode, roi_size, overlap, sw_batch_size, blend_mode, tta,
                                   tta_sizes, threshold
        "labels": [...],           value, name, color (and optional SEG codes)
        "postprocessing": {...},   keep_largest_component, keep_components, fill_holes
        "saliency": {...}          the default explanation (method, layer, target)
      }
    }

medxai runs the ``"medxai"`` block (its readers with DICOM display/VOI handling, TTA, the
foreground threshold, component clean-up) and never the MONAI keys, which are generated from it
by :func:`monai_inference_config`, so that the two always describe the same model. Without the
extras (TTA ``none``, no threshold, no postprocessing) both give the same label map, also with
a ``spacing`` (medxai's model grid is MONAI's ``Orientation`` + ``Spacing``; docs/bundles.md).

The older form 1 (``medxai-bundle/1``: the block's keys at the top level of
``inference.json``, next to ``network_def``) is still read; ``medxai models convert`` rewrites
it as form 2 with the weights untouched.

This module is torch-free (the registry reads fit rules through it without torch).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MEDXAI_KEY",
    "FORM",
    "LEGACY_FORM",
    "MONAI_METADATA_SCHEMA",
    "VIEW_KEYS",
    "medxai_form_of",
    "misplaced_keys",
    "medxai_view",
    "monai_inference_config",
    "monai_metadata",
]

#: The one key of ``inference.json`` that holds medxai's extras (plain MONAI ignores it).
MEDXAI_KEY = "medxai"
FORM = "medxai-bundle/2"
LEGACY_FORM = "medxai-bundle/1"
#: The metadata schema MONAI's model zoo bundles name (``monai.bundle verify_metadata``).
MONAI_METADATA_SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
    "0.8.1/meta_schema_20220324.json"
)
#: The keys of medxai's view of a bundle (besides ``network_def``).
VIEW_KEYS = ("input", "preprocessing", "inference", "labels", "postprocessing", "saliency")

_IMAGE = "image"
_PRED = "pred"


def medxai_form_of(raw: Mapping[str, Any]) -> str | None:
    """``medxai-bundle/2``, ``medxai-bundle/1`` or None (not a medxai bundle: a MONAI
    model-zoo bundle) for the content of a ``configs/inference.json``."""
    block = raw.get(MEDXAI_KEY)
    if isinstance(block, Mapping) and block.get("form") == FORM:
        return FORM
    pre = raw.get("preprocessing")
    if isinstance(raw.get("input"), Mapping) and not (
        isinstance(pre, Mapping) and "_target_" in pre
    ):
        return LEGACY_FORM
    return None


def misplaced_keys(raw: Mapping[str, Any]) -> list[str]:
    """medxai settings at the top level of a form-2 ``inference.json`` (where medxai does not
    read them: they belong under :data:`MEDXAI_KEY`); empty for other forms."""
    if medxai_form_of(raw) != FORM:
        return []
    out = [k for k in ("input", "inference", "labels", "saliency") if k in raw]
    out += [
        k
        for k in ("preprocessing", "postprocessing")
        if isinstance(raw.get(k), Mapping) and "_target_" not in raw[k]
    ]
    return out


def medxai_view(raw: Mapping[str, Any]) -> dict[str, Any]:
    """medxai's view of a medxai bundle's ``inference.json``, whichever form it has:
    ``network_def`` plus the keys of :data:`VIEW_KEYS` (a deep copy)."""
    if medxai_form_of(raw) == FORM:
        block = raw[MEDXAI_KEY]
        view: dict[str, Any] = {"network_def": copy.deepcopy(dict(raw.get("network_def") or {}))}
        for key in VIEW_KEYS:
            if key in block:
                view[key] = copy.deepcopy(block[key])
        return view
    return copy.deepcopy(dict(raw))


# -- the MONAI keys, generated from the view ---------------------------------------------------
def _intensity(spec: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """medxai's intensity normalisation as MONAI transforms (the same arithmetic, so the same
    float32 values): ``scale`` is ``ScaleIntensityRanged`` to [0, 1]; ``zscore`` (per channel,
    statistics of the non-zero voxels, unbiased std, applied to every voxel) has no MONAI
    transform with these statistics (``NormalizeIntensityd(nonzero=True)`` leaves the zero
    voxels at 0 and uses the biased std), so it is a ``Lambdad`` with the expression."""
    spec = dict(spec or {"kind": "none"})
    kind = spec.get("kind", "none")
    if kind == "scale":
        return [
            {
                "_target_": "ScaleIntensityRanged",
                "keys": _IMAGE,
                "a_min": float(spec.get("a_min", 0.0)),
                "a_max": float(spec.get("a_max", 1.0)),
                "b_min": 0.0,
                "b_max": 1.0,
                "clip": bool(spec.get("clip", True)),
            }
        ]
    if kind == "zscore":
        return [
            {
                "_target_": "Lambdad",
                "keys": _IMAGE,
                "func": "$lambda x, sel=(lambda c: c[c != 0] if torch.count_nonzero(c) > 1 "
                "else c.reshape(-1)): torch.cat([(x[i:i + 1].float() - sel(x[i].float()).mean()) "
                "/ (sel(x[i].float()).std() if sel(x[i].float()).std() > 1e-8 else 1.0) "
                "for i in range(x.shape[0])])",
            }
        ]
    return [{"_target_": "EnsureTyped", "keys": _IMAGE, "dtype": "$torch.float32"}]


def _resize(size: list[int]) -> dict[str, Any]:
    """medxai's whole-image resize (torch's anti-aliased bilinear, which MONAI's ``Resized``
    does not offer: its anti-aliasing is a Gaussian pre-filter) as a ``Lambdad``."""
    mode = "bilinear" if len(size) == 2 else "trilinear"
    aa = ", antialias=True" if len(size) == 2 else ""
    return {
        "_target_": "Lambdad",
        "keys": _IMAGE,
        "func": f"$lambda x: x if list(x.shape[1:]) == {list(size)} else "
        f"torch.nn.functional.interpolate(x.float()[None], size={list(size)}, mode='{mode}', "
        f"align_corners=False{aa})[0]",
    }


def _resize_back(dims: int) -> dict[str, Any]:
    """The inverse of :func:`_resize` on the probabilities: back to the input's size
    (``spatial_shape`` of the image's meta data, as ``LoadImaged`` records it and ``Invertd``
    copies it to ``pred``) with plain linear interpolation. A separate step, because MONAI's
    ``Lambdad.inverse`` does not call its ``inv_func`` (MONAI 1.6)."""
    mode = "bilinear" if dims == 2 else "trilinear"
    return {
        "_target_": "Lambdad",
        "keys": _PRED,
        "func": "$lambda p: p if [int(s) for s in p.meta['spatial_shape']] == "
        "list(p.shape[1:]) else torch.nn.functional.interpolate(p.float()[None], "
        f"size=[int(s) for s in p.meta['spatial_shape']], mode='{mode}', "
        "align_corners=False)[0]",
    }


def monai_inference_config(view: Mapping[str, Any]) -> dict[str, Any]:
    """The form-2 ``inference.json`` of medxai's view of a bundle: MONAI's keys (generated) and
    the view under :data:`MEDXAI_KEY`.

    The MONAI chain is what medxai does without its extras: ``LoadImaged`` +
    ``EnsureChannelFirstd``, the intensity normalisation, then onto the model grid (whole-image
    models: the resize; 3D sliding-window models: ``Orientationd`` to RAS and ``Spacingd`` when
    the bundle has a ``spacing``); ``SimpleInferer`` or ``SlidingWindowInferer`` with the
    bundle's roi, overlap, batch and blending; softmax, ``Invertd`` onto the input grid (linear
    interpolation) and argmax.
    """
    view = medxai_view(view)
    inp: dict[str, Any] = view.get("input") or {}
    pre: dict[str, Any] = view.get("preprocessing") or {}
    inf: dict[str, Any] = view.get("inference") or {}
    net: dict[str, Any] = dict(view.get("network_def") or {})
    dims = int(inp.get("spatial_dims", net.get("spatial_dims", 2)))
    mode = str(inf.get("mode", "whole_image"))
    transforms: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": _IMAGE, "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": _IMAGE},
    ]
    transforms += _intensity(pre.get("intensity"))
    if mode == "whole_image":
        if pre.get("spatial_size"):
            transforms.append(_resize([int(v) for v in pre["spatial_size"]]))
        inferer: dict[str, Any] = {"_target_": "SimpleInferer"}
    else:
        if dims == 3:
            transforms.append(
                {
                    "_target_": "Orientationd",
                    "keys": _IMAGE,
                    "axcodes": "RAS",
                    "labels": [["L", "R"], ["P", "A"], ["I", "S"]],
                }
            )
            if pre.get("spacing"):
                transforms.append(
                    {
                        "_target_": "Spacingd",
                        "keys": _IMAGE,
                        "pixdim": [float(v) for v in pre["spacing"]],
                        "mode": "bilinear",
                    }
                )
        # the defaults are medxai's (medxai.models.contract), written out
        inferer = {
            "_target_": "SlidingWindowInferer",
            "roi_size": [int(v) for v in inf.get("roi_size") or []],
            "sw_batch_size": int(inf.get("sw_batch_size", 4)),
            "overlap": float(inf.get("overlap", 0.25)),
            "mode": str(inf.get("blend_mode", "gaussian")),
        }
    transforms.append({"_target_": "EnsureTyped", "keys": _IMAGE})
    post = [
        {"_target_": "Activationsd", "keys": _PRED, "softmax": True},
        {
            "_target_": "Invertd",
            "keys": _PRED,
            "transform": "@preprocessing",
            "orig_keys": _IMAGE,
            "nearest_interp": False,
            "to_tensor": True,
        },
    ]
    if mode == "whole_image" and pre.get("spatial_size"):
        post.append(_resize_back(len(pre["spatial_size"])))
    post.append({"_target_": "AsDiscreted", "keys": _PRED, "argmax": True})
    block: dict[str, Any] = {"form": FORM}
    block["_doc"] = (
        "medxai's extras (fit rules, intensity handling of DICOM, TTA, threshold, component "
        "clean-up, label names/colours/codes); plain MONAI ignores this key. The MONAI keys "
        "above are generated from it (docs/bundles.md)."
    )
    for key in VIEW_KEYS:
        if key in view:
            block[key] = copy.deepcopy(view[key])
    return {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "image_key": _IMAGE,
        "network_def": net,
        "preprocessing": {"_target_": "Compose", "transforms": transforms},
        "inferer": inferer,
        "postprocessing": {"_target_": "Compose", "transforms": post},
        MEDXAI_KEY: block,
    }


def monai_metadata(view: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata`` in MONAI's form: ``schema``, the versions and ``network_data_format``
    (inputs ``image`` and outputs ``pred`` with their ``channel_def``: the label names), plus
    medxai's own card keys (name, training, metrics, weights SHA-256, ...), which MONAI keeps
    as they are."""
    view = medxai_view(view)
    out = copy.deepcopy(dict(metadata))
    inp: dict[str, Any] = view.get("input") or {}
    net: dict[str, Any] = view.get("network_def") or {}
    pre: dict[str, Any] = view.get("preprocessing") or {}
    inf: dict[str, Any] = view.get("inference") or {}
    dims = int(inp.get("spatial_dims", net.get("spatial_dims", 2)))
    channels = int(inp.get("channels", net.get("in_channels", 1)))
    labels = sorted(view.get("labels") or [], key=lambda lab: int(lab["value"]))
    n_out = int(net.get("out_channels", len(labels) or 2))
    names = {int(lab["value"]): str(lab.get("name", f"label {lab['value']}")) for lab in labels}
    shape: list[int | str] = (
        [int(v) for v in pre["spatial_size"]]
        if inf.get("mode", "whole_image") == "whole_image" and pre.get("spatial_size")
        else [int(v) for v in inf.get("roi_size") or []] or ["*"] * dims
    )
    mods = [str(m) for m in inp.get("modalities") or []]
    if channels == 3:
        channel_def = {"0": "R", "1": "G", "2": "B"}
    else:
        channel_def = {str(i): f"image {i}" if channels > 1 else "image" for i in range(channels)}
    intensity = (pre.get("intensity") or {}).get("kind", "none")
    out["schema"] = MONAI_METADATA_SCHEMA
    out["medxai_form"] = FORM
    out.setdefault("numpy_version", __import__("numpy").__version__)
    out.setdefault("required_packages_version", {"nibabel": "", "pillow": ""})
    out.setdefault("authors", "medxai")
    out.setdefault("copyright", "see license")
    out["network_data_format"] = {
        "inputs": {
            _IMAGE: {
                "type": "image",
                "format": "RGB" if channels == 3 else "magnitude",
                "modality": ", ".join(mods) if mods else "any",
                "num_channels": channels,
                "spatial_shape": shape,
                "dtype": "float32",
                "value_range": [0, 1] if intensity == "scale" else [],
                "is_patch_data": inf.get("mode") == "sliding_window",
                "channel_def": channel_def,
            }
        },
        "outputs": {
            _PRED: {
                "type": "image",
                "format": "segmentation",
                "num_channels": n_out,
                "spatial_shape": shape,
                "dtype": "float32",
                "value_range": [0, 1],
                "is_patch_data": inf.get("mode") == "sliding_window",
                "channel_def": {
                    str(k): names.get(k, "background" if k == 0 else f"label {k}")
                    for k in range(n_out)
                },
            }
        },
    }
    return out
