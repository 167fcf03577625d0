"""DICOM series read time: ``medxai.read_image(folder)`` vs SimpleITK's ``ImageSeriesReader``.

Series:

- ``real``: the TotalSegmentator test CT (20 slices 512x512, JPEG 2000 lossless) under
  ``../shared/data/dicom/totalsegmentator_tests/tests/reference_files/example_ct_dicom``
  (skipped with a message when absent);
- ``synthetic``: a 512x512xN (default N=200) uncompressed CT series of random int16 values
  written with ``medxai.samples.write_ct_series`` into a temporary folder (oblique geometry,
  shuffled file names).

Readers (interleaved, medians; page cache warm: every reader has read the files once first):

- ``medxai``: ``read_image(folder)`` -- scans the folder, groups series, sorts slices by position,
  checks geometry, decodes, applies the modality LUT, returns a ``(1, I, J, K)`` MetaTensor;
- ``SimpleITK``: ``GetGDCMSeriesFileNames`` + ``ImageSeriesReader.Execute`` +
  ``GetArrayFromImage`` (so both end with an array in memory);
- ``pydicom floor`` (information): ``dcmread`` of every file, sort by position along the normal,
  ``np.stack`` of ``pixel_array`` -- what any pydicom-based reader pays at least.

Target: medxai within 1.5x of SimpleITK.

Repeated reads in one process reuse memory the allocator already holds; a ``medxai segment`` run
reads once in a fresh process and pays the page faults of its first large arrays. ``--fresh N``
adds N reads per reader, each in a new Python process (imports done before the clock starts).

Usage::

    python benchmarks/bench_series_read.py                    # 512x512x200, ~1 min idle
    python benchmarks/bench_series_read.py --depth 400 --reps 5 --keep /tmp/series400 --json
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

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

warnings.filterwarnings("ignore", message=".*nvImageCodec.*")

REAL = SHARED / "dicom" / "totalsegmentator_tests" / "tests" / "reference_files" / "example_ct_dicom"


def read_medxai(folder: Path) -> np.ndarray:
    from medxai.io.readers import read_image

    return read_image(folder)


def read_sitk(folder: Path) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(names)
    return sitk.GetArrayFromImage(reader.Execute())


def read_pydicom_floor(folder: Path) -> np.ndarray:
    import pydicom

    dss = [pydicom.dcmread(p) for p in sorted(folder.iterdir())
           if p.is_file() and not p.name.startswith(".")]
    iop = np.asarray(dss[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    dss.sort(key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))
    return np.stack([d.pixel_array for d in dss])


READERS = {"medxai": read_medxai, "SimpleITK": read_sitk, "pydicom floor": read_pydicom_floor}


def child_read(reader: str, folder: Path, threads: int) -> dict[str, float]:
    """One timed read in this (fresh) process, after the imports."""
    import time

    import pydicom  # noqa: F401
    import SimpleITK as sitk

    import medxai.io.readers  # noqa: F401

    set_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    c, t = time.process_time(), time.perf_counter()
    READERS[reader](folder)
    return {"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c}


def fresh_reads(folder: Path, reps: int, threads: int) -> dict[str, dict[str, list[float]]]:
    import json
    import os
    import subprocess

    out: dict[str, dict[str, list[float]]] = {k: {"wall_s": [], "cpu_s": []}
                                              for k in ("medxai", "SimpleITK")}
    names = list(out)
    for r in range(reps):
        for k in (names if r % 2 == 0 else names[::-1]):
            res = subprocess.run([sys.executable, __file__, "--child-read", k, str(folder),
                                  "--threads", str(threads)], capture_output=True, text=True,
                                 check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            d = json.loads(res.stdout.strip().splitlines()[-1])
            out[k]["wall_s"].append(d["wall_s"])
            out[k]["cpu_s"].append(d["cpu_s"])
    return out


def make_synthetic(folder: Path, depth: int, size: int) -> str:
    from medxai.samples import write_ct_series

    marker = folder / ".complete"
    if marker.is_file() and marker.read_text() == f"{size}x{size}x{depth}":
        return "reused"
    rng = np.random.default_rng(0)
    vol = rng.integers(-1024, 3071, size=(size, size, depth), dtype=np.int16)
    write_ct_series(vol, folder)
    marker.write_text(f"{size}x{size}x{depth}")
    return "written"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depth", type=int, default=200, help="slices of the synthetic series")
    ap.add_argument("--size", type=int, default=512, help="rows = columns of the synthetic series")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (default 3)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch and SimpleITK threads (default 1)")
    ap.add_argument("--keep", type=Path, help="write/reuse the synthetic series in this folder")
    ap.add_argument("--no-floor", action="store_true", help="skip the pydicom floor column")
    ap.add_argument("--fresh", type=int, default=3,
                    help="reads per reader in fresh processes (default 3; 0: none)")
    ap.add_argument("--child-read", nargs=2, metavar=("READER", "FOLDER"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.child_read:
        import json

        print(json.dumps(child_read(args.child_read[0], Path(args.child_read[1]), args.threads)))
        return 0

    import SimpleITK as sitk

    set_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    info = machine_info(args.threads)
    result: dict[str, Any] = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                              "series": []}
    rows = []
    notes = []
    with temp_dir() as tmp:
        series: list[tuple[str, Path]] = []
        if REAL.is_dir():
            series.append((f"real CT, {len(list(REAL.iterdir()))} slices 512x512, JPEG 2000 "
                           "lossless", REAL))
        else:
            notes.append(f"real series absent ({REAL}): skipped")
        syn = args.keep or (tmp / "synthetic")
        how = make_synthetic(syn, args.depth, args.size)
        series.append((f"synthetic CT, {args.depth} slices {args.size}x{args.size}, "
                       f"uncompressed ({how})", syn))
        for label, folder in series:
            cases = {"medxai": lambda f=folder: read_medxai(f),
                     "SimpleITK": lambda f=folder: read_sitk(f)}
            if not args.no_floor:
                cases["pydicom floor"] = lambda f=folder: read_pydicom_floor(f)
            a = np.asarray(read_medxai(folder))[0]
            b = read_sitk(folder)
            same = bool(a.shape == b.shape[::-1] and np.array_equal(a, b.transpose(2, 1, 0)))
            t = interleaved(cases, reps=args.reps, warmup=1)
            mb = sum(p.stat().st_size for p in folder.iterdir()
                     if p.is_file() and not p.name.startswith(".")) / 2**20
            cpu = {k: median(v) for k, v in t.cpu.items()}
            wall = {k: median(v) for k, v in t.items()}
            ratio_cpu = cpu["medxai"] / cpu["SimpleITK"]
            ratio_wall = wall["medxai"] / wall["SimpleITK"]
            rows.append([label, "same process", f"{mb:.0f}",
                         *(f"{cpu[k] * 1e3:.0f} ({wall[k] * 1e3:.0f})" for k in cases),
                         f"{ratio_cpu:.2f} ({ratio_wall:.2f})",
                         "met" if ratio_cpu <= 1.5 else "NOT met", "yes" if same else "NO"])
            entry = {"series": label, "folder": str(folder), "mib": mb,
                     "wall_s": dict(t), "cpu_s": t.cpu, "ratio_cpu": ratio_cpu,
                     "ratio_wall": ratio_wall, "same_voxels": same}
            if args.fresh > 0:
                fr = fresh_reads(folder, args.fresh, args.threads)
                fc = {k: median(v["cpu_s"]) for k, v in fr.items()}
                fw = {k: median(v["wall_s"]) for k, v in fr.items()}
                rc, rw = fc["medxai"] / fc["SimpleITK"], fw["medxai"] / fw["SimpleITK"]
                rows.append([label, f"fresh process ({args.fresh}x)", f"{mb:.0f}",
                             f"{fc['medxai'] * 1e3:.0f} ({fw['medxai'] * 1e3:.0f})",
                             f"{fc['SimpleITK'] * 1e3:.0f} ({fw['SimpleITK'] * 1e3:.0f})",
                             *([""] if not args.no_floor else []),
                             f"{rc:.2f} ({rw:.2f})", "met" if rc <= 1.5 else "NOT met", ""])
                entry["fresh"] = fr
                entry["fresh_ratio_cpu"] = rc
            result["series"].append(entry)
    headers = ["series", "reads", "MiB on disk", "medxai ms", "SimpleITK ms"]
    if not args.no_floor:
        headers.append("pydicom floor ms")
    headers += ["medxai / SimpleITK", "target <= 1.5", "same voxels"]
    result["machine_end_loadavg"] = machine_info(args.threads)["loadavg_1_5_15"]
    table = (f"<!-- {header_line(info)} -->\n\n"
             f"### DICOM series read (torch and SimpleITK threads: {args.threads}; median of "
             f"{args.reps} interleaved reps, page cache warm; **CPU ms (wall ms)**; target "
             f"judged on CPU time)\n\n"
             + markdown_table(headers, rows)
             + ("\n\n" + "\n".join(notes) if notes else "")
             + f"\n\n<!-- load average at end: {result['machine_end_loadavg']} -->")
    emit(result, table, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
