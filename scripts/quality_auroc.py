"""Does the per-case quality score find the bad segmentations? AUROC of "case Dice < 0.8".

For each ISIC 2018 val image (the first N in name order), the bundled isic2018-lesion-unet
segments it as ``medxai segment`` does (dihedral TTA, threshold, post-processing, on the
512x512 input grid), the TTA views and 8 MC dropout passes (seed 0) give the uncertainty map
(:mod:`medxai.uncertainty`), and the case's Dice against the reference mask is measured. Each
candidate score is then judged by the AUROC of "Dice < 0.8" (higher score = more doubtful), with a
95 % bootstrap interval over cases, and the best two compared by a paired bootstrap.

    python scripts/quality_auroc.py --limit 200 --csv docs/uncertainty_isic_val.csv \\
        --plot docs/uncertainty_roc.png
    python scripts/quality_auroc.py --from-csv docs/uncertainty_isic_val.csv   # table only

These are validation figures (the val split chose the model's checkpoint and threshold).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "isic2018" / "val"
BAD_DICE = 0.8

#: candidate -> (column, sign): score = sign * column, higher = more doubtful
CANDIDATES = {
    "TTA border entropy, ring (1 px)": ("tta_border_w1", 1),
    "TTA border entropy, band 4 px": ("tta_border_w4", 1),
    "TTA border entropy, band 8 px": ("tta_border_w8", 1),
    "TTA border entropy, band 16 px": ("tta_border_w16", 1),
    "TTA mean entropy (image)": ("tta_mean_uncertainty", 1),
    "TTA entropy per foreground pixel": ("tta_uncertainty_per_area", 1),
    "TTA 1 - expected (soft) Dice = 1 - quality_score (shipped)": ("tta_expected_dice", -1),
    "TTA 1 - view agreement (Dice)": ("tta_view_agreement", -1),
    "MC border entropy, band 4 px": ("mc_border_w4", 1),
    "MC entropy per foreground pixel": ("mc_uncertainty_per_area", 1),
    "MC 1 - expected (soft) Dice": ("mc_expected_dice", -1),
    "MC 1 - sample agreement (Dice)": ("mc_view_agreement", -1),
    "1 - max foreground probability (baseline)": ("max_probability", -1),
}


def auroc(score: np.ndarray, bad: np.ndarray) -> float:
    """Mann-Whitney AUROC: P(score of a bad case > score of a good case), ties count half."""
    from scipy.stats import rankdata

    n_bad, n_good = int(bad.sum()), int((~bad).sum())
    if n_bad == 0 or n_good == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[bad].sum() - n_bad * (n_bad + 1) / 2) / (n_bad * n_good))


def bootstrap_auroc(
    score: np.ndarray, bad: np.ndarray, resamples: int, seed: int = 0
) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        idx = rng.integers(0, len(score), len(score))
        a = auroc(score[idx], bad[idx])
        if np.isfinite(a):
            values.append(a)
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def paired_difference(
    a: np.ndarray, b: np.ndarray, bad: np.ndarray, resamples: int, seed: int = 1
) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        idx = rng.integers(0, len(a), len(a))
        d = auroc(a[idx], bad[idx]) - auroc(b[idx], bad[idx])
        if np.isfinite(d):
            diffs.append(d)
    return (
        auroc(a, bad) - auroc(b, bad),
        float(np.percentile(diffs, 2.5)),
        float(np.percentile(diffs, 97.5)),
    )


def measure(limit: int | None, csv_path: Path | None, mc_samples: int, skip: int = 0) -> list[dict]:
    import torch

    from medxai.inference import predict
    from medxai.io.readers import load_image
    from medxai.models.registry import load_model
    from medxai.uncertainty import (
        mc_dropout_samples,
        quality_scores,
        summarise,
        tta_accumulator,
    )

    if not DATA.is_dir():
        sys.exit(f"ISIC val data not found at {DATA}")
    torch.set_num_threads(1)
    bundle = load_model("isic2018-lesion-unet")
    images = sorted((DATA / "images").glob("*.jpg"))[:limit][skip:]
    rows = []
    fh = open(csv_path, "w", newline="") if csv_path else None  # noqa: SIM115
    writer = None
    t0 = time.perf_counter()
    for n, path in enumerate(images, 1):
        loaded = load_image(path)
        truth = load_image(DATA / "masks" / f"{path.stem}_segmentation.png").image[0].numpy() > 127
        acc = tta_accumulator(bundle)
        pred = predict(
            bundle, loaded.image, device="cpu", each_view=lambda _i, p, acc=acc: acc.add(p)
        )
        samples = acc.finish("tta")
        tta = summarise(samples, pred)
        mc_samples_ = mc_dropout_samples(bundle, loaded.image, "cpu", samples=mc_samples, seed=0)
        mc = summarise(mc_samples_, pred, seed=0)
        labels = pred.labels[0].numpy()
        if labels.ndim == 3:
            labels = labels[..., 0]
        fg = labels > 0
        total = int(fg.sum()) + int(truth.sum())
        dice = 2 * int((fg & truth).sum()) / total if total else 1.0
        row = {"image": path.stem, "dice": round(dice, 6)}
        for prefix, unc in (("tta", tta), ("mc", mc)):
            for k, v in unc.scores.items():
                row[f"{prefix}_{k}"] = v
            for w in (1, 4, 8, 16):
                s = quality_scores(unc.entropy, pred.labels, pred.probabilities, border_width=w)
                row[f"{prefix}_border_w{w}"] = s["border_uncertainty"]
        row["max_probability"] = float(pred.probabilities[1].max())
        rows.append(row)
        if fh is not None:
            if writer is None:
                writer = csv.DictWriter(fh, fieldnames=list(row))
                writer.writeheader()
            writer.writerow(row)
            fh.flush()
        if n % 10 == 0:
            print(
                f"{n}/{len(images)} images, {(time.perf_counter() - t0) / n:.2f} s each",
                file=sys.stderr,
            )
    if fh is not None:
        fh.close()
    return rows


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return [
            {k: (float(v) if k != "image" and v not in ("", "None") else v) for k, v in r.items()}
            for r in csv.DictReader(fh)
        ]


def table(rows: list[dict], resamples: int) -> list[tuple[str, float, float, float]]:
    dice = np.array([float(r["dice"]) for r in rows])
    bad = dice < BAD_DICE
    print(
        f"{len(rows)} cases, {int(bad.sum())} with Dice < {BAD_DICE} "
        f"(mean Dice {dice.mean():.4f}); {resamples} bootstrap resamples"
    )
    print()
    print("| score (higher = more doubtful) | AUROC | 95 % interval |")
    print("|---|---|---|")
    out = []
    for name, (col, sign) in CANDIDATES.items():
        if col not in rows[0]:
            continue
        raw = np.array([np.nan if r[col] in ("", "None", None) else float(r[col]) for r in rows])
        # an undefined score (no border, no foreground) counts as the most doubtful
        score = np.where(np.isfinite(raw), sign * raw, np.inf)
        a = auroc(score, bad)
        lo, hi = bootstrap_auroc(score, bad, resamples)
        out.append((name, a, lo, hi))
        print(f"| {name} | {a:.3f} | {lo:.3f} to {hi:.3f} |")
    return out


def scores_of(rows: list[dict], name: str) -> np.ndarray:
    col, sign = CANDIDATES[name]
    raw = np.array([np.nan if r[col] in ("", "None", None) else float(r[col]) for r in rows])
    return np.where(np.isfinite(raw), sign * raw, np.inf)


def plot(rows: list[dict], results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    bad = np.array([float(r["dice"]) for r in rows]) < BAD_DICE
    best = sorted(results, key=lambda r: -r[1])[:4]
    shipped = next((r for r in results if "shipped" in r[0]), None)
    if shipped is not None and shipped not in best:
        best.append(shipped)
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=90)
    for name, a, lo, hi in best:
        s = scores_of(rows, name)
        s = np.where(np.isinf(s), np.nanmax(s[np.isfinite(s)]) + 1, s)
        fpr, tpr, _ = roc_curve(bad, s)
        ax.plot(fpr, tpr, lw=1.6, label=f"{name}: {a:.2f} [{lo:.2f}, {hi:.2f}]")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate (good cases flagged)")
    ax.set_ylabel("true positive rate (Dice < 0.8 cases flagged)")
    ax.set_title(f"ISIC 2018 val, first {len(rows)} images: AUROC [95% CI]", fontsize=9)
    ax.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"\nwrote {path} ({path.stat().st_size // 1024} KB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=200, help="first N val images by name")
    ap.add_argument("--mc-samples", type=int, default=8)
    ap.add_argument("--csv", type=Path, help="write the per-case values here")
    ap.add_argument("--skip", type=int, default=0, help="leave out the first S of the N")
    ap.add_argument(
        "--from-csv", type=Path, nargs="+", help="table (and plot) from earlier --csv files"
    )
    ap.add_argument("--plot", type=Path, help="ROC plot PNG")
    ap.add_argument("--resamples", type=int, default=2000)
    args = ap.parse_args()
    if args.from_csv:
        rows = [r for path in args.from_csv for r in read_csv(path)]
    else:
        rows = measure(args.limit, args.csv, args.mc_samples, args.skip)
    results = table(rows, args.resamples)
    ranked = sorted(results, key=lambda r: -r[1])
    if len(ranked) >= 2:
        a, b = ranked[0][0], ranked[1][0]
        bad = np.array([float(r["dice"]) for r in rows]) < BAD_DICE
        d, lo, hi = paired_difference(scores_of(rows, a), scores_of(rows, b), bad, args.resamples)
        print(
            f"\nbest minus second ({a} - {b}): {d:+.3f}, paired 95 % interval {lo:+.3f} to {hi:+.3f}"
        )
    if args.plot:
        plot(rows, results, args.plot)


if __name__ == "__main__":
    main()
