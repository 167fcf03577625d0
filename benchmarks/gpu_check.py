"""One run that checks medxai's CUDA / mixed-precision paths and prints the GPU table of
docs/benchmarks.md (run it through ``benchmarks/gpu_check.sh``).

    bash benchmarks/gpu_check.sh                    # the GPU (CUDA), about 3-6 minutes
    bash benchmarks/gpu_check.sh --device cpu --quick   # the same checks on the CPU, small

Checks, each on ``--device`` (CUDA runs the network under float16 autocast, as medxai does):

1. ``amp``: the bundled ``isic2018-lesion-unet`` on the photos, its label maps against the CPU's
   float32 ones (Dice of the lesion >= 0.98);
2. ``model-bound``: the same network and test-time augmentation in plain torch on the prepared
   photos, ``--batch-size`` per pass: the rate medxai's runs are compared with;
3. ``segment``: :func:`medxai.segment` over the photos as JPEGs (default outputs, the model's
   saliency), images/s after the first (start-up left out);
4. ``batch``: :func:`medxai.batch.run_batch` over the photos as a DICOM export (the batch
   default outputs, the model's saliency), images/s of its processing (summary.json);
5. ``explain``: Grad-CAM, HiResCAM and SmoothGrad of the network on the device: finite maps in
   [0, 1];
6. ``train``: ``medxai train`` for one short epoch on ISIC 2018 train pairs: finite loss;
7. ``zoo``: the MONAI model zoo's ``spleen_ct_segmentation`` (seeded weights, as the tests make
   it) by sliding window on a CT volume.

Prints one markdown table: status, images/s, the model-bound rate and the ratio, peak GPU memory
(``torch.cuda.max_memory_allocated`` per check) and seconds. Exit status 1 when a check fails.
Photos: ISIC 2018 val (../shared/data), synthetic ones without it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
SHARED = ROOT.parent / "shared" / "data"
MODEL = "isic2018-lesion-unet"


class Checks:
    def __init__(self, device: Any) -> None:
        self.device = device
        self.rows: list[dict[str, Any]] = []

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        import torch

        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        try:
            row = {"check": name, "status": "ok", **fn()}
        except Exception as exc:  # noqa: BLE001 - reported in the table, exit status 1
            traceback.print_exc()
            row = {"check": name, "status": f"FAILED: {type(exc).__name__}: {exc}"[:160]}
        if cuda:
            torch.cuda.synchronize()
            row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        row["seconds"] = round(time.perf_counter() - t, 1)
        self.rows.append(row)
        print(f"  {name}: {row['status']} ({row['seconds']} s)", flush=True)
        return row


def _photos(n: int, folder: Path) -> tuple[list[Path], str]:
    from bench_batch import _photos as bench_photos

    paths = bench_photos(n, folder)
    return paths, "synthetic" if "synthetic" in paths[0].name else "ISIC 2018 val"


def check_amp(bundle: Any, photos: list[Path], device: Any) -> dict[str, Any]:
    import torch

    from medxai.inference import predict
    from medxai.io.readers import load_image

    dice = []
    for p in photos:
        img = load_image(p).image
        a = predict(bundle, img, device=device).labels[0] == 1
        b = predict(bundle, img, device=torch.device("cpu")).labels[0] == 1
        both = int((a & b).sum())
        total = int(a.sum()) + int(b.sum())
        dice.append(1.0 if total == 0 else 2 * both / total)
    worst = min(dice)
    if worst < 0.98:
        raise AssertionError(f"lesion Dice device vs CPU float32 {worst:.4f} < 0.98")
    return {"note": f"lesion Dice vs CPU float32: min {worst:.4f} over {len(dice)} photos"}


def model_bound(bundle: Any, photos: list[Path], device: Any, batch: int) -> dict[str, Any]:
    """The network and its TTA views in plain torch on prepared inputs (autocast on CUDA)."""
    import torch

    from medxai.inference import (
        _tta_views,
        _unview,
        _view,
        autocast_context,
        prepare_input,
        tta_mode,
    )
    from medxai.io.readers import load_image

    net = bundle.network.eval().to(device)
    xs = [prepare_input(bundle, load_image(p).image)[0] for p in photos]
    views = _tta_views(2, tta_mode(bundle.inference), bundle.contract.inference.tta_axes)

    def once() -> None:
        with torch.inference_mode(), autocast_context(device):
            for i in range(0, len(xs), batch):
                x = torch.cat(xs[i:i + batch]).to(device)
                total = None
                for v in views:
                    p = _unview(torch.softmax(net(_view(x, *v)).float(), dim=1), *v)
                    total = p if total is None else total + p
                assert total is not None
                total.cpu()

    once()
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        once()
        best = max(best, len(xs) / (time.perf_counter() - t))
    net.cpu()
    return {"images_per_s": round(best, 2), "note": f"{len(views)} TTA views, batch {batch}"}


def check_segment(photos: list[Path], out: Path, device: str) -> dict[str, Any]:
    from medxai import segment

    segment(photos[:1], MODEL, out / "warm", device=device)  # start-up, model load
    t = time.perf_counter()
    res = segment(photos, MODEL, out / "run", device=device)
    dt = time.perf_counter() - t
    return {"images_per_s": round(len(res) / dt, 2),
            "note": f"default outputs, saliency {res[0].report['saliency']['method']}"}


def check_batch(photos: list[Path], work: Path, device: str, batch: int) -> dict[str, Any]:
    from bench_batch import build_photo_export

    from medxai.batch import run_batch
    from medxai.pipeline import SegmentOptions

    build_photo_export(photos, work / "export")
    summary = run_batch(work / "export", work / "out", model=MODEL,
                        options=SegmentOptions(device=device), batch_size=batch)
    done = summary.process["images_done"]
    if done != len(photos):
        raise AssertionError(f"{done} of {len(photos)} photos done: {summary.failed[:2]}")
    return {"images_per_s": round(float(summary.process["images_per_s"]), 2),
            "note": f"batch defaults, batch size {batch}"}


def check_explain(bundle: Any, photos: list[Path], device: Any) -> dict[str, Any]:
    import torch

    from medxai.explain import explain
    from medxai.inference import network_on, prepare_input
    from medxai.io.readers import load_image

    x, _ = prepare_input(bundle, load_image(photos[0]).image)
    seen = []
    with network_on(bundle.network, device) as net:
        for method, opts in (("gradcam", {}), ("hirescam", {}), ("smoothgrad", {"samples": 4})):
            sal = explain(net, x.to(device), method=method, **opts)
            ok = bool(torch.isfinite(sal).all()) and 0 <= float(sal.min()) <= float(sal.max()) <= 1
            if not ok or tuple(sal.shape[2:]) != tuple(x.shape[2:]):
                raise AssertionError(f"{method}: map {tuple(sal.shape)} not finite in [0, 1]")
            seen.append(method)
    return {"note": ", ".join(seen)}


def check_train(work: Path, device: str, n: int, size: int) -> dict[str, Any]:
    from medxai.training.trainer import TrainConfig, train

    src = SHARED / "isic2018" / "train"
    images = sorted((src / "images").glob("*.jpg"))[:n]
    if not images:
        from PIL import Image

        from medxai.samples import make_dermoscopy_photo

        (work / "data" / "images").mkdir(parents=True)
        (work / "data" / "masks").mkdir(parents=True)
        for i in range(n):
            rgb, mask = make_dermoscopy_photo(96, 96, seed=i)
            Image.fromarray(rgb).save(work / "data" / "images" / f"p{i:03d}.png")
            Image.fromarray((mask > 0).astype("uint8") * 255).save(
                work / "data" / "masks" / f"p{i:03d}_segmentation.png")
    else:
        for sub in ("images", "masks"):
            (work / "data" / sub).mkdir(parents=True)
        for p in images:
            (work / "data" / "images" / p.name).symlink_to(p)
            m = src / "masks" / f"{p.stem}_segmentation.png"
            (work / "data" / "masks" / m.name).symlink_to(m)
    cfg = TrainConfig(data=str(work / "data"), output=str(work / "model"), epochs=1,
                      batch_size=4, spatial_size=[size, size], width=8, depth=3,
                      device=device, warmup_epochs=0)
    t = time.perf_counter()
    res = train(cfg)
    dt = time.perf_counter() - t
    metrics = (work / "model" / "training" / "metrics.csv")
    last = metrics.read_text().splitlines()[-1] if metrics.is_file() else ""
    if "nan" in last.lower():
        raise AssertionError(f"non-finite training metrics: {last}")
    return {"note": f"1 epoch, {n} pairs at {size}x{size}, {dt:.1f} s, epochs {res.epochs_done}"}


def check_zoo(work: Path, device: Any, quick: bool) -> dict[str, Any]:
    import nibabel as nib
    import numpy as np
    import torch

    from medxai.inference import predict
    from medxai.io.readers import load_image
    from medxai.models.registry import load_model

    src = SHARED / "model_zoo" / "spleen_ct_segmentation"
    ct = SHARED / "dicom" / "totalsegmentator_tests" / "tests" / "reference_files" / \
        "example_ct_sm.nii.gz"
    if not (src / "configs").is_dir() or not ct.is_file():
        return {"status": "skipped", "note": f"{src} or {ct} absent"}
    dst = work / "spleen_ct_segmentation"
    shutil.copytree(src / "configs", dst / "configs")
    cfg_path = dst / "configs" / "inference.json"
    cfg = json.loads(cfg_path.read_text())
    roi = [32, 32, 32] if quick else list(cfg["inferer"]["roi_size"])
    cfg["inferer"]["roi_size"] = roi
    cfg_path.write_text(json.dumps(cfg, indent=2))
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config(str(cfg_path))
    p["bundle_root"] = str(dst)
    torch.manual_seed(0)
    net = p.get_parsed_content("network_def").eval()
    (dst / "models").mkdir()
    torch.save(net.state_dict(), dst / "models" / "model.pt")
    image = ct
    if quick:  # a crop, as the tests use
        img = nib.load(ct)
        crop = np.asarray(img.dataobj)[50:74, 40:64, 9:21]
        image = work / "ct_crop.nii.gz"
        nib.save(nib.Nifti1Image(crop, img.affine), image)
    bundle = load_model(dst)
    loaded = load_image(image)
    t = time.perf_counter()
    pred = predict(bundle, loaded.image, device=device)
    dt = time.perf_counter() - t
    if tuple(pred.labels.shape[1:]) != tuple(loaded.image.shape[1:]):
        raise AssertionError(f"labels {tuple(pred.labels.shape)} off the input grid")
    shape = "x".join(map(str, loaded.image.shape[1:]))
    return {"note": f"sliding window roi {roi} on CT {shape}: {dt:.2f} s (seeded weights)"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--quick", action="store_true", help="a few photos, small sizes (CPU test)")
    ap.add_argument("--images", type=int, help="photos (default 64; 3 with --quick)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--skip", default="", help="checks to leave out, e.g. train,zoo")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import torch

    from medxai.inference import resolve_device
    from medxai.models.registry import load_model

    device = resolve_device(args.device)
    n = args.images or (3 if args.quick else 64)
    skip = set(filter(None, args.skip.split(",")))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"medxai GPU check on {device} ({name}); torch {torch.__version__}, CUDA "
          f"{torch.version.cuda}, {n} photos", flush=True)
    checks = Checks(device)
    with tempfile.TemporaryDirectory(prefix="medxai-gpu-check-") as tmp:
        work = Path(tmp)
        photos, where = _photos(n, work / "jpegs")
        bundle = load_model(MODEL)
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            # on the CPU both sides are the CPU's: one photo shows the path runs
            ("amp", lambda: check_amp(bundle, photos[: min(n, 8 if device.type != "cpu" else 1)],
                                      device)),
            ("model-bound", lambda: model_bound(bundle, photos, device, args.batch_size)),
            ("segment", lambda: check_segment(photos, work / "segment", str(device))),
            ("batch", lambda: check_batch(photos, work / "batch", str(device), args.batch_size)),
            ("explain", lambda: check_explain(bundle, photos, device)),
            ("train", lambda: check_train(work / "train", str(device), 8 if args.quick else 64,
                                          64 if args.quick else 192)),
            ("zoo", lambda: check_zoo(work / "zoo", device, args.quick)),
        ]
        for step, fn in steps:
            if step not in skip:
                checks.run(step, fn)
    bound = next((r.get("images_per_s") for r in checks.rows if r["check"] == "model-bound"), None)
    print(f"\nphotos: {where}; device {device} ({name})")
    print("| check | status | images/s | model-bound ratio | peak GPU MiB | seconds | note |")
    print("|---|---|---|---|---|---|---|")
    failed = False
    for r in checks.rows:
        rate = r.get("images_per_s")
        ratio = (f"{rate / bound:.2f}" if rate and bound and r["check"] in ("segment", "batch")
                 else "")
        failed |= str(r["status"]).startswith("FAILED")
        print(f"| {r['check']} | {r['status']} | {rate if rate is not None else ''} | {ratio} | "
              f"{r.get('peak_gpu_mib', '-')} | {r['seconds']} | {r.get('note', '')} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
