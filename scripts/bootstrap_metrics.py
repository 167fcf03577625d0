"""Mean of each metric in a per-image CSV (``medxai evaluate --csv``) with a 95 % bootstrap interval.

A validation mean moves by chance from one sample of images to another; this shows by how much,
so that a setting or checkpoint that wins by a few thousandths is not mistaken for a better one.

    python scripts/bootstrap_metrics.py docs/isic2018_val_per_image.csv [--resamples 5000]
"""

from __future__ import annotations

import argparse
import csv

import numpy as np

METRICS = ("dice", "iou", "isic_score", "pixel_accuracy", "sensitivity", "specificity", "hd95")


def bootstrap(values: np.ndarray, resamples: int, seed: int = 0) -> tuple[float, float]:
    """2.5th and 97.5th percentiles of the mean over ``resamples`` resamples with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--resamples", type=int, default=5000)
    args = ap.parse_args()
    with open(args.csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = sorted({r.get("label", "1") for r in rows})
    print(f"{len(rows)} rows, {args.resamples} bootstrap resamples")
    print("| label | metric | mean | 95 % interval |")
    print("|---|---|---|---|")
    for label in labels:
        for m in METRICS:
            vals = np.array([float(r[m]) for r in rows
                             if r.get("label", "1") == label and r.get(m) not in (None, "")])
            vals = vals[np.isfinite(vals)]  # HD95 is inf/nan where a mask is empty
            if len(vals) == 0:
                continue
            lo, hi = bootstrap(vals, args.resamples)
            print(f"| {label} | {m} | {vals.mean():.4f} | {lo:.4f} to {hi:.4f} |")

if __name__ == "__main__":
    main()
