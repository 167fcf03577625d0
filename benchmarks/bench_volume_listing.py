"""What listing the volumes of a DICOM series costs ``medxai segment`` and ``medxai info``.

Both now call ``medxai.io.readers.list_volumes(folder)`` (a header-only scan: which volumes does
the series hold?) before ``load_image(folder, volume=...)`` (which scans the headers again, then
decodes). This script times ``load_image`` alone (the baseline, what was done before) against
``list_volumes`` + ``load_image``, in one process, interleaved, medians (page cache warm).

Series: a synthetic 512x512xN uncompressed CT series (``medxai.samples.write_ct_series``, default
N=200, in a temporary folder) and, when ../shared/data is there, the TotalSegmentator test CT
(20 slices 512x512, JPEG 2000 lossless).

Usage::

    python benchmarks/bench_volume_listing.py [--depth 200] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL = (ROOT.parent / "shared" / "data" / "dicom" / "totalsegmentator_tests" / "tests"
        / "reference_files" / "example_ct_dicom")


def _time(fn, reps: int) -> float:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    from medxai.io.readers import list_volumes, load_image
    from medxai.samples import write_ct_series

    series = {}
    tmp = tempfile.TemporaryDirectory()
    vol = np.random.default_rng(0).integers(-1000, 1000, (512, 512, args.depth)).astype(np.int16)
    write_ct_series(vol, Path(tmp.name) / "ct")
    series[f"synthetic 512x512x{args.depth}"] = Path(tmp.name) / "ct"
    if REAL.is_dir():
        series["TotalSegmentator CT 20 (J2K)"] = REAL
    print(f"{'series':30s} {'load_image s':>12s} {'list+load s':>12s} {'list only s':>12s} "
          f"{'ratio':>6s}")
    for name, folder in series.items():
        load_image(folder)  # warm the page cache
        base = _time(lambda f=folder: load_image(f), args.reps)
        both = _time(lambda f=folder: (list_volumes(f), load_image(f)), args.reps)
        listing = _time(lambda f=folder: list_volumes(f), args.reps)
        print(f"{name:30s} {base:12.3f} {both:12.3f} {listing:12.3f} {both / base:6.2f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
