"""medxai's own runner against the MONAI runner, on medxai's shipped bundles, in the same run.

    python benchmarks/bench_runners.py                 # 6 inputs per model, 5 repeats
    python benchmarks/bench_runners.py --images 4 --repeats 3 --json

Every shipped bundle is a MONAI bundle: its ``preprocessing``/``inferer``/``postprocessing`` keys
run under :class:`medxai.inference.MonaiRunner` (loaded by ``load_monai_bundle``, as any zoo
bundle), and its ``medxai`` block under :class:`medxai.inference.MedxaiRunner` (medxai's fused
equivalent). Both predict each input with test-time augmentation off (the MONAI runner takes
no views), threshold and clean-up on; the script checks that the label maps are equal and
prints CPU ms per input (median over ``--repeats`` interleaved rounds, one torch thread) and
the ratio. Inputs: val images of ../shared/data (ISIC 512x512 photos, Shenzhen 512x512 CXR,
hippocampus MR volumes); without it, synthetic photos for the ISIC model only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_utils import (  # noqa: E402
    SHARED,
    emit,
    header_line,
    interleaved,
    machine_info,
    markdown_table,
    median,
    set_threads,
    temp_dir,
)

import medxai  # noqa: E402

BUNDLED = Path(medxai.__file__).parent / "models" / "bundled"
MODELS = {
    "isic2018_lesion_unet": ("isic2018", "val", "images"),
    "cxr_lungs_unet": ("cxr_lungs", "val"),
    "hippocampus_unet": ("hippocampus", "imagesTr"),
}


def _inputs(data: tuple[str, ...], n: int, tmp: Path) -> list[Path]:
    root = SHARED.joinpath(*data)
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.is_file() and "_mask" not in p.name)
        return files[:n]
    if data[0] != "isic2018":
        return []
    from PIL import Image

    from medxai.samples import make_dermoscopy_photo

    out = []
    for i in range(n):
        rgb, _ = make_dermoscopy_photo(512, 512, seed=i)
        Image.fromarray(rgb).save(tmp / f"photo{i}.png")
        out.append(tmp / f"photo{i}.png")
    return out


def measure(folder: str, files: list[Path], repeats: int) -> dict[str, Any]:
    import torch

    from medxai.inference import predict
    from medxai.models.monai_bundle import load_monai_bundle
    from medxai.models.registry import load_model

    own = load_model(str(BUNDLED / folder))
    zoo = load_monai_bundle(BUNDLED / folder)
    images = [(medxai.read_image(p), str(p)) for p in files]
    for image, src in images:
        a = predict(own, image, device="cpu", tta="none", source=src).labels
        b = predict(zoo, image, device="cpu", source=src).labels
        if not torch.equal(a, b):
            raise SystemExit(f"{folder}: the two runners' label maps differ on {src}")

    def run(bundle: Any, **kw: Any) -> None:
        for image, src in images:
            predict(bundle, image, device="cpu", source=src, **kw)

    times = interleaved(
        {"medxai": lambda: run(own, tta="none"), "monai": lambda: run(zoo)}, repeats
    )
    mx = median(times.cpu["medxai"]) / len(images) * 1000
    mo = median(times.cpu["monai"]) / len(images) * 1000
    return {"model": own.name, "inputs": len(images), "medxai_ms": mx, "monai_ms": mo}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    set_threads(1)
    rows = []
    with temp_dir() as tmp:
        for folder, data in MODELS.items():
            files = _inputs(data, args.images, tmp)
            if files:
                rows.append(measure(folder, files, args.repeats))
    table = markdown_table(
        ["model", "inputs", "medxai runner CPU ms", "MONAI runner CPU ms", "MONAI / medxai"],
        [
            [
                r["model"],
                r["inputs"],
                f"{r['medxai_ms']:.1f}",
                f"{r['monai_ms']:.1f}",
                f"{r['monai_ms'] / r['medxai_ms']:.2f}",
            ]
            for r in rows
        ],
    )
    info = machine_info(1)
    emit({"machine": info, "rows": rows}, header_line(info) + "\n\n" + table, args.json)


if __name__ == "__main__":
    main()
