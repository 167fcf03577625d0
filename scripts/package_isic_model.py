"""Evaluate a trained ISIC bundle on the validation split at full mask resolution and package it
as medxai's bundled model (medxai/models/bundled/isic2018_lesion_unet) with its model card.

    python scripts/package_isic_model.py runs/isic2018-unet-v12 ../shared/data/isic2018/val \
        --tta dihedral --postprocess keep_largest_component,fill_holes --threshold 0.45 \
        --stages-from medxai/models/bundled/isic2018_lesion_unet

``--tta``, ``--threshold`` and ``--postprocess`` set the packaged bundle's test-time augmentation,
foreground threshold and label post-processing (choose them with
scripts/tune_whole_image_inference.py); the evaluation uses them. ``--stages-from BUNDLE`` names
the bundle the run was fine-tuned from: its training record (and its own earlier stages) go into
``training.previous_stages``, so the card holds every command from scratch to the shipped
weights. The metrics go into configs/metadata.json and the card; the weights are copied unchanged
(their SHA-256 stays the one recorded at training time).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path

import torch

from medxai.models.bundle import _check_inference_options, load_bundle
from medxai.training.evaluate import evaluate_model, write_csv

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "medxai" / "models" / "bundled" / "isic2018_lesion_unet"


def _history(run: Path) -> list[dict[str, str]]:
    path = run / "training" / "metrics.csv"
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _stages(source: Path) -> list[dict[str, object]]:
    """The training stages behind bundle ``source``: its earlier stages, then its own."""
    meta = json.loads((source / "configs" / "metadata.json").read_text())
    training = meta["training"]
    stages = training.get("previous_stages", [])
    own = {"version": meta["version"], "command": training["command"],
           "initialised_from": (f"{meta['name']} {stages[-1]['version']} (previous_stages"
                                f"[{len(stages) - 1}])" if stages else None),
           "epochs_run": training.get("epochs_run"), "total_seconds": training.get("total_seconds"),
           "weights_sha256": meta["weights_sha256"], "val_metrics": meta.get("metrics", {}),
           "inference": meta.get("evaluation", {}).get("inference")}
    return [*stages, own]


def main(run: Path, val: Path, tta: str | None, postprocess: list[str],
         threshold: float | None, stages_from: Path | None) -> None:
    torch.set_num_threads(2)
    bundle = load_bundle(run)
    if threshold is not None:
        bundle.config["inference"]["threshold"] = threshold
    if tta:
        bundle.config["inference"].pop("tta_flips", None)
        bundle.config["inference"]["tta"] = tta
    if postprocess:
        bundle.config["postprocessing"] = {step: True for step in postprocess}
    _check_inference_options(bundle.config, run)  # before anything is evaluated or replaced
    meta = json.loads((run / "configs" / "metadata.json").read_text())
    if stages_from:
        started = meta["training"].get("initialised_from_sha256")
        source_sha = json.loads((stages_from / "configs" / "metadata.json").read_text())[
            "weights_sha256"]
        if started and started != source_sha:
            raise SystemExit(f"{run} was initialised from weights {started[:12]}..., but "
                             f"--stages-from {stages_from} holds {source_sha[:12]}...: name the "
                             "bundle the run started from")
    t0 = time.perf_counter()
    result = evaluate_model(bundle, val, device="cpu")
    seconds = time.perf_counter() - t0
    summary = result.summary["1"]
    metrics = {f"val_{k}": round(v["mean"], 4) for k, v in summary.items()}
    metrics["val_median_dice"] = round(summary["dice"]["median"], 4)
    metrics["val_n_images"] = summary["dice"]["n"]
    hist = _history(run)
    meta["metrics"] = {**meta.get("metrics", {}), **metrics}
    meta["training"]["epochs_run"] = len(hist)
    meta["training"]["total_seconds"] = round(sum(float(h["seconds"]) for h in hist), 1)
    if stages_from:
        stages = _stages(stages_from)
        meta["training"]["previous_stages"] = stages
        meta["training"]["initialised_from"] = (
            f"{meta['name']} {stages[-1]['version']} ({meta['training']['initialised_from']}; "
            f"previous_stages[{len(stages) - 1}])")
        meta["training"]["total_seconds_all_stages"] = round(
            meta["training"]["total_seconds"] + sum(st.get("total_seconds") or 0 for st in stages), 1)
    meta["evaluation"] = {
        "data": "ISIC 2018 Task 1 validation split of ../shared/data (400 images, 512x512 masks)",
        "resolution": "predictions resized to each mask's grid (512x512) before scoring",
        "command": f"medxai evaluate --model {TARGET.relative_to(ROOT)} {val}",
        "inference": {"tta": bundle.config["inference"].get("tta"),
                      "threshold": bundle.config["inference"].get("threshold"),
                      "postprocessing": bundle.config.get("postprocessing") or {}},
        "seconds": round(seconds, 1),
    }
    meta["license"] = "weights: CC-BY-NC 4.0 (trained on ISIC 2018 data); code: Apache-2.0"
    meta["intended_use"] = ("research on skin-lesion segmentation in dermoscopy photographs; "
                            "not a medical device, not for diagnosis")
    if TARGET.exists():  # after reading --stages-from, which may be TARGET
        shutil.rmtree(TARGET)
    (TARGET / "configs").mkdir(parents=True)
    (TARGET / "models").mkdir()
    (TARGET / "docs").mkdir()
    shutil.copy2(run / "models" / "model.pt", TARGET / "models" / "model.pt")
    (TARGET / "configs" / "inference.json").write_text(json.dumps(bundle.config, indent=2) + "\n")
    (TARGET / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    write_csv(result.rows, ROOT / "docs" / "isic2018_val_per_image.csv")
    card = (ROOT / "docs" / "model-card.md").read_text() if (ROOT / "docs" / "model-card.md").exists() else ""
    (TARGET / "docs" / "README.md").write_text(card)
    print(json.dumps({"metrics": metrics, "evaluation_seconds": round(seconds, 1),
                      "epochs": len(hist), "best_epoch": meta["training"]["best_epoch"]}, indent=2))
    loaded = load_bundle(TARGET)  # verifies the hash
    print("packaged", TARGET, loaded.weights_sha256)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="training run folder (a bundle)")
    ap.add_argument("val", type=Path, help="validation folder (images/ + masks/)")
    ap.add_argument("--tta", choices=("none", "flips", "dihedral"))
    ap.add_argument("--postprocess", default="",
                    help="comma-separated: keep_largest_component,fill_holes")
    ap.add_argument("--threshold", type=float, help="foreground probability cut (default: argmax)")
    ap.add_argument("--stages-from", type=Path,
                    help="the bundle the run was fine-tuned from (recorded as previous stages)")
    args = ap.parse_args()
    main(args.run, args.val, args.tta, [s for s in args.postprocess.split(",") if s],
         args.threshold, args.stages_from)
