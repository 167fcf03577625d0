"""Peak memory of ``medxai batch`` on a 10,000-file export (issue 17 item 2: memory bounded).

    python benchmarks/bench_batch_memory.py                     # 10,000 files, see --runs
    python benchmarks/bench_batch_memory.py --runs 1000:100,10000:100,10000:400

Generates exports in a temporary folder (deleted after; nothing is committed): ``N`` DICOM
files of which ``M`` are 64x64 greyscale 2D pictures (modality OT, 100 per series) that a tiny
untrained 2D U-Net bundle (64x64 input, flip TTA) segments with the default outputs (every DICOM
format, PNG, NIfTI, JSON) and Grad-CAM, and the rest are 64x64 CT slices in series of 50 (3D
stacks: scanned, recorded as not fitting the 2D model, never decoded). Each run is a fresh
``medxai batch`` process, which reports at exit its own peak RSS (``ru_maxrss``) and that of its
largest child (a header-scan worker process, or a writer process with ``--writers N``). Comparing
runs shows what grows with the number of files (scan, manifest) and what grows with the number of
images processed (nothing, if the pipeline's queues are bounded).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# the child reports its own peak RSS and its children's (the header-scan worker processes)
_CLI = ("import atexit, resource, sys, warnings; warnings.simplefilter('ignore'); "
        "atexit.register(lambda: sys.stderr.write('PEAK_KIB %d %d\\n' % ("
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
        "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))); "
        "from medxai.cli.main import main; sys.exit(main())")


def build_export(root: Path, n_files: int, n_images: int) -> None:
    """``n_images`` 64x64 OT pictures and ``n_files - n_images`` 64x64 CT slices."""
    import pydicom
    from pydicom.dataset import FileMetaDataset

    from medxai.samples import make_ct_volume, write_ct_series

    tmpl_dir = root.parent / f"_tmpl_{root.name}"
    vol, _ = make_ct_volume((64, 64, 50))
    write_ct_series(vol, tmpl_dir)
    slices = [pydicom.dcmread(p) for p in sorted(tmpl_dir.iterdir())]
    rng = np.random.default_rng(0)
    pic = copy.deepcopy(slices[0])  # Dataset.copy() is shallow: it would turn slice 0 into OT
    pic.Modality = "OT"
    pic.SOPClassUID = pic.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "SliceThickness",
               "SpacingBetweenSlices", "SliceLocation", "FrameOfReferenceUID"):
        if kw in pic:
            delattr(pic, kw)
    for i in range(n_images):
        ds = pic.copy()
        ds.file_meta = FileMetaDataset(pic.file_meta)
        uid = f"1.2.826.0.1.3680043.10.1476.40.{i // 100}"
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.1476.41.{i // 1000}"
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{uid}.{i}"
        ds.InstanceNumber = i % 100 + 1
        img = (rng.random((64, 64)) * 400).astype(np.int16)
        img[16:48, 16:48] += 600
        ds.PixelData = img.tobytes()
        p = root / f"OT/SER{i // 100:04d}/IM{i:06d}.dcm"
        p.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(p, enforce_file_format=True)
    for k in range(n_files - n_images):
        s, j = divmod(k, len(slices))
        ds = slices[j].copy()
        ds.file_meta = FileMetaDataset(slices[j].file_meta)
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.1476.43.{s // 20}"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.1476.42.{s}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = \
            f"1.2.826.0.1.3680043.10.1476.42.{s}.{j}"
        p = root / f"CT/SER{s:05d}/{j:03d}.dcm"
        p.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(p, enforce_file_format=True)
    for p in tmpl_dir.iterdir():
        p.unlink()
    tmpl_dir.rmdir()


def make_bundle(path: Path) -> Path:
    import torch

    from medxai.models.bundle import ModelBundle, network_from_config, save_bundle
    from medxai.models.networks import default_unet_args

    config = {
        "network_def": {"_target_": "monai.networks.nets.UNet",
                        **default_unet_args(2, 1, 2, width=8, depth=3)},
        "input": {"spatial_dims": 2, "channels": 1, "modalities": ["OT"]},
        "preprocessing": {"spatial_size": [64, 64], "intensity": {"kind": "zscore"}},
        "inference": {"mode": "whole_image", "tta": "flips"},
        "labels": [{"value": 0, "name": "background", "color": [0, 0, 0]},
                   {"value": 1, "name": "lesion", "color": [255, 64, 64]}],
    }
    torch.manual_seed(0)
    net = network_from_config(config).eval()
    return save_bundle(ModelBundle(config=config, metadata={"name": "bench-grey-unet",
                                                            "version": "0"}, network=net), path)


def run_batch_cli(export: Path, out: Path, model: Path, writers: int | None = None
                  ) -> tuple[float, float, float, dict]:
    """(wall s, peak RSS MiB of the batch process, of its largest child: a scan worker or a
    writer process, summary.json) of one fresh ``medxai batch``."""
    t = time.perf_counter()
    extra = ["--writers", str(writers)] if writers is not None else []
    proc = subprocess.run([sys.executable, "-c", _CLI, "batch", str(export), "-o", str(out),
                           "-m", str(model), "--device", "cpu", "--explain", "gradcam", "-q",
                           "--json", *extra], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode not in (0, 1):
        print(proc.stderr[-3000:])
        raise SystemExit(f"medxai batch exited {proc.returncode}")
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("PEAK_KIB ")][-1]
    own, kids = (int(v) / 1024 for v in line.split()[1:3])
    return wall, own, kids, json.loads(proc.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="10000:100",
                    help="comma-separated FILES:IMAGES per run")
    ap.add_argument("--writers", type=int, help="medxai batch --writers (default: its own)")
    args = ap.parse_args()
    runs = [tuple(int(v) for v in r.split(":")) for r in args.runs.split(",")]
    print(f"medxai batch peak memory: {os.cpu_count()} CPU(s), load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())} at start")
    rows = []
    with tempfile.TemporaryDirectory(prefix="medxai-bench-mem-") as tmp:
        work = Path(tmp)
        model = make_bundle(work / "model")
        for n_files, n_images in runs:
            export = work / f"export_{n_files}_{n_images}"
            t = time.perf_counter()
            build_export(export, n_files, n_images)
            built = time.perf_counter() - t
            wall, peak, scan_peak, summary = run_batch_cli(
                export, work / f"out_{n_files}_{n_images}", model, args.writers)
            rows.append([n_files, n_images, summary["series"].get("done", 0),
                         summary["series"].get("skipped", 0), summary["series"].get("failed", 0),
                         f"{summary['scan']['seconds']:.1f}",
                         f"{summary['process']['images_per_s']:.2f}", f"{wall:.1f}",
                         f"{peak:.0f}", f"{scan_peak:.0f}", f"{built:.0f}"])
            print("  done:", rows[-1], flush=True)
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n")
    head = ["files", "images", "series done", "skipped", "failed", "scan s", "images/s",
            "wall s", "peak RSS MiB", "largest child peak MiB", "export built s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
