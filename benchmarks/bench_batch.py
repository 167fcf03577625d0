"""Benchmark ``medxai batch``: header scan (files/s) and processing (images/s).

    python benchmarks/bench_batch.py                 # defaults: 1200 files, 32 images
    python benchmarks/bench_batch.py --files 5000 --images 96 --workers 1,2,4

Builds a synthetic export in a temporary folder (CT series of 64x64 int16 slices, 256x192 RGB
dermoscopy-like photos as DICOM, some non-DICOM files), and an untrained 2D RGB U-Net bundle of the
size of the shipped skin-lesion model (width 16, depth 5, 160x160). Prints three tables:

1. scan: files/s of the header-only scan, serial, with threads and with worker processes, and of
   a rerun (unchanged files are not read again);
2. model: images/s of the network alone, one image per forward pass (``predict``) against
   batches (``predict_batch``);
3. end to end: images/s of ``run_batch`` (read, predict, write NIfTI + JSON; with or without
   Grad-CAM), in this process and with local worker processes. Worker-process rows include
   starting the workers (importing torch, loading the model).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def build_export(root: Path, n_files: int, n_images: int) -> dict[str, int]:
    """CT slices and non-DICOM files up to ``n_files``, of which ``n_images`` are RGB photos."""
    import pydicom

    from medxai.samples import make_ct_volume, make_dermoscopy_photo, write_ct_series, \
        write_dermoscopy_dicom

    root.mkdir(parents=True)
    template = root / "_template.dcm"
    rgb, _ = make_dermoscopy_photo(256, 192, seed=0)
    write_dermoscopy_dicom(rgb, template)
    base = pydicom.dcmread(template)
    template.unlink()
    for i in range(n_images):
        rgb, _ = make_dermoscopy_photo(256, 192, seed=i)
        ds = base.copy()
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.1476.9.{i // 8}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = \
            f"1.2.826.0.1.3680043.10.1476.9.{i // 8}.{i}"
        ds.InstanceNumber = i + 1
        ds.PixelData = np.ascontiguousarray(rgb).tobytes()
        p = root / f"PHOTOS/SER{i // 8:03d}/IM{i:05d}.dcm"
        p.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(p, enforce_file_format=True)
    n_other = max(0, n_files - n_images)
    n_txt = n_other // 20
    vol, _ = make_ct_volume((64, 64, 50))
    series_dir = root / "_ct_template"
    write_ct_series(vol, series_dir)
    slices = sorted(series_dir.iterdir())
    n_ct = n_other - n_txt
    for k in range(n_ct):
        s, j = divmod(k, len(slices))
        dest = root / f"CT/SER{s:04d}/{slices[j].name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        ds = pydicom.dcmread(slices[j])
        ds.SeriesInstanceUID = f"{ds.SeriesInstanceUID}.{s}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{ds.SOPInstanceUID}.{s}"
        ds.save_as(dest, enforce_file_format=True)
    shutil.rmtree(series_dir)
    for k in range(n_txt):
        (root / f"CT/notes_{k}.txt").write_text("not DICOM\n")
    return {"photos": n_images, "ct_slices": n_ct, "other": n_txt}


def make_bundle(path: Path) -> Path:
    import torch

    from medxai.models.bundle import ModelBundle, network_from_config, save_bundle
    from medxai.models.networks import default_unet_args

    config = {
        "network_def": {"_target_": "monai.networks.nets.UNet",
                        **default_unet_args(2, 3, 2, width=16, depth=5)},
        "input": {"spatial_dims": 2, "channels": 3, "modalities": []},
        "preprocessing": {"spatial_size": [160, 160],
                          "intensity": {"kind": "scale", "a_min": 0.0, "a_max": 255.0}},
        "inference": {"mode": "whole_image", "tta_flips": True},
        "labels": [{"value": 0, "name": "background", "color": [0, 0, 0]},
                   {"value": 1, "name": "lesion", "color": [255, 64, 64]}],
    }
    torch.manual_seed(0)
    net = network_from_config(config).eval()
    return save_bundle(ModelBundle(config=config, metadata={"name": "bench-unet", "version": "0"},
                                   network=net), path)


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    print("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  " + "  ".join("-" * w for w in widths))
    for r in cells[1:]:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)))


def bench_scan(export: Path, workers: list[int]) -> None:
    from medxai.batch.scan import list_files, scan_export, scan_files

    rels = list_files(export)
    rows = []
    t = time.perf_counter()
    first = scan_files(export, rels, executor="serial")
    dt = time.perf_counter() - t
    rows.append(["serial", 1, len(rels), f"{dt:.2f}", f"{len(rels) / dt:.0f}"])
    for mode in ("threads", "processes"):
        for w in workers:
            if w == 1:
                continue
            t = time.perf_counter()
            scan_files(export, rels, workers=w, executor=mode)
            dt = time.perf_counter() - t
            rows.append([mode, w, len(rels), f"{dt:.2f}", f"{len(rels) / dt:.0f}"])
    known = {f.path: f for f in first}
    t = time.perf_counter()
    out = scan_export(export, known=known)
    dt = time.perf_counter() - t
    rows.append(["rerun (cached headers)", "-", len(rels), f"{dt:.2f}", f"{len(rels) / dt:.0f}"])
    rows.append(["(stacks found)", "-", len(out.stacks), "", ""])
    table("1. header scan (stop_before_pixels), incl. listing and grouping for the rerun row",
          ["mode", "workers", "files", "seconds", "files/s"], rows)


def bench_model(bundle_dir: Path, n: int, batch_sizes: list[int]) -> None:
    import torch

    from medxai.batch import predict_batch
    from medxai.inference import predict
    from medxai.models.bundle import load_bundle
    from medxai.samples import make_dermoscopy_photo

    bundle = load_bundle(bundle_dir)
    from monai.data import MetaTensor

    images = []
    for i in range(n):
        rgb, _ = make_dermoscopy_photo(256, 192, seed=i)
        images.append(MetaTensor(torch.as_tensor(rgb.transpose(2, 1, 0).copy())))
    predict(bundle, images[0], device="cpu")  # warm-up
    rows = []
    t = time.perf_counter()
    for img in images:
        predict(bundle, img, device="cpu")
    dt = time.perf_counter() - t
    rows.append(["predict, one image per pass", 1, n, f"{dt:.2f}", f"{n / dt:.2f}"])
    for bs in batch_sizes:
        t = time.perf_counter()
        for i in range(0, n, bs):
            predict_batch(bundle, images[i:i + bs], device="cpu")
        dt = time.perf_counter() - t
        rows.append(["predict_batch", bs, n, f"{dt:.2f}", f"{n / dt:.2f}"])
    table(f"2. the network alone (160x160 U-Net, 3 flips TTA, cpu, torch threads "
          f"{torch.get_num_threads()})", ["mode", "batch", "images", "seconds", "images/s"], rows)


def bench_end_to_end(export: Path, bundle_dir: Path, work: Path, workers: list[int],
                     batch_size: int) -> None:
    from medxai.batch import run_batch
    from medxai.batch import runner
    from medxai.pipeline import SegmentOptions

    rows = []
    for explain in (None, "gradcam"):
        for w in workers:
            out = work / f"out_{explain}_{w}"
            opts = SegmentOptions(formats=["nifti", "json"], explain=explain, device="cpu")
            t = time.perf_counter()
            s = run_batch(export, out, model=bundle_dir, options=opts, workers=w,
                          batch_size=batch_size)
            dt = time.perf_counter() - t
            rows.append([explain or "none", w, s.backend, s.process["images_done"],
                         f"{s.scan['files_per_s']:.0f}", f"{s.process['seconds']:.2f}",
                         f"{s.process['images_per_s']:.2f}", f"{dt:.1f}"])
            shutil.rmtree(out)
    batched = "yes" if runner._PIPELINE_TAKES_PREDICTION else \
        "no (segment_loaded takes no prediction)"
    table(f"3. end to end: run_batch, NIfTI + JSON outputs, batch size {batch_size}, batched "
          f"2D prediction: {batched}",
          ["explain", "workers", "backend", "images", "scan files/s", "process s", "images/s",
           "wall s"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1200, help="files in the export")
    ap.add_argument("--images", type=int, default=32, help="RGB photos among them")
    ap.add_argument("--workers", default="1,2", help="worker counts, e.g. 1,2,4")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--skip", default="", help="sections to skip: scan,model,e2e")
    ap.add_argument("--torch-threads", type=int, help="torch threads of this process")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    warnings.simplefilter("ignore")
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    print(f"medxai batch benchmark: {os.cpu_count()} CPU(s), torch {torch.__version__}, "
          f"{args.files} files ({args.images} photos 256x192 RGB)")
    with tempfile.TemporaryDirectory(prefix="medxai-bench-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        kinds = build_export(work / "export", args.files, args.images)
        print(f"export built in {time.perf_counter() - t:.1f} s: {kinds}")
        bundle_dir = make_bundle(work / "model")
        if "scan" not in skip:
            bench_scan(work / "export", [w for w in workers] + [max(workers) * 2])
        if "model" not in skip:
            bench_model(bundle_dir, max(args.batch_size * 2, 16), [4, args.batch_size])
        if "e2e" not in skip:
            photos = work / "photos_only"
            shutil.copytree(work / "export" / "PHOTOS", photos)
            bench_end_to_end(photos, bundle_dir, work, workers, args.batch_size)


if __name__ == "__main__":
    sys.exit(main())
