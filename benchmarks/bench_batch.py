"""Benchmark ``medxai batch``: header scan (files/s) and processing (images/s).

    python benchmarks/bench_batch.py                 # defaults: 1200 files, 32 images
    python benchmarks/bench_batch.py --files 5000 --images 96 --workers 1,2,4
    python benchmarks/bench_batch.py --ratio --ratio-images 40   # sections 4-5 only
    python benchmarks/bench_batch.py --writers 0,1,2 --ratio-images 40 --rounds 3  # section 6
    python benchmarks/bench_batch.py --batch-workers 1,auto --ratio-images 400    # section 8
    python benchmarks/bench_batch.py --batch-workers 1,auto,auto-spawn --ratio-images 40

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

With ``--ratio`` (sections 4 and 5 only): the bundled ``isic2018-lesion-unet`` over ISIC 2018 val
photos (../shared/data; synthetic photos without it), as a DICOM export through ``medxai batch``
and as a folder of JPEGs through ``medxai segment``, default outputs and ``--explain gradcam``,
each as a fresh CLI process; their images/s against the model-bound rate (the same network and
test-time augmentation in plain torch on the pre-resized photos), measured before and after each
in the same run; and the per-stage milliseconds per image from the manifest and the reports.
The batch rate is ``summary.json``'s (processing only, after the scan); the segment rate is
between the first and the last result folder written (start-up left out).

With ``--batch-workers 1,auto`` (section 8 only): ``medxai batch`` of the same export with each
``--workers`` setting (``auto``: the option left out, so that the batch decides), interleaved
over ``--rounds``, each after the model-bound loop: images/s (processing, worker start-up
included), the steady rate (the results after the first quarter) and the wall rate of the whole
CLI call, against the model-bound rate.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

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
    table(f"3. end to end: run_batch, NIfTI + JSON outputs, batch size {batch_size}, batched "
          f"2D prediction, {runner.WRITER_THREADS} writer threads",
          ["explain", "workers", "backend", "images", "scan files/s", "process s", "images/s",
           "wall s"], rows)


# ---------------------------------------------------------------------------------------------
# --ratio: the real bundled model, end to end against the model-bound rate (issue 17 item 2)
# ---------------------------------------------------------------------------------------------

_CLI = ("import sys, warnings; warnings.simplefilter('ignore'); "
        "from medxai.cli.main import main; sys.exit(main())")
#: ``_CLI`` with the run's own choice of local workers made for any number of images
#: (``--batch-workers auto-any``: what ``workers=None`` does below the threshold if it did not
#: stay in one process)
_CLI_AUTO_ANY = ("import sys, warnings; warnings.simplefilter('ignore'); "
                 "import medxai.batch.job as job; job.AUTO_WORKERS_MIN_IMAGES = 1; "
                 "job.AUTO_WORKERS_MIN_IMAGES_FORKED = 1; "
                 "from medxai.cli.main import main; sys.exit(main())")
#: ``_CLI_AUTO_ANY`` with the worker processes spawned, never forked (``--batch-workers
#: auto-spawn``: what local workers cost where they cannot be forked)
_CLI_AUTO_SPAWN = _CLI_AUTO_ANY.replace(
    "from medxai.cli", "job.worker_start_method = lambda threads: 'spawn'; from medxai.cli")
_CLI_FOR = {"auto-any": _CLI_AUTO_ANY, "auto-spawn": _CLI_AUTO_SPAWN}
#: ``_CLI`` that also writes the CPU seconds of the batch's processing step
#: (``medxai.batch.job._process_step``: after the scan and the imports) to the file named by
#: MEDXAI_BENCH_CPU, for any checkout that has that step: every thread of the process and of its
#: child processes (the local workers that a long run starts by default, writer processes),
#: measured the same way for both checkouts (an older ``summary.json`` leaves running children
#: out)
_CLI_CPU = """
import json, os, resource, sys, time, warnings
import psutil
warnings.simplefilter('ignore')
import medxai.batch.job as job
step = job._process_step
def cpu():
    # this process, its ended children (local workers) and its running ones (writer processes)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    running = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            running += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return time.process_time() + kids.ru_utime + kids.ru_stime + running
def timed(*a, **k):
    c, t = cpu(), time.perf_counter()
    try:
        return step(*a, **k)
    finally:
        with open(os.environ['MEDXAI_BENCH_CPU'], 'w') as f:
            json.dump({'cpu_s': cpu() - c, 'wall_s': time.perf_counter() - t}, f)
job._process_step = timed
from medxai.cli.main import main
sys.exit(main())
"""
RATIO_MODEL = "isic2018-lesion-unet"


def _photos(n: int, folder: Path) -> list[Path]:
    """``n`` ISIC 2018 val photos (512x512 JPEG) from ../shared/data, else synthetic ones."""
    from _bench_utils import SHARED

    src = sorted((SHARED / "isic2018" / "val" / "images").glob("*.jpg"))[:n]
    folder.mkdir(parents=True)
    if len(src) == n:
        for p in src:
            shutil.copy(p, folder / p.name)
        return sorted(folder.iterdir())
    from PIL import Image

    from medxai.samples import make_dermoscopy_photo

    print("(../shared/data/isic2018 not found: synthetic 512x512 photos)")
    for i in range(n):
        rgb, _ = make_dermoscopy_photo(512, 512, seed=i)
        Image.fromarray(rgb).save(folder / f"synthetic_{i:04d}.jpg", quality=92)
    return sorted(folder.iterdir())


def build_photo_export(photos: list[Path], root: Path) -> None:
    """One dermoscopy DICOM (Secondary Capture, XC) per photo, 8 per series, as a PACS would
    export them: ``PHOTOS/SERxxx/IMxxxxx.dcm``."""
    import pydicom
    from PIL import Image

    from medxai.samples import write_dermoscopy_dicom

    root.mkdir(parents=True)
    template = root / "_template.dcm"
    first = np.asarray(Image.open(photos[0]).convert("RGB"))
    write_dermoscopy_dicom(first, template)
    base = pydicom.dcmread(template)
    template.unlink()
    for i, photo in enumerate(photos):
        rgb = np.asarray(Image.open(photo).convert("RGB"))
        ds = base.copy()
        uid = f"1.2.826.0.1.3680043.10.1476.17.{i // 8}"
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{uid}.{i}"
        ds.InstanceNumber = i + 1
        ds.Rows, ds.Columns = rgb.shape[:2]
        ds.PixelData = np.ascontiguousarray(rgb).tobytes()
        p = root / f"PHOTOS/SER{i // 8:03d}/IM{i:05d}.dcm"
        p.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(p, enforce_file_format=True)


def _views(mode: str) -> list[tuple[int, bool]]:
    if mode == "dihedral":
        return [(k, t) for t in (False, True) for k in range(4)]
    if mode == "flips":
        return [(0, False), (-1, False), (-2, False)]  # identity, flip H, flip W
    return [(0, False)]


def model_bound_rate(photos: list[Path], batch_size: int, reps: int = 2) -> tuple[float, str]:
    """Images/s of the model-bound loop (:func:`model_bound`)."""
    rate, what, _ = model_bound(photos, batch_size, reps)
    return rate, what


def model_bound(photos: list[Path], batch_size: int, reps: int = 2,
                channels_last: bool = False) -> tuple[float, str, float]:
    """Images/s of the bundled model's network with its test-time augmentation in plain torch:
    the photos already resized to the model's input and scaled (not timed), ``batch_size``
    images per forward pass, softmax of every view turned back and averaged. Nothing else.
    ``channels_last``: the network's weights in the channels-last memory format (as medxai runs
    a 2D network on the CPU) instead of PyTorch's default.
    Returns (best images/s, what ran, least CPU ms per image: all torch threads)."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from medxai.inference import tta_mode
    from medxai.models.registry import load_model

    bundle = load_model(RATIO_MODEL)
    net = bundle.network.eval()
    if channels_last:
        net.to(memory_format=torch.channels_last)
    size = list(bundle.preprocessing["spatial_size"])
    mode = tta_mode(bundle.inference)
    xs = []
    for p in photos:
        rgb = torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).copy())
        x = rgb.permute(2, 1, 0).float()[None] / 255.0
        xs.append(F.interpolate(x, size=size, mode="area"))
    views = _views(mode)

    def run() -> None:
        with torch.inference_mode():
            for i in range(0, len(xs), batch_size):
                x = torch.cat(xs[i:i + batch_size])
                total = None
                for k, t in views:
                    v = x.transpose(2, 3) if t else x
                    if k > 0:
                        v = torch.rot90(v, k, (2, 3))
                    elif k < 0:
                        v = v.flip(-k + 1)
                    y = torch.softmax(net(v), dim=1)
                    if k > 0:
                        y = torch.rot90(y, -k, (2, 3))
                    elif k < 0:
                        y = y.flip(-k + 1)
                    y = y.transpose(2, 3) if t else y
                    total = y if total is None else total + y

    run()  # warm-up
    best, cpu = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        run()
        best.append(len(xs) / (time.perf_counter() - t))
        cpu.append(1000 * (time.process_time() - c) / len(xs))
    layout = ", channels last" if channels_last else ""
    return (max(best),
            f"{mode} ({len(views)} views), {size[0]}x{size[1]}, batch {batch_size}{layout}",
            min(cpu))


def _cli(args: list[str], env: dict[str, str], cwd: Path, code: str = _CLI) -> float:
    """Wall seconds of one CLI process, run in ``cwd`` (not the checkout: ``python -c`` puts the
    current folder first on ``sys.path``, before ``PYTHONPATH``, so --base-root would be
    ignored in the checkout)."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, check=False, cwd=cwd)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-3000:])
        raise SystemExit(f"{args[0]} failed with exit code {proc.returncode}")
    return time.perf_counter() - t


def _stage_sums(reports: list[Path]) -> dict[str, float]:
    """Seconds per stage, summed over the reports (report.json ``timings_s``)."""
    import json

    sums: dict[str, float] = {}
    for r in reports:
        for k, v in (json.loads(r.read_text()).get("timings_s") or {}).items():
            sums[k] = sums.get(k, 0.0) + float(v or 0.0)
    return sums


def _steady_rate(reports: list[Path]) -> float:
    """Images/s between the first and the last result folder written (start-up excluded)."""
    times = sorted(r.stat().st_mtime for r in reports)
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] \
        else 0.0


def bench_ratio(n_images: int, batch_size: int, explain: str, base_root: str | None) -> None:
    """``medxai batch`` over a DICOM export and ``medxai segment`` over a folder of the same
    photos as JPEGs (default outputs, ``--explain`` given), each against the model-bound rate
    measured just before and after it in the same run."""
    import sqlite3

    env = dict(os.environ)
    if base_root:
        base_root = str(Path(base_root).resolve())
        env["PYTHONPATH"] = base_root + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory(prefix="medxai-bench-ratio-") as tmp:
        work = Path(tmp)
        photos = _photos(n_images, work / "jpegs")
        build_photo_export(photos, work / "export")
        rates = [model_bound_rate(photos, batch_size)]
        print(f"model-bound: {rates[0][1]}")
        out_b = work / "out_batch"
        _cli(["batch", str(work / "export"), "-o", str(out_b), "-m", RATIO_MODEL, "--device",
              "cpu", "--explain", explain, "--batch-size", str(batch_size), "-q"], env, work)
        summary = json.loads((out_b / "summary.json").read_text())
        batch_rate = float(summary["process"]["images_per_s"])
        con = sqlite3.connect(out_b / "manifest.sqlite")
        stages_b = dict(zip(("read", "predict", "explain", "write", "total"), con.execute(
            "SELECT SUM(read_s), SUM(predict_s), SUM(explain_s), SUM(write_s), SUM(total_s) "
            "FROM series WHERE state='done'").fetchone()))
        done_b = con.execute("SELECT COUNT(*) FROM series WHERE state='done'").fetchone()[0]
        con.close()
        reports_b = sorted(out_b.glob("*/*/report.json"))
        writes_b = {k: v for k, v in _stage_sums(reports_b).items() if k.startswith("write")}
        rates.append(model_bound_rate(photos, batch_size))
        out_s = work / "out_segment"
        wall_s = _cli(["segment", str(work / "jpegs"), "-o", str(out_s), "-m", RATIO_MODEL,
                       "--device", "cpu", "--explain", explain, "-q"], env, work)
        reports_s = sorted(out_s.glob("*/report.json"))
        seg_rate = _steady_rate(reports_s)
        stages_s = _stage_sums(reports_s)
        rates.append(model_bound_rate(photos, batch_size))
    mb = [r for r, _ in rates]
    load = os.getloadavg()
    print(f"\n{'base: ' + base_root if base_root else 'this checkout'}; {n_images} photos "
          f"512x512, --explain {explain}, default outputs; load average at the end "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    table("4. images/s vs the model-bound rate (same network and TTA, same run)",
          ["run", "images", "images/s", "model-bound before", "model-bound after", "ratio"],
          [["medxai batch (DICOM export)", done_b, f"{batch_rate:.2f}", f"{mb[0]:.2f}",
            f"{mb[1]:.2f}", f"{batch_rate / ((mb[0] + mb[1]) / 2):.2f}"],
           ["medxai segment (folder of JPEGs)", len(reports_s), f"{seg_rate:.2f}",
            f"{mb[1]:.2f}", f"{mb[2]:.2f}", f"{seg_rate / ((mb[1] + mb[2]) / 2):.2f}"]])
    per = lambda v, n: f"{1000 * (v or 0.0) / max(n, 1):.0f}"  # noqa: E731
    rows = [["batch", k, per(v, done_b)] for k, v in stages_b.items()]
    rows += [["batch", f"  {k}", per(v, done_b)] for k, v in sorted(writes_b.items())]
    rows += [["segment", k, per(v, len(reports_s))] for k, v in sorted(stages_s.items())]
    rows += [["segment", "wall per image (incl. start-up)", per(wall_s, len(reports_s))]]
    table("5. where the time goes: ms per image, summed over stages (stages overlap in the "
          "pipelined batch, so they add up to more than 1000 / images/s)",
          ["command", "stage", "ms/image"], rows)


def _batch_cpu(root: str | None, work: Path, tag: str, batch_size: int,
               explain: str) -> dict[str, float]:
    """One ``medxai batch`` of ``work/export`` with the package of ``root`` (None: this
    checkout): images/s (summary.json), CPU ms per image of the processing step."""
    env = dict(os.environ)
    if root:
        env["PYTHONPATH"] = str(Path(root).resolve()) + os.pathsep + env.get("PYTHONPATH", "")
    import torch

    # the CLI's torch threads as this process's (--torch-threads 1: no idle threads spinning,
    # whose CPU time a loaded machine inflates)
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    out = work / f"out_{tag}"
    cpu_file = work / f"cpu_{tag}.json"
    env["MEDXAI_BENCH_CPU"] = str(cpu_file)
    _cli(["batch", str(work / "export"), "-o", str(out), "-m", RATIO_MODEL, "--device", "cpu",
          "--explain", explain, "--batch-size", str(batch_size), "-q"], env, work, _CLI_CPU)
    summary = json.loads((out / "summary.json").read_text())
    done = int(summary["process"]["images_done"])
    cpu = json.loads(cpu_file.read_text())
    shutil.rmtree(out)
    return {"images_per_s": float(summary["process"]["images_per_s"]),
            "cpu_ms": 1000 * cpu["cpu_s"] / max(done, 1), "images": done}


def bench_ratio_cpu(n_images: int, batch_size: int, explain: str, base_root: str,
                    rounds: int) -> None:
    """``medxai batch`` of this checkout and of ``base_root``, interleaved (A B B A ...), each
    next to the model-bound loop measured just before it: images/s and the ratio, and CPU ms
    per image (the processing step's process CPU time, every thread) against the model-bound
    loop's, which a shared machine's load distorts much less than wall time."""
    with tempfile.TemporaryDirectory(prefix="medxai-bench-ratio-cpu-") as tmp:
        work = Path(tmp)
        photos = _photos(n_images, work / "jpegs")
        build_photo_export(photos, work / "export")
        rows: dict[str, list[dict[str, float]]] = {"this checkout": [], "base": []}
        order = ["this checkout", "base"]
        for r in range(rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                mb_rate, what, mb_cpu = model_bound(photos, batch_size)
                got = _batch_cpu(None if name == "this checkout" else base_root, work,
                                 f"{name[:4]}{r}", batch_size, explain)
                got.update(mb_rate=mb_rate, mb_cpu=mb_cpu)
                rows[name].append(got)
                print(f"  round {r + 1} {name}: {got['images_per_s']:.2f} images/s "
                      f"(model-bound {mb_rate:.2f}), CPU {got['cpu_ms']:.0f} ms/image "
                      f"(model-bound {mb_cpu:.0f})", flush=True)
    load = os.getloadavg()
    import torch

    print(f"\nmodel-bound: {what}; {n_images} photos 512x512, --explain {explain}, default "
          f"outputs; torch threads {torch.get_num_threads()}; medians of {rounds} round(s); "
          f"base: {base_root}; load average at the end {load[0]:.1f} {load[1]:.1f} "
          f"{load[2]:.1f}")
    med = lambda xs: statistics.median(xs)  # noqa: E731
    table_rows = []
    for name, runs in rows.items():
        rate, mb = med([g["images_per_s"] for g in runs]), med([g["mb_rate"] for g in runs])
        cpu, mb_cpu = med([g["cpu_ms"] for g in runs]), med([g["mb_cpu"] for g in runs])
        table_rows.append([f"medxai batch, {name}", f"{rate:.2f}", f"{mb:.2f}",
                           f"{med([g['images_per_s'] / g['mb_rate'] for g in runs]):.2f}",
                           f"{cpu:.0f}", f"{mb_cpu:.0f}",
                           f"{med([g['mb_cpu'] / g['cpu_ms'] for g in runs]):.2f}"])
    table("4b. batch vs the model-bound loop, this checkout and the base interleaved",
          ["run", "images/s", "model-bound images/s", "wall ratio", "CPU ms/image",
           "model-bound CPU ms/image", "CPU ratio"], table_rows)


def bench_writers(n_images: int, batch_size: int, explain: str, counts: list[int],
                  rounds: int) -> None:
    """``medxai batch`` over the ISIC photos as a DICOM export (the bundled model, default
    outputs, ``--explain``), one fresh CLI process per ``--writers`` count and round, the counts
    interleaved round by round so that a noisy machine affects them alike; the model-bound rate
    before and after."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="medxai-bench-writers-") as tmp:
        work = Path(tmp)
        photos = _photos(n_images, work / "jpegs")
        build_photo_export(photos, work / "export")
        before = model_bound_rate(photos, batch_size)
        print(f"model-bound: {before[1]}")
        rates: dict[int, list[tuple[float, float]]] = {c: [] for c in counts}
        stages: dict[int, dict[str, float]] = {}
        for r in range(rounds):
            for c in counts:
                out = work / f"out_{c}_{r}"
                wall = _cli(["batch", str(work / "export"), "-o", str(out), "-m", RATIO_MODEL,
                             "--device", "cpu", "--explain", explain, "--batch-size",
                             str(batch_size), "--writers", str(c), "-q"], env, work)
                summary = json.loads((out / "summary.json").read_text())
                done = summary["series"].get("done", 0)
                rates[c].append((float(summary["process"]["images_per_s"]), done / wall))
                stages[c] = _manifest_stages(out / "manifest.sqlite")
                print(f"  round {r + 1}, --writers {c}: {rates[c][-1][0]:.2f} images/s "
                      f"(processing), {rates[c][-1][1]:.2f} (wall, start-up included)")
                shutil.rmtree(out)
        after = model_bound_rate(photos, batch_size)
    mb = (before[0] + after[0]) / 2
    load = os.getloadavg()
    base = float(np.median([p for p, _ in rates[counts[0]]]))
    rows = []
    for c in counts:
        proc = float(np.median([p for p, _ in rates[c]]))
        wall = float(np.median([w for _, w in rates[c]]))
        what = f"{c} writer processes" if c else "writer threads (--writers 0)"
        rows.append([what, f"{proc:.2f}", f"{wall:.2f}", f"{proc / base:.2f}",
                     f"{proc / mb:.2f}"])
    table(f"6. medxai batch by --writers: {n_images} photos 512x512 as DICOM, default outputs, "
          f"--explain {explain}, median of {rounds}; {os.cpu_count()} CPU(s), load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; model-bound {before[0]:.2f} before, "
          f"{after[0]:.2f} after",
          ["writers", "images/s", "images/s wall", f"vs --writers {counts[0]}", "model-bound "
           "ratio"], rows)
    keys = ["read", "predict", "explain", "write", "total"]
    table("7. ms per image by stage (manifest, last round; read/predict/explain in the network's "
          "process, write in the writers; wall time of each stage, so a busy CPU inflates them)",
          ["writers", *keys], [[c, *(f"{stages[c].get(k, 0.0):.0f}" for k in keys)]
                               for c in counts])


def bench_batch_workers(n_images: int, batch_size: int, explain: str, settings: list[str],
                        rounds: int, base_root: str | None = None) -> None:
    """``medxai batch`` over the ISIC photos as a DICOM export (the bundled model, default
    outputs, ``--explain``), one fresh CLI process per ``--workers`` setting (``auto``: the
    option left out) and round, interleaved round by round, each after the model-bound loop
    (torch on every core) measured just before it, in PyTorch's default memory format and in
    channels-last (what medxai runs). With ``base_root``, each setting runs with that
    checkout's package too, next to this one's."""
    runs = [(w, None) for w in settings]
    if base_root:
        runs = [run for w in settings for run in ((w, None), (w, base_root))]
    label = lambda w, root: f"{w} (base)" if root else w  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="medxai-bench-workers-") as tmp:
        work = Path(tmp)
        photos = _photos(n_images, work / "jpegs")
        build_photo_export(photos, work / "export")
        got: dict[str, list[dict[str, Any]]] = {label(*run): [] for run in runs}
        for r in range(rounds):
            for w, root in runs if r % 2 == 0 else runs[::-1]:
                env = dict(os.environ)
                if root:
                    env["PYTHONPATH"] = (str(Path(root).resolve()) + os.pathsep
                                         + env.get("PYTHONPATH", ""))
                mb = model_bound_rate(photos, batch_size)[0]
                mb_cl = model_bound(photos, batch_size, channels_last=True)[0]
                out = work / f"out_{w}_{r}_{bool(root)}"
                extra = [] if w.startswith("auto") else ["--workers", w]
                wall = _cli(["batch", str(work / "export"), "-o", str(out), "-m", RATIO_MODEL,
                             "--device", "cpu", "--explain", explain, "--batch-size",
                             str(batch_size), *extra, "-q"], env, work,
                            _CLI_FOR.get(w, _CLI))
                summary = json.loads((out / "summary.json").read_text())
                done = int(summary["process"]["images_done"])
                row = {"mb": mb, "mb_cl": mb_cl, "proc": float(summary["process"]["images_per_s"]),
                       "wall": done / wall, "steady": manifest_steady_rate(out),
                       "cpu": float(summary["process"]["cpu_ms_per_image"]),
                       "backend": summary["backend"]}
                got[label(w, root)].append(row)
                print(f"  round {r + 1}, --workers {label(w, root)} ({row['backend']}): "
                      f"{row['proc']:.2f} images/s processing, {row['steady']:.2f} steady, "
                      f"{row['wall']:.2f} wall; model-bound {mb:.2f}, channels last {mb_cl:.2f}",
                      flush=True)
                shutil.rmtree(out)
    med = lambda w, k: float(np.median([g[k] for g in got[w]]))  # noqa: E731
    rows = [[w, got[w][-1]["backend"], f"{med(w, 'proc'):.2f}", f"{med(w, 'steady'):.2f}",
             f"{med(w, 'wall'):.2f}", f"{med(w, 'cpu'):.0f}", f"{med(w, 'mb'):.2f}",
             f"{med(w, 'proc') / med(w, 'mb'):.2f}", f"{med(w, 'steady') / med(w, 'mb'):.2f}",
             f"{med(w, 'mb_cl'):.2f}", f"{med(w, 'proc') / med(w, 'mb_cl'):.2f}"]
            for w in got]
    table(f"8. medxai batch by --workers: {n_images} photos 512x512 as DICOM, default outputs, "
          f"--explain {explain}, medians of {rounds} interleaved rounds; {os.cpu_count()} CPU(s)",
          ["--workers", "backend", "images/s", "steady images/s", "images/s wall", "CPU ms/image",
           "model-bound", "ratio", "steady ratio", "model-bound channels last",
           "ratio to it"], rows)
    print("images/s: summary.json's (processing: worker start-up included); steady: the results "
          "after the first quarter, by the manifest's finish times; wall: the whole CLI call; "
          "CPU ms/image: summary.json's (worker processes included); model-bound: the plain "
          "torch loop in PyTorch's default memory format (the issue's baseline) and with the "
          "network in channels-last")


def manifest_steady_rate(out: Path) -> float:
    """Images/s of a batch run once it is under way: done series after the first quarter of
    them, over the time between their finish times (the manifest's ``finished_at``)."""
    import sqlite3

    con = sqlite3.connect(out / "manifest.sqlite")
    t = sorted(r[0] for r in con.execute(
        "SELECT finished_at FROM series WHERE state='done' AND finished_at IS NOT NULL"))
    con.close()
    a, b = len(t) // 4, len(t) - 1
    return (b - a) / (t[b] - t[a]) if b > a and t[b] > t[a] else 0.0


def _manifest_stages(manifest: Path) -> dict[str, float]:
    """Mean ms per done series of each stage in a batch manifest."""
    import sqlite3

    con = sqlite3.connect(manifest)
    row = con.execute("SELECT AVG(read_s), AVG(predict_s), AVG(explain_s), AVG(write_s), "
                      "AVG(total_s) FROM series WHERE state='done'").fetchone()
    con.close()
    return {k: 1000 * float(v or 0.0) for k, v in zip(("read", "predict", "explain", "write",
                                                          "total"), row)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1200, help="files in the export")
    ap.add_argument("--images", type=int, default=32, help="RGB photos among them")
    ap.add_argument("--workers", default="1,2", help="worker counts, e.g. 1,2,4")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--skip", default="", help="sections to skip: scan,model,e2e")
    ap.add_argument("--torch-threads", type=int, help="torch threads of this process")
    ap.add_argument("--ratio", action="store_true",
                    help="only section 4/5: the bundled model over real photos, batch and "
                         "segment against the model-bound rate")
    ap.add_argument("--ratio-images", type=int, default=40, help="photos for --ratio")
    ap.add_argument("--explain", default="gradcam", help="saliency method for --ratio")
    ap.add_argument("--writers", dest="writer_counts",
                    help="only section 6: medxai batch with these --writers counts, e.g. 0,1,2 "
                         "(0: writer threads), over --ratio-images photos")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of sections 6 and 8")
    ap.add_argument("--batch-workers",
                    help="only section 8: medxai batch with these --workers settings, e.g. "
                         "1,2,auto (auto: the option left out; auto-any: as if there were "
                         "enough images for local workers; auto-spawn: auto-any with the "
                         "workers spawned, not forked), over --ratio-images photos")
    ap.add_argument("--base-root", help="--ratio or --batch-workers with the medxai package of "
                                        "another checkout too (e.g. an unpacked `git archive` "
                                        "of an older commit)")
    ap.add_argument("--cpu", action="store_true",
                    help="with --ratio and --base-root: batch of this checkout and of the base, "
                         "interleaved over --rounds, CPU ms per image next to the model-bound "
                         "loop's (table 4b)")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    warnings.simplefilter("ignore")
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    print(f"medxai batch benchmark: {os.cpu_count()} CPU(s), torch {torch.__version__}, "
          f"{args.files} files ({args.images} photos 256x192 RGB)")
    if args.writer_counts:
        counts = [int(c) for c in args.writer_counts.split(",")]
        bench_writers(args.ratio_images, args.batch_size, args.explain, counts, args.rounds)
        return
    if args.batch_workers:
        bench_batch_workers(args.ratio_images, args.batch_size, args.explain,
                            args.batch_workers.split(","), args.rounds, args.base_root)
        return
    if args.ratio and args.cpu:
        if not args.base_root:
            raise SystemExit("--cpu compares with another checkout: give --base-root")
        bench_ratio_cpu(args.ratio_images, args.batch_size, args.explain, args.base_root,
                        args.rounds)
        return
    if args.ratio:
        bench_ratio(args.ratio_images, args.batch_size, args.explain, args.base_root)
        return
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
