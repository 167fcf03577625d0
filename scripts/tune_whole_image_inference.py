"""Choose test-time augmentation and post-processing for a 2D whole-image bundle on validation data.

nnU-Net decides its post-processing (keep the largest connected component or not) on validation
data; this script does the same for medxai's whole-image (photo) bundles and also compares
test-time augmentation sets. It runs the network once per image and augmentation, caches the
lesion probability on the mask's grid, then scores every combination of

- TTA: none, flips (identity + one flip per axis, 3 passes), dihedral (8 flips/turns);
- threshold on the foreground probability;
- post-processing: none, keep the largest component, fill holes, both;

with the ISIC 2018 metrics (mean Dice, IoU, thresholded-Jaccard challenge score, pixel accuracy).
Binary (one foreground label) bundles only.

    python scripts/tune_whole_image_inference.py BUNDLE ../shared/data/isic2018/val [--limit N]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

from medxai.inference import _tta_views, _unview, _view
from medxai.io.photo import read_photo_array
from medxai.models.bundle import load_bundle
from medxai.postprocess import postprocess_labels
from medxai.training.datasets import find_pairs
from medxai.preprocessing.intensity import ScaleIntensityFromBundle
from medxai.preprocessing.spatial import resize_image, resize_probabilities

DIHEDRAL = _tta_views(2, "dihedral")  # medxai's 8 views, in medxai's order
# The members equal to the identity and to a flip of axis 0 and of axis 1 (square inputs): the
# "flips" set, taken from the same network passes.
FLIP_MEMBERS = (0, 5, 7)


def _dihedral_probabilities(net, x: torch.Tensor) -> list[torch.Tensor]:
    """Softmax of each dihedral view of ``x`` (1, C, H, W), brought back to ``x``'s orientation."""
    probs = torch.softmax(net(torch.cat([_view(x, *v) for v in DIHEDRAL])).float(), 1)
    return [_unview(probs[i:i + 1], *v) for i, v in enumerate(DIHEDRAL)]


def lesion_probabilities(bundle, pairs, sizes: list[int] | None = None
                         ) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray]]:
    """Foreground probabilities on each mask's grid per TTA set; with ``sizes`` (input sizes
    besides the bundle's), also ``dihedral+S``: the dihedral mean at the bundle's size and S, for
    each size S and for all of them together."""
    net = bundle.network.eval()
    pre = bundle.preprocessing
    scale = ScaleIntensityFromBundle(pre.get("intensity"))
    out: dict[str, list[np.ndarray]] = {"none": [], "flips": [], "dihedral": []}
    gts = []
    with torch.inference_mode():
        for pair in pairs:
            img, _ = read_photo_array(pair.image)
            lab, _ = read_photo_array(pair.label)
            gts.append(lab[0] > 127)
            grid = tuple(img.shape[1:])
            base = scale(torch.from_numpy(img).float())
            x = resize_image(base, pre["spatial_size"])[None]
            d = _dihedral_probabilities(net, x)
            for name, plist in (("none", d[:1]), ("flips", [d[i] for i in FLIP_MEMBERS]),
                                ("dihedral", d)):
                p = torch.cat(plist).mean(0)
                out[name].append(resize_probabilities(p, grid)[1].numpy().astype(np.float16))
            if sizes:
                base_p = resize_probabilities(torch.cat(d).mean(0), grid)[1]
                extra = {}
                for size in sizes:
                    xs = resize_image(base, [size] * len(pre["spatial_size"]))[None]
                    ds = torch.cat(_dihedral_probabilities(net, xs))
                    extra[size] = resize_probabilities(ds.mean(0), grid)[1]
                combos = [[s] for s in sizes] + ([list(sizes)] if len(sizes) > 1 else [])
                for combo in combos:
                    name = "dihedral+" + "+".join(map(str, combo))
                    p = (base_p + sum(extra[s] for s in combo)) / (1 + len(combo))
                    out.setdefault(name, []).append(p.numpy().astype(np.float16))
    return out, gts


def postprocess(mask: np.ndarray, largest: bool, fill: bool) -> np.ndarray:
    """The bundle post-processing medxai applies (:func:`medxai.postprocess.postprocess_labels`)."""
    spec = {"keep_largest_component": largest, "fill_holes": fill}
    labels = torch.from_numpy(mask.astype(np.uint8))[None]
    return postprocess_labels(labels, spec)[0].numpy().astype(bool)


def scores(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, float]:
    """Dice, IoU and pixel accuracy: the counting part of medxai.training.metrics.binary_metrics,
    without its HD95, which would make scoring every combination minutes slower."""
    tp = np.count_nonzero(pred & gt)
    fp = np.count_nonzero(pred & ~gt)
    fn = np.count_nonzero(~pred & gt)
    tn = pred.size - tp - fp - fn
    denom = 2 * tp + fp + fn
    dice = 1.0 if denom == 0 else 2 * tp / denom
    iou = 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)
    return dice, iou, (tp + tn) / pred.size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("data")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--thresholds", default="0.4,0.45,0.5,0.55")
    ap.add_argument("--sizes", default="",
                    help="extra square input sizes for multi-scale TTA, e.g. 224 (multiples of 16)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    bundle = load_bundle(args.bundle)
    pairs = find_pairs(args.data)[: args.limit]
    t0 = time.perf_counter()
    probs, gts = lesion_probabilities(bundle, pairs, [int(v) for v in args.sizes.split(",") if v])
    print(f"{len(pairs)} images, network passes in {time.perf_counter() - t0:.0f} s")
    rows = []
    for tta, thr, (largest, fill) in itertools.product(
            probs, [float(t) for t in args.thresholds.split(",")],
            [(False, False), (True, False), (False, True), (True, True)]):
        s = np.array([scores(postprocess(p > thr, largest, fill), g)
                      for p, g in zip(probs[tta], gts)])
        j = s[:, 1]
        rows.append((tta, thr, largest, fill, s[:, 0].mean(), j.mean(),
                     np.where(j < 0.65, 0, j).mean(), s[:, 2].mean(), int((j < 0.65).sum())))
    print("| TTA | threshold | largest | fill holes | Dice | IoU | ISIC score | pixel acc | J<0.65 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -r[6]):
        print(f"| {r[0]} | {r[1]:.2f} | {'yes' if r[2] else 'no'} | {'yes' if r[3] else 'no'} | "
              f"{r[4]:.4f} | {r[5]:.4f} | {r[6]:.4f} | {r[7]:.4f} | {r[8]} |")


if __name__ == "__main__":
    main()
