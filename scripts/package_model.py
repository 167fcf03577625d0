"""Evaluate a trained bundle on validation data and package it as one of medxai's bundled models
(medxai/models/bundled/<dest>/) with its fit rules, inference settings, metrics and model card.

    python scripts/package_model.py runs/cxr-lungs-v1 ../shared/data/cxr_lungs/val \
        --dest cxr_lungs_unet --card docs/model-card-cxr-lungs.md \
        --input '{"modalities": ["DX", "CR"], "pictures": true}' --tta flips

    python scripts/package_model.py runs/hippo-v1 ../shared/data/hippocampus --val-list \
        --dest hippocampus_unet --card docs/model-card-hippocampus.md \
        --input '{"modalities": ["MR"], "max_extent_mm": [80, 64, 64]}'

``--val-list`` takes the ``validation`` list of the folder's Decathlon ``dataset.json``. The
bundle is written as a MONAI bundle (medxai.models.bundle_form; a run saved in the older form is
rewritten so); the weights are copied unchanged (their SHA-256 stays the one recorded at training
time); the val metrics (mean, median, 95 % bootstrap interval per label) go into configs/metadata.json, the
per-case rows into docs/<name>_val_per_case.csv, and the card (a markdown file written by hand,
with a ``{{metrics}}`` placeholder filled with the table) into docs/README.md of the bundle.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medxai.evaluation.segmentation import evaluate_model
from medxai.io.datasets import dataset_json_validation
from medxai.models.bundle import load_bundle, write_bundle_configs

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "medxai" / "models" / "bundled"


def _val_folder(root: Path, tmp: Path) -> Path:
    """A temporary images/ + labels/ folder of symlinks to the dataset.json validation cases."""
    (tmp / "images").mkdir()
    (tmp / "labels").mkdir()
    for pair in dataset_json_validation(root):
        os.symlink(pair.image, tmp / "images" / pair.image.name)
        os.symlink(pair.label, tmp / "labels" / pair.label.name)
    return tmp


def _bootstrap(values: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    arr = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), (n, len(arr)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _history(run: Path) -> list[dict[str, str]]:
    with open(run / "training" / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def _metrics(rows: list[dict[str, Any]], names: dict[int, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    keys = ("dice", "iou", "hd95", "sensitivity", "specificity", "pixel_accuracy")
    for lab, name in names.items():
        rs = [r for r in rows if int(r["label"]) == lab]
        for k in keys:
            vals = [float(r[k]) for r in rs if k in r and r[k] is not None]
            finite = [v for v in vals if np.isfinite(v)]
            if not finite:
                continue
            lo, hi = _bootstrap(finite)
            out[f"val_{name}_{k}"] = {"mean": round(float(np.mean(finite)), 4),
                                      "median": round(float(np.median(finite)), 4),
                                      "ci95": [round(lo, 4), round(hi, 4)], "n": len(finite)}
    cases = sorted({r["case"] for r in rows})
    per_case = [np.mean([float(r["dice"]) for r in rows if r["case"] == c]) for c in cases]
    lo, hi = _bootstrap(per_case)
    out["val_mean_dice_over_labels"] = {"mean": round(float(np.mean(per_case)), 4),
                                        "ci95": [round(lo, 4), round(hi, 4)], "n": len(cases)}
    return out


def _flat(metrics: dict[str, Any]) -> dict[str, Any]:
    """The card's metrics as metadata.json keeps them: the mean per key, with the bootstrap
    interval of Dice and the mean Dice over labels; ``n`` once."""
    out: dict[str, Any] = {}
    for key, m in metrics.items():
        out[key] = m["mean"]
        if key.endswith("_dice") or key == "val_mean_dice_over_labels":
            out[f"{key}_ci95"] = m["ci95"]
    out["val_n_cases"] = metrics["val_mean_dice_over_labels"]["n"]
    return out


def _table(metrics: dict[str, Any]) -> str:
    lines = ["| metric | mean | median | 95 % bootstrap interval | n |", "|---|---|---|---|---|"]
    for key, m in metrics.items():
        lines.append(f"| {key.removeprefix('val_')} | {m['mean']} | {m.get('median', '')} | "
                     f"{m['ci95'][0]}-{m['ci95'][1]} | {m['n']} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(int(os.environ.get("MEDXAI_THREADS", "2")))
    run: Path = args.run
    bundle = load_bundle(run)
    cfg = bundle.config
    cfg["input"] = {**cfg.get("input", {}), **json.loads(args.input or "{}")}
    if args.tta:
        cfg["inference"]["tta"] = args.tta
    if args.tta_axes is not None:
        cfg["inference"]["tta_axes"] = [int(a) for a in args.tta_axes.split(",")]
    target = BUNDLED / args.dest
    # the measured saliency default of the model being replaced (docs/explainability.md),
    # unless --saliency gives one
    if args.saliency is not None:
        cfg["saliency"] = json.loads(args.saliency)
    elif target.exists() and "saliency" in load_bundle(target).config:
        cfg["saliency"] = load_bundle(target).config["saliency"]
    if args.postprocess is not None:
        cfg["postprocessing"] = json.loads(args.postprocess)
    if args.threshold is not None:
        cfg["inference"]["threshold"] = args.threshold
    meta = json.loads((run / "configs" / "metadata.json").read_text())
    names = {int(lab["value"]): lab["name"] for lab in bundle.foreground_labels}
    if target.exists():
        shutil.rmtree(target)
    for sub in ("configs", "models", "docs"):
        (target / sub).mkdir(parents=True)
    shutil.copy2(run / "models" / "model.pt", target / "models" / "model.pt")
    # a MONAI bundle (form 2: MONAI keys + the "medxai" block; MONAI metadata), whichever form
    # the run was saved in; evaluated as packaged (its contract parsed from what was written)
    write_bundle_configs(target, cfg, meta)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = _val_folder(args.val, Path(tmp)) if args.val_list else args.val
        result = evaluate_model(load_bundle(target), data, device="cpu")
    seconds = time.perf_counter() - t0
    metrics = _metrics(result.rows, names)
    hist = _history(run)
    meta["metrics"] = _flat(metrics)
    meta["training"]["epochs_run"] = len(hist)
    meta["training"]["total_seconds"] = round(sum(float(h["seconds"]) for h in hist), 1)
    meta["evaluation"] = {
        "data": args.data_note or str(args.val),
        "command": f"medxai evaluate --model {meta['name']} {args.val}"
                   + (" (dataset.json validation list)" if args.val_list else ""),
        "inference": {"tta": cfg["inference"].get("tta"),
                      "tta_axes": cfg["inference"].get("tta_axes"),
                      "threshold": cfg["inference"].get("threshold"),
                      "postprocessing": cfg.get("postprocessing") or {}},
        "seconds": round(seconds, 1),
    }
    if args.license:
        meta["license"] = args.license
    if args.intended_use:
        meta["intended_use"] = args.intended_use
    write_bundle_configs(target, cfg, meta)
    csv_path = ROOT / "docs" / f"{meta['name']}_val_per_case.csv"
    with open(csv_path, "w", newline="") as fh:
        fields = list(result.rows[0])
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(result.rows)
    table = _table(metrics)
    if args.card:
        card = args.card.read_text().replace("{{metrics}}", table)
        args.card.write_text(card)
        (target / "docs" / "README.md").write_text(card)
    loaded = load_bundle(target)  # verifies the weights' hash and the settings
    print(table)
    print(json.dumps({"packaged": str(target), "sha256": loaded.weights_sha256,
                      "epochs": len(hist), "best_epoch": meta["training"].get("best_epoch"),
                      "evaluation_seconds": round(seconds, 1)}, indent=2))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("run", type=Path, help="training run folder (a bundle)")
    ap.add_argument("val", type=Path, help="validation folder, or a dataset.json root with "
                                           "--val-list")
    ap.add_argument("--val-list", action="store_true",
                    help="use the 'validation' list of VAL/dataset.json")
    ap.add_argument("--dest", required=True, help="folder name under medxai/models/bundled/")
    ap.add_argument("--input", help="JSON merged into the bundle's input block (fit rules)")
    ap.add_argument("--tta", choices=("none", "flips", "dihedral"))
    ap.add_argument("--postprocess", help="JSON postprocessing block, e.g. "
                                          "'{\"fill_holes\": true}'")
    ap.add_argument("--threshold", type=float)
    ap.add_argument("--tta-axes", help="model-grid axes that flips TTA mirrors, e.g. 0")
    ap.add_argument("--saliency", help="JSON saliency default block (default: the replaced "
                                       "bundle's)")
    ap.add_argument("--card", type=Path, help="model card markdown ({{metrics}} is replaced)")
    ap.add_argument("--data-note", help="what the validation data is, for the card")
    ap.add_argument("--license")
    ap.add_argument("--intended-use")
    main(ap.parse_args())
