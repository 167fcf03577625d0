"""Cost of one preview.png: the old three-panel preview (``write_preview_png``) against the
clinician's preview (``write_clinical_preview``: titles, colour bar, sizes, per-label rows,
three slices for volumes), on real inputs with their real masks and a smooth stand-in saliency
map (the drawing cost does not depend on the map's values).

    python benchmarks/preview_cost.py [--repeat 5]

Prints one row per input: median seconds of each (after one warm-up call, so the font load is
not counted; it is printed on its own) and the ratio new / old.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"

from medxai.io.writers.png import write_preview_png  # noqa: E402
from medxai.io.writers.preview import PreviewInfo, _font, write_clinical_preview  # noqa: E402


def _picture(path: Path, mask: Path) -> tuple[np.ndarray, np.ndarray]:
    img = np.asarray(Image.open(path))
    img = img[..., None] if img.ndim == 2 else img
    lab = (np.asarray(Image.open(mask).convert("L")) > 127).astype(np.uint8)
    return np.ascontiguousarray(np.transpose(img, (2, 1, 0))), np.ascontiguousarray(lab.T)


def _inputs() -> list[tuple[str, np.ndarray, np.ndarray, list[dict], tuple | None]]:
    import nibabel as nib

    out = []
    photo = ROOT / "sample_data" / "dermoscopy.jpg"
    if photo.exists():
        img, lab = _picture(photo, photo.with_name("dermoscopy_mask.png"))
        out.append(("photo (dermoscopy)", img, lab, [{"value": 1, "name": "lesion"}], None))
    xray = SHARED / "cxr_lungs" / "val" / "CHNCXR_0007_0.png"
    if xray.exists():
        img, lab = _picture(xray, xray.with_name("CHNCXR_0007_0_mask.png"))
        out.append(("X-ray (CXR)", img, lab, [{"value": 1, "name": "lungs"}], (0.5, 0.5)))
    vol = SHARED / "hippocampus" / "imagesTr" / "hippocampus_001.nii.gz"
    if vol.exists():
        img = np.asarray(nib.load(vol).dataobj, dtype=np.float32)[None]
        lab = np.asarray(nib.load(str(vol).replace("imagesTr", "labelsTr")).dataobj).astype(
            np.uint8
        )
        info = [{"value": 1, "name": "anterior"}, {"value": 2, "name": "posterior"}]
        out.append(("volume (hippocampus MR, 2 labels)", img, lab, info, (1.0, 1.0, 1.0)))
    return out


def _smooth(shape: tuple[int, ...]) -> np.ndarray:
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    return np.exp(-sum(g**2 for g in grids) * 3).astype(np.float32)


def _median(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    t = time.perf_counter()
    _font(13), _font(11)
    print(f"font load (once per process): {time.perf_counter() - t:.3f} s")
    print(f"{'input':36} {'shape':>16} {'old s':>8} {'new s':>8} {'new/old':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, img, lab, info, spacing in _inputs():
            sal = _smooth(lab.shape)
            maps = {int(e["value"]): sal for e in info}
            old = _median(
                lambda: write_preview_png(img, lab, sal, Path(tmp) / "a.png", info), args.repeat
            )
            meta = PreviewInfo("bench-model", "1.0", "gradcam", "segment", spacing)
            new = _median(
                lambda: write_clinical_preview(img, lab, maps, Path(tmp) / "b.png", info, meta),
                args.repeat,
            )
            shape = "x".join(map(str, lab.shape))
            print(f"{name:36} {shape:>16} {old:8.3f} {new:8.3f} {new / old:8.2f}")


if __name__ == "__main__":
    main()
