"""``medxai explain --evaluate``: faithfulness of each saliency method over a set of images.

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

from medxai.errors import ExplainError, InputError

__all__ = ["evaluate_saliency", "list_images", "DEFAULT_METHODS"]

DEFAULT_METHODS = ("gradcam", "gradcampp", "occlusion", "ig")

_COLUMNS = ("deletion_auc", "random_deletion_auc", "insertion_auc", "random_insertion_auc",
            "energy_in_mask", "sanity_spearman", "seconds", "cost_vs_inference")


def list_images(data: str | Path, limit: int | None = None) -> list[Path]:
    """Images of ``data``: its ``images/`` folder when it has one, else its picture/volume files;
    a single file is itself."""
    from medxai.training.datasets import _is_data_file, _mask_key, _stem

    data = Path(data)
    if data.is_file():
        return [data]
    if not data.is_dir():
        raise InputError("does not exist", path=data)
    folder = data / "images" if (data / "images").is_dir() else data
    files = [p for p in sorted(folder.iterdir())
             if _is_data_file(p) and _mask_key(_stem(p)) == _stem(p)]
    if not files:
        raise InputError("holds no images", path=data)
    return files[:limit] if limit else files


def evaluate_saliency(bundle: Any, images: Sequence[Path], methods: Sequence[str] = DEFAULT_METHODS,
                      *, label: int = 1, steps: int = 20, device: str = "cpu",
                      baseline: str = "mean",
                      progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Faithfulness table: per method the mean of each column of :data:`_COLUMNS`.

    Images for which the model predicts nothing of ``label`` are skipped (there is nothing to
    explain) and counted in ``skipped``. ``baseline`` is what deleted pixels become: ``mean``
    (the image's mean colour; default, because blurring a dark lesion leaves it dark and the
    model still finds it), ``blur`` or ``zero``.
    """
    from medxai.explain import (
        deletion_insertion,
        energy_in_mask,
        explain,
        get_method,
        randomisation_sanity,
    )
    from medxai.inference import prepare_input, resolve_device
    from medxai.io.readers import read_image

    for m in methods:
        get_method(m)  # fail early on a bad name
    dev = resolve_device(device)
    net = bundle.network.to(dev).eval()
    per_method: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    skipped = 0
    for n, path in enumerate(images):
        x, _ = prepare_input(bundle, read_image(path))
        x = x.to(dev)
        with torch.no_grad():
            t = time.perf_counter()
            logits = net(x)
            infer_s = time.perf_counter() - t
        mask = logits.argmax(1, keepdim=True) == label
        if not mask.any():
            skipped += 1
            continue
        for m in methods:
            t = time.perf_counter()
            sal = explain(net, x, method=m, target_label=label)
            secs = time.perf_counter() - t
            try:
                di = deletion_insertion(net, x, sal, target_label=label, steps=steps,
                                        baseline=baseline)
            except ExplainError:
                continue
            sanity = randomisation_sanity(net, x, method=m, target_label=label)
            per_method[m].append({
                "deletion_auc": float(di["deletion_auc"][0]),
                "random_deletion_auc": float(di["random_deletion_auc"][0]),
                "insertion_auc": float(di["insertion_auc"][0]),
                "random_insertion_auc": float(di["random_insertion_auc"][0]),
                "energy_in_mask": float(energy_in_mask(sal, mask)[0]),
                "sanity_spearman": float(np.asarray(sanity["spearman"]).reshape(-1)[0]),
                "seconds": secs,
                "cost_vs_inference": secs / max(infer_s, 1e-6),
            })
        if progress:
            progress(f"{n + 1}/{len(images)} {path.name}")
    table = {}
    for m, rows in per_method.items():
        table[m] = {c: float(np.nanmean([r[c] for r in rows])) if rows else float("nan")
                    for c in _COLUMNS}
        table[m]["n"] = len(rows)
    return {"methods": table, "images": len(images), "skipped_empty": skipped,
            "baseline": baseline,
            "label": label, "steps": steps, "device": str(dev)}


def format_table(result: dict[str, Any]) -> str:
    """The table ``medxai explain --evaluate`` prints."""
    head = (f"{'method':10s} {'n':>4s} {'del AUC':>8s} {'(rand)':>7s} {'ins AUC':>8s} {'(rand)':>7s} "
            f"{'in mask':>8s} {'sanity ρ':>9s} {'s/img':>7s} {'x infer':>8s}")
    lines = [head]
    for m, r in result["methods"].items():
        lines.append(f"{m:10s} {r['n']:4d} {r['deletion_auc']:8.3f} {r['random_deletion_auc']:7.3f} "
                     f"{r['insertion_auc']:8.3f} {r['random_insertion_auc']:7.3f} "
                     f"{r['energy_in_mask']:8.3f} {r['sanity_spearman']:9.3f} "
                     f"{r['seconds']:7.3f} {r['cost_vs_inference']:8.1f}")
    lines.append(f"{result['images']} image(s), {result['skipped_empty']} without a predicted "
                 f"label {result['label']} skipped; deletion baseline {result['baseline']}; "
                 f"device {result['device']}")
    return "\n".join(lines)
