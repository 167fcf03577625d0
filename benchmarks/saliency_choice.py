"""Choose a model's default saliency (method x layer x target) by measurement on labelled images.

For each combination, over ``--limit`` images of ``DATA`` (``images/`` + ``masks/``, e.g.
``/work/shared/data/isic2018/val``), on the model's input grid, with the bundle's threshold:

- ``corr_mask`` / ``corr_prob``: median Pearson correlation of the map with the predicted mask /
  the label probability (redundancy: near 1 the map repeats the segmentation);
- ``context``: median share of the map's mass outside the predicted mask;
- ``lesion_x``: median energy inside the *true* mask divided by the true mask's area share (1 =
  uniform map);
- ``sparse``: median Gini index (Quantus ``Sparseness``);
- ``del`` / ``del_rand``: mean deletion AUC of the combination's own target (probability mass of
  the label over the target region; deleted pixels take the image's mean colour) and that of a
  random pixel order; lower than random is faithful;
- ``rand_rho``: median model-randomisation Spearman correlation (Adebayo et al.; < 0.5 passes);
- ``cost``: median seconds of the map on one image divided by one TTA-less forward pass
  (interleaved, ``--timing-images`` images).

Checks (issue 18): corr_mask <= 0.6, lesion_x >= 1.5, del < del_rand, rand_rho < 0.5,
cost <= 3. The combinations passing all checks are marked; the table is what docs/explainability.md
records. This is a measurement script (minutes on 2 cores), not a test.

Usage::

    python benchmarks/saliency_choice.py /work/shared/data/isic2018/val --limit 16
    python benchmarks/saliency_choice.py DATA --model cxr-lungs-unet --label 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: (method, layer or None, target, options) candidates; layers by UNet role name.
CANDIDATES: list[tuple[str, str | None, str, dict[str, Any]]] = [
    ("gradcam", "skip.0", "segment", {}),            # the default until issue 18 (model.1)
    ("layercam", "encoder", "segment", {}),
    ("hirescam", "encoder.2", "segment", {}),
    ("gradcam", "bottleneck", "segment", {}),        # Seg-Grad-CAM as published
    ("gradcam", "encoder.2", "segment", {}),
    ("layercam", "encoder", "border", {}),
    ("smoothgrad", None, "segment", {"samples": 4}),
    ("hirescam", "skip.0", "segment", {}),
    ("gradcam", "skip.0", "border", {}),
    ("gradcampp", "skip.0", "segment", {}),
    ("layercam", "encoder.0,encoder.1", "segment", {}),
    ("ig", None, "segment", {"steps": 8}),
]


def parse_combos(text: str) -> list[tuple[str, str | None, str, dict[str, Any]]]:
    """``method@layer:target`` items separated by ``;`` (layer ``-`` or omitted for none;
    ``method@layer:target+key=value`` adds a method option), e.g.
    ``hirescam@encoder.2:segment;smoothgrad:segment+samples=4``."""
    out = []
    for item in filter(None, (i.strip() for i in text.split(";"))):
        head, _, opts = item.partition("+")
        spec, _, region = head.partition(":")
        method, _, layer = spec.partition("@")
        options: dict[str, Any] = {}
        for kv in filter(None, opts.split("+")):
            k, _, v = kv.partition("=")
            options[k] = int(v) if v.isdigit() else float(v)
        out.append((method, layer if layer and layer != "-" else None, region or "segment",
                    options))
    return out


def _pad(bundle: Any, x: torch.Tensor) -> torch.Tensor:
    from medxai.evaluation.saliency import pad_for_network

    return pad_for_network(bundle, x)


def _load(data: Path, limit: int, bundle: Any, label: int
          ) -> list[tuple[torch.Tensor, torch.Tensor, str]]:
    """``(x, true mask of label, name)`` on the model grid for the first ``limit`` cases of
    ``data``: its ``dataset.json`` validation list (3D Decathlon data), else its image/mask pairs
    (``images/`` + ``masks/`` or ``X.png`` + ``X_mask.png``). Sliding-window (3D) models see the
    whole crop, reoriented as ``predict`` does and zero-padded to the window and the network's
    stride (as ``explain --evaluate``)."""
    from monai.data import MetaTensor

    from medxai.inference import prepare_input
    from medxai.io.datasets import dataset_json_validation, find_pairs
    from medxai.io.readers import read_image
    from medxai.preprocessing.model_grid import bundle_model_grid, to_model_grid

    pairs = (dataset_json_validation(data) or find_pairs(data))[:limit]
    out = []
    for pair in pairs:
        image = read_image(pair.image)
        x, _ = prepare_input(bundle, image)
        x = x.as_subclass(torch.Tensor)
        lab_image = read_image(pair.label)
        lab = lab_image.as_subclass(torch.Tensor)
        if lab.shape[0] > 1:  # an RGB(A) mask picture
            lab = lab[:1]
        if bundle.spatial_dims == 3:
            # the label map on the model grid by the chain that brings the image there
            # on the image's grid, with the image's affine (as training does)
            lab_on_image = MetaTensor(lab_image.as_tensor()[:1].long(), affine=image.affine)
            on_grid, _ = to_model_grid(bundle_model_grid(bundle, kind="label"), lab_on_image)
            truth = (on_grid == label)[None]
            if tuple(truth.shape[2:]) != tuple(x.shape[2:]):
                truth = torch.nn.functional.interpolate(
                    truth.float(), size=tuple(x.shape[2:]), mode="nearest") > 0.5
            x = _pad(bundle, x)
            truth = _pad(bundle, truth.float()) > 0.5
        else:
            m = (lab > (127 if float(lab.max()) > 1 else 0)).float()
            if m.ndim == 4:
                m = m[..., 0]
            truth = torch.nn.functional.interpolate(
                m[None], size=tuple(x.shape[2:]), mode="nearest") > 0.5
        out.append((x, truth, pair.image.name))
    return out


def _groups(cases: list[tuple[torch.Tensor, torch.Tensor, str]]
            ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cases of one shape stacked into batches (2D: one batch; 3D crops: one per shape)."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, (x, _, _) in enumerate(cases):
        by_shape.setdefault(tuple(x.shape), []).append(i)
    return [(torch.cat([cases[i][0] for i in idx]), torch.cat([cases[i][1] for i in idx]))
            for idx in by_shape.values()]


def _cost(net: torch.nn.Module, xs: list[torch.Tensor], method: str, target: Any,
          options: dict[str, Any], n: int) -> float:
    """Median time of one map (target region computed by the method, as in use) over one
    TTA-less forward pass, interleaved per image."""
    from medxai.explain import explain

    ratios = []
    for xi in xs[:n]:
        with torch.inference_mode():
            net(xi)  # warm
            t = time.perf_counter()
            net(xi)
            infer = time.perf_counter() - t
        t = time.perf_counter()
        explain(net, xi, method, target=target, **options)
        ratios.append((time.perf_counter() - t) / max(infer, 1e-6))
    return statistics.median(ratios)


def measure(bundle: Any, data: Path, limit: int, label: int, steps: int, timing_images: int,
            candidates: list[tuple[str, str | None, str, dict[str, Any]]],
            log: Any = None) -> dict[str, Any]:
    from medxai.explain import (
        SegmentationTarget,
        deletion_insertion,
        explain,
        informativeness,
        randomisation_sanity,
    )

    net = bundle.network.eval()
    threshold = bundle.inference.get("threshold")
    cases = _load(data, limit, bundle, label)
    groups = _groups(cases)
    with torch.no_grad():
        logits = [net(x) for x, _ in groups]
    rows = []
    for method, layer, region, options in candidates:
        t0 = time.perf_counter()
        target = SegmentationTarget(label, region, threshold=threshold)
        layer_opt = {"layer": layer} if layer else {}
        cols: dict[str, list[float]] = {k: [] for k in (
            "corr_mask", "corr_probability", "context_share", "lesion_energy_ratio",
            "sparseness", "deletion_auc", "random_deletion_auc", "spearman")}
        for (x, truth), lg in zip(groups, logits):
            pred = target.predicted(lg)
            prob = target.probability(lg)
            keep = pred.flatten(1).any(1) & target.mask(lg).flatten(1).any(1)
            idx = torch.nonzero(keep).flatten()
            if not len(idx):
                continue
            xs, fixed = x[idx], target.frozen(lg[idx])
            sal = explain(net, xs, method, target=fixed, **layer_opt, **options)
            info = informativeness(sal, prob[idx], pred[idx], truth[idx])
            di = deletion_insertion(net, xs, sal, steps=steps, baseline="mean", target=fixed,
                                    insertion=False)
            sanity = randomisation_sanity(net, xs, method, target=fixed, **layer_opt, **options)
            for k in ("corr_mask", "corr_probability", "context_share", "lesion_energy_ratio",
                      "sparseness"):
                cols[k] += list(np.asarray(info[k]).reshape(-1))
            cols["deletion_auc"] += list(np.asarray(di["deletion_auc"]).reshape(-1))
            cols["random_deletion_auc"] += list(np.asarray(di["random_deletion_auc"]).reshape(-1))
            cols["spearman"] += list(np.asarray(sanity["spearman"]).reshape(-1))
        cost = _cost(net, [x for x, _, _ in cases], method, target, {**layer_opt, **options},
                     timing_images)
        med = lambda v: float(np.nanmedian(v)) if len(v) else float("nan")  # noqa: E731
        row = {"method": method, "layer": layer or "-", "target": region,
               "options": options, "n": len(cols["corr_mask"]),
               "corr_mask": med(cols["corr_mask"]), "corr_prob": med(cols["corr_probability"]),
               "context": med(cols["context_share"]),
               "lesion_x": med(cols["lesion_energy_ratio"]),
               "sparse": med(cols["sparseness"]),
               "del": float(np.mean(cols["deletion_auc"])),
               "del_rand": float(np.mean(cols["random_deletion_auc"])),
               "rand_rho": med(cols["spearman"]), "cost": cost}
        row["passes"] = bool(row["corr_mask"] <= 0.6 and row["lesion_x"] >= 1.5
                             and row["del"] < row["del_rand"] and row["rand_rho"] < 0.5
                             and row["cost"] <= 3)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        if log:
            log(format_row(row))
    return {"model": f"{bundle.name} {bundle.version}", "data": str(data),
            "images": [name for _, _, name in cases], "label": label, "threshold": threshold,
            "deletion_steps": steps, "rows": rows}


HEAD = ("| method | layer | target | n | corr mask | corr prob | context | in true lesion (x uniform) "
        "| sparseness | deletion AUC | random | randomisation ρ | cost (x inference) | all checks |")


def format_row(r: dict[str, Any]) -> str:
    opts = ",".join(f"{k}={v}" for k, v in r["options"].items())
    method = r["method"] + (f" ({opts})" if opts else "")
    return (f"| {method} | {r['layer']} | {r['target']} | {r['n']} | {r['corr_mask']:.2f} | "
            f"{r['corr_prob']:.2f} | {r['context']:.2f} | {r['lesion_x']:.2f} | {r['sparse']:.2f} | "
            f"{r['del']:.3f} | {r['del_rand']:.3f} | {r['rand_rho']:.2f} | {r['cost']:.1f} | "
            f"{'yes' if r['passes'] else 'no'} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--model", default=None, help="bundled model name or bundle folder")
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--label", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="deletion steps")
    parser.add_argument("--timing-images", type=int, default=3)
    parser.add_argument("--only", default=None, help="comma-separated method names to keep")
    parser.add_argument("--pick", default=None,
                        help="comma-separated indices into CANDIDATES to run (e.g. 7,8)")
    parser.add_argument("--combos", default=None,
                        help="candidates as 'method@layer:target;...' (see parse_combos), "
                        "instead of CANDIDATES")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    from medxai.models.registry import load_model

    if not args.data.is_dir():
        print(f"{args.data}: not a folder (data absent?)", file=sys.stderr)
        return 2
    bundle = load_model(args.model)
    cands = [c for c in CANDIDATES if not args.only or c[0] in args.only.split(",")]
    if args.pick:
        cands = [CANDIDATES[int(i)] for i in args.pick.split(",")]
    if args.combos:
        cands = parse_combos(args.combos)
    print(HEAD)
    print("|" + "---|" * 14)
    result = measure(bundle, args.data, args.limit, args.label, args.steps, args.timing_images,
                     cands, log=lambda line: print(line, flush=True))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
