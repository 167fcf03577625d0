"""Figure grid for docs/explainability.md: saliency method (rows) x target (columns) on one input.

Each cell is what ``medxai segment --explain METHOD --layer LAYER --target TARGET`` writes
(:func:`medxai.pipeline.compute_saliency` on the input's grid, without TTA), drawn over the image
with the model's mask outlined in white; the ``missed`` column explains the region
:func:`medxai.pipeline.left_out_region` gives (components post-processing removed, outlined in
cyan, and pixels just below the threshold). Under each cell: the map's correlation with the mask
(r) and its share of mass outside the mask (ctx). 3D inputs show the axial slice with the most
mask.

Usage::

    python scripts/saliency_grid.py IMAGE -m isic2018-lesion-unet \\
        --rows "gradcam@skip.0;hirescam@encoder.2;occlusion" -o docs/images/grid.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

TARGETS = ("segment", "border", "missed", "image")


def _slice(arr: np.ndarray, z: int | None) -> np.ndarray:
    """A 2D view (rows = y, columns = x) of a ``(x, y[, z])`` array."""
    a = arr if z is None else arr[..., z]
    return a.T


def _background(image: torch.Tensor, z: int | None) -> np.ndarray:
    img = image.as_subclass(torch.Tensor).float().numpy()
    if img.shape[0] >= 3:
        rgb = np.stack([_slice(img[c], z) for c in range(3)], axis=-1)
        lo, hi = np.percentile(rgb, (1, 99))
    else:
        rgb = np.repeat(_slice(img[0], z)[..., None], 3, axis=-1)
        lo, hi = np.percentile(rgb, (1, 99))
    return np.clip((rgb - lo) / max(hi - lo, 1e-6), 0, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image", type=Path)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--rows", required=True, help="'method@layer;method;...'")
    ap.add_argument("--label", type=int, default=1)
    ap.add_argument("--title", default=None)
    ap.add_argument("--cell", type=float, default=1.55, help="cell size in inches")
    ap.add_argument("--dpi", type=int, default=90)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medxai.errors import MedxaiError
    from medxai.explain import context_share, redundancy
    from medxai.inference import predict
    from medxai.io.readers import load_image
    from medxai.models.registry import load_model
    from medxai.pipeline import compute_saliency, left_out_region

    torch.set_num_threads(1)
    bundle = load_model(args.model)
    loaded = load_image(args.image)
    device = torch.device("cpu")
    pred = predict(bundle, loaded.image, device=device, tta="none")
    mask = (pred.labels[0] == args.label).numpy()
    left, counts = left_out_region(bundle, pred, args.label)
    removed = pred.probabilities.argmax(0).numpy() == args.label
    threshold = bundle.contract.inference.threshold
    if threshold is not None and pred.probabilities.shape[0] == 2:
        removed = pred.probabilities[args.label].numpy() > threshold
    removed &= ~mask
    z = int(mask.sum(axis=(0, 1)).argmax()) if mask.ndim == 3 else None
    bg = _background(loaded.image, z)
    rows = [r.strip() for r in args.rows.split(";") if r.strip()]
    fig, axes = plt.subplots(
        len(rows),
        len(TARGETS) + 1,
        figsize=(args.cell * (len(TARGETS) + 1), args.cell * len(rows) + 0.35),
        squeeze=False,
    )
    for i, row in enumerate(rows):
        method, _, layer = row.partition("@")
        ax = axes[i][0]
        ax.imshow(bg)
        ax.contour(_slice(mask, z), levels=[0.5], colors="white", linewidths=0.8)
        if removed.any():
            ax.contour(_slice(removed, z), levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set_ylabel(row.replace("@", "\n@ "), fontsize=7)
        if i == 0:
            ax.set_title("input, mask", fontsize=8)
        for j, target in enumerate(TARGETS):
            ax = axes[i][j + 1]
            region, sign = None, None
            if target == "missed":
                region, sign = left, -1
            try:
                sal = compute_saliency(
                    bundle,
                    loaded,
                    method,
                    args.label,
                    device,
                    layer=layer or None,
                    target=target,
                    region=region,
                    sign=sign,
                )
            except MedxaiError as exc:
                ax.text(0.5, 0.5, str(exc)[:40], ha="center", va="center", fontsize=5)
                ax.set_axis_off()
                continue
            s = sal[0].numpy()
            m = torch.from_numpy(mask)[None, None]
            r = float(redundancy(sal[None], m.float())[0])
            ctx = float(context_share(sal[None], m)[0])
            ax.imshow(bg)
            ax.imshow(_slice(s, z), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.contour(_slice(mask, z), levels=[0.5], colors="white", linewidths=0.6)
            if target == "missed" and removed.any():
                ax.contour(_slice(removed, z), levels=[0.5], colors="cyan", linewidths=0.6)
            ax.set_xlabel(f"r {r:.2f}  ctx {ctx:.0%}", fontsize=6, labelpad=1)
            if i == 0:
                ax.set_title(target, fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    title = args.title or f"{bundle.name} {bundle.version}: {args.image.name}"
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(pad=0.3, h_pad=0.4, w_pad=0.2)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=args.dpi)
    from PIL import Image

    # a 192-colour palette keeps a photo grid well under the docs' 300 KB per figure
    Image.open(args.output).convert("RGB").quantize(192, method=Image.Quantize.MEDIANCUT).save(
        args.output, optimize=True
    )
    size = args.output.stat().st_size
    print(f"{args.output}: {size / 1024:.0f} KB; left out {counts}", file=sys.stderr)
    return 0 if size < 300 * 1024 else 1


if __name__ == "__main__":
    raise SystemExit(main())
