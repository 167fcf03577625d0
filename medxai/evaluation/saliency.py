"""``medxai explain --evaluate``: faithfulness of each saliency method over a set of images.

(Moved here from ``medxai.explain.evaluation``: a run over a data folder is application code on
top of the saliency library, not part of it.)

For each image and method, on the model's input grid: deletion and insertion AUCs of the
target score (with their random-order baselines), the share of saliency energy inside the
model's mask, the model-randomisation rank correlation (Adebayo et al. 2018) and the CPU time
of the map compared with one prediction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medxai.choices import EVALUATION_METHODS
from medxai.errors import ExplainError, InputError

__all__ = ["evaluate_saliency", "list_images", "format_table", "pad_for_network", "DEFAULT_METHODS"]

DEFAULT_METHODS = EVALUATION_METHODS

_COLUMNS = (
    "deletion_auc",
    "random_deletion_auc",
    "insertion_auc",
    "random_insertion_auc",
    "energy_in_mask",
    "sanity_spearman",
    "seconds",
    "cost_vs_inference",
    "corr_mask",
    "corr_probability",
    "context_share",
    "sparseness",
)


def list_images(data: str | Path, limit: int | None = None) -> list[Path]:
    """Images of ``data``: its ``images/`` folder when it has one, else its picture/volume files;
    a single file is itself."""
    from medxai.io.datasets import is_data_file, mask_key, stem

    data = Path(data)
    if data.is_file():
        return [data]
    if not data.is_dir():
        raise InputError("does not exist", path=data)
    folder = data / "images" if (data / "images").is_dir() else data
    files = [
        p for p in sorted(folder.iterdir()) if is_data_file(p) and mask_key(stem(p)) == stem(p)
    ]
    if not files:
        raise InputError("holds no images", path=data)
    return files[:limit] if limit else files


def evaluate_saliency(
    bundle: Any,
    images: Sequence[Path],
    methods: Sequence[str] = DEFAULT_METHODS,
    *,
    label: int = 1,
    steps: int = 20,
    device: str = "cpu",
    baseline: str = "mean",
    target: str = "segment",
    layer: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Faithfulness table: per method the mean of each column of :data:`_COLUMNS`.

    The mask on the model grid is the bundle's own label map (its ``inference.threshold`` and
    post-processing, :func:`medxai.inference.labels_from_probabilities`). Images for which the
    model predicts nothing of ``label`` are skipped (there is nothing to explain) and counted in
    ``skipped``. ``baseline`` is what deleted pixels become: ``mean`` (the image's mean colour;
    default, because blurring a dark lesion leaves it dark and the model still finds it),
    ``blur`` or ``zero``. The bundle's network is put back in the mode and on the device it was
    in, also when a method fails.

    ``target`` is the question every map answers (``segment``, ``border``, ``missed``,
    ``image``; :class:`medxai.explain.SegmentationTarget`), scored by deletion on that same target;
    ``layer`` is passed to the CAM methods. Informativeness columns (medians would be more robust;
    these are means like the others): ``corr_mask`` / ``corr_probability`` (Pearson correlation
    of the map with the model's mask / probability: near 1 the map repeats the output),
    ``context_share`` (mass outside the mask), ``sparseness`` (Gini index).
    """
    from medxai.explain import get_method
    from medxai.inference import network_on, resolve_device

    for m in methods:
        get_method(m)  # fail early on a bad name
    dev = resolve_device(device)
    per_method: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    skipped = 0
    with network_on(bundle.network, dev) as net:
        for n, path in enumerate(images):
            rows = _image_rows(
                bundle,
                net,
                path,
                dev,
                methods,
                label=label,
                steps=steps,
                baseline=baseline,
                target=target,
                layer=layer,
            )
            if rows is None:
                skipped += 1
                continue
            for m, row in rows.items():
                per_method[m].append(row)
            if progress:
                progress(f"{n + 1}/{len(images)} {path.name}")
    return {
        "methods": _mean_table(per_method),
        "images": len(images),
        "skipped_empty": skipped,
        "baseline": baseline,
        "label": label,
        "steps": steps,
        "device": str(dev),
        "target": target,
        "layer": layer,
    }


def _model_grid_mask(bundle: Any, logits: torch.Tensor, label: int) -> torch.Tensor:
    """``(1, 1, *spatial)`` bool mask of ``label`` in the bundle's label map of ``logits``
    ``(1, K, *spatial)``: threshold and post-processing as :func:`medxai.inference.predict`."""
    from medxai.inference import labels_from_probabilities

    prob = torch.softmax(logits.detach().float(), dim=1)[0].cpu()
    labels = labels_from_probabilities(bundle, prob)
    return (labels == label)[None].to(logits.device)


def pad_for_network(bundle: Any, x: torch.Tensor) -> torch.Tensor:
    """Sliding-window (3D) models see the whole model grid in one pass here: zero-pad it (as
    MONAI's sliding window pads) to at least the window and to a multiple of the network's total
    stride, so that a crop smaller than the window, or of odd size, goes through the U-Net."""
    inf = bundle.inference or {}
    if inf.get("mode", "whole_image") == "whole_image":
        return x
    strides = (bundle.config.get("network_def") or {}).get("strides") or []
    k = 1
    for st in strides:
        k *= int(st if isinstance(st, int) else max(st))
    roi = list(inf.get("roi_size") or [])
    spatial = list(x.shape[2:])
    want = [max(s, int(roi[i]) if i < len(roi) else s) for i, s in enumerate(spatial)]
    want = [-(-w // k) * k for w in want]
    pad: list[int] = []
    for s, w in reversed(list(zip(spatial, want))):
        pad += [0, w - s]
    return torch.nn.functional.pad(x, pad) if any(pad) else x


def _image_rows(
    bundle: Any,
    net: torch.nn.Module,
    path: Path,
    dev: torch.device,
    methods: Sequence[str],
    *,
    label: int,
    steps: int,
    baseline: str,
    target: str = "segment",
    layer: str | None = None,
) -> dict[str, dict[str, float]] | None:
    """One row per method for the image at ``path``; None when the model finds no ``label``."""
    from medxai.explain import CAM_METHODS, SegmentationTarget, explain, informativeness
    from medxai.inference import prepare_input
    from medxai.io.readers import read_image

    x, _ = prepare_input(bundle, read_image(path))
    x = pad_for_network(bundle, x).to(dev)
    with torch.no_grad():
        t = time.perf_counter()
        logits = net(x)
        infer_s = time.perf_counter() - t
    mask = _model_grid_mask(bundle, logits, label)
    if not mask.any():
        return None
    question = SegmentationTarget(
        label, target, threshold=(bundle.inference or {}).get("threshold")
    )
    if not question.mask(logits).any():
        return None
    prob = question.probability(logits)
    rows = {}
    for m in methods:
        options: dict[str, Any] = {"layer": layer} if layer and m in CAM_METHODS else {}
        t = time.perf_counter()
        sal = explain(net, x, method=m, target=question, **options)
        secs = time.perf_counter() - t
        scores = _faithfulness(
            net,
            x,
            sal,
            m,
            label=label,
            steps=steps,
            baseline=baseline,
            target=question,
            options=options,
        )
        if scores is None:
            continue
        info = informativeness(sal, prob, mask)
        rows[m] = {
            **scores,
            "energy_in_mask": float(info["energy_in_mask"][0]),
            "corr_mask": float(info["corr_mask"][0]),
            "corr_probability": float(info["corr_probability"][0]),
            "context_share": float(info["context_share"][0]),
            "sparseness": float(info["sparseness"][0]),
            "seconds": secs,
            "cost_vs_inference": secs / max(infer_s, 1e-6),
        }
    return rows


def _faithfulness(
    net: torch.nn.Module,
    x: torch.Tensor,
    sal: torch.Tensor,
    method: str,
    *,
    label: int,
    steps: int,
    baseline: str,
    target: Any = None,
    options: dict[str, Any] | None = None,
) -> dict[str, float] | None:
    """Deletion/insertion AUCs (with random-order baselines) and the randomisation rank
    correlation of one map; None when the curves cannot be computed."""
    from medxai.explain import deletion_insertion, randomisation_sanity

    try:
        di = deletion_insertion(
            net, x, sal, target_label=label, steps=steps, baseline=baseline, target=target
        )
    except ExplainError:
        return None
    sanity = randomisation_sanity(
        net, x, method=method, target_label=label, target=target, **(options or {})
    )
    return {
        "deletion_auc": float(di["deletion_auc"][0]),
        "random_deletion_auc": float(di["random_deletion_auc"][0]),
        "insertion_auc": float(di["insertion_auc"][0]),
        "random_insertion_auc": float(di["random_insertion_auc"][0]),
        "sanity_spearman": float(np.asarray(sanity["spearman"]).reshape(-1)[0]),
    }


def _mean_table(per_method: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for m, rows in per_method.items():
        table[m] = {
            c: float(np.nanmean([r[c] for r in rows])) if rows else float("nan") for c in _COLUMNS
        }
        table[m]["n"] = len(rows)
    return table


def format_table(result: dict[str, Any]) -> str:
    """The table ``medxai explain --evaluate`` prints."""
    head = (
        f"{'method':10s} {'n':>4s} {'del AUC':>8s} {'(rand)':>7s} {'ins AUC':>8s} {'(rand)':>7s} "
        f"{'in mask':>8s} {'sanity ρ':>9s} {'s/img':>7s} {'x infer':>8s} {'r mask':>7s} "
        f"{'context':>8s} {'sparse':>7s}"
    )
    lines = [head]
    for m, r in result["methods"].items():
        lines.append(
            f"{m:10s} {r['n']:4d} {r['deletion_auc']:8.3f} {r['random_deletion_auc']:7.3f} "
            f"{r['insertion_auc']:8.3f} {r['random_insertion_auc']:7.3f} "
            f"{r['energy_in_mask']:8.3f} {r['sanity_spearman']:9.3f} "
            f"{r['seconds']:7.3f} {r['cost_vs_inference']:8.1f} {r['corr_mask']:7.3f} "
            f"{r['context_share']:8.3f} {r['sparseness']:7.3f}"
        )
    lines.append(
        f"{result['images']} image(s), {result['skipped_empty']} without a predicted "
        f"label {result['label']} skipped; target {result.get('target', 'segment')}; "
        f"layer {result.get('layer') or 'default'}; "
        f"deletion baseline {result['baseline']}; "
        f"device {result['device']}"
    )
    return "\n".join(lines)
