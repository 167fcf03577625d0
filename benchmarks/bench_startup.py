"""Benchmark start-up: how fast a bad call is answered, and one photo end to end, against the
import floor ``python -c "import torch, monai"``.

    python benchmarks/bench_startup.py               # 5 repetitions, bad calls only
    python benchmarks/bench_startup.py --photo       # also `medxai segment photo.jpg` end to end
    python benchmarks/bench_startup.py --repeat 9

Every command runs as a fresh process (as a user types it), interleaved with the floor (the
order flips each repetition, so a drift of the machine's load hits both alike). Reports the
median wall time and the median CPU time (user + system of the child) of each, and their ratios
to the floor. On a machine shared with other work, CPU time is the steadier measure: wall time
includes the time the process waits for a core. Target: a bad call <= 0.1x the floor.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).parent / "medxai"
MEDXAI = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "medxai.cli.main"]
SAMPLE_PHOTO = ROOT / "sample_data" / "dermoscopy.jpg"


#: the children run as on a user's machine: Python caches bytecode (an environment with
#: PYTHONDONTWRITEBYTECODE, as some CI images set, recompiles medxai's modules on every call,
#: ~0.2 s, while torch's and MONAI's were compiled at install); one untimed warm-up round first
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_once(cmd: list[str], cwd: Path) -> tuple[float, float, int]:
    """(wall s, CPU s of the child, exit code) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          check=False, env=CHILD_ENV)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.returncode


def cases(tmp: Path, photo: bool) -> dict[str, list[str]]:
    """The calls to time, by row name."""
    text = tmp / "notes.txt"
    text.write_text("not an image\n")
    out_file = tmp / "out.txt"
    out_file.write_text("x")
    jpg = tmp / "photo.jpg"
    shutil.copy(SAMPLE_PHOTO, jpg)
    rows = {
        "floor: python -c 'import torch, monai'": [sys.executable, "-c", "import torch, monai"],
        "medxai --help": MEDXAI + ["--help"],
        "segment missing.jpg": MEDXAI + ["segment", str(tmp / "missing.jpg")],
        "segment notes.txt (not an image)": MEDXAI + ["segment", str(text)],
        "segment photo.jpg -o <a file>": MEDXAI + ["segment", str(jpg), "-o", str(out_file)],
        "segment photo.jpg -m ./no-bundle": MEDXAI + ["segment", str(jpg), "-m", "./no-bundle"],
        "info missing.dcm": MEDXAI + ["info", str(tmp / "missing.dcm")],
        "batch missing/ -o out": MEDXAI + ["batch", str(tmp / "missing"), "-o", str(tmp / "b")],
        "train missing/ -o out": MEDXAI + ["train", str(tmp / "missing"), "-o", str(tmp / "t")],
        "explain missing.jpg": MEDXAI + ["explain", str(tmp / "missing.jpg")],
        "evaluate --model M missing/": MEDXAI + ["evaluate", str(tmp / "missing"), "-m", "x"],
    }
    if photo:
        rows["segment photo.jpg (end to end, cpu)"] = MEDXAI + [
            "segment", str(jpg), "-o", str(tmp / "res"), "--device", "cpu", "--overwrite", "-q"]
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--photo", action="store_true", help="also time one photo end to end")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="medxai-bench-startup-") as d:
        tmp = Path(d)
        rows = cases(tmp, args.photo)
        floor_key = next(iter(rows))
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in rows}
        codes: dict[str, int] = {}
        for key in rows:  # warm-up: bytecode caches, the page cache
            run_once(rows[key], tmp)
        for rep in range(args.repeat):
            order = list(rows) if rep % 2 == 0 else list(reversed(rows))
            for key in order:
                wall, cpu, rc = run_once(rows[key], tmp)
                times[key].append((wall, cpu))
                codes[key] = rc
        med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
               for k, v in times.items()}
    fw, fc = med[floor_key]
    load = os.getloadavg()
    print(f"start-up: median of {args.repeat} fresh processes each; python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPU(s), load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; "
          "bytecode cached, after one warm-up round")
    print()
    print(f"| {'call':42s} | exit | wall s | x floor | CPU s | x floor |")
    print(f"|{'-' * 44}|-----:|-------:|--------:|------:|--------:|")
    for key, (w, c) in med.items():
        print(f"| {key:42s} | {codes[key]:4d} | {w:6.2f} | {w / fw:6.3f}x | {c:5.2f} | "
              f"{c / fc:6.3f}x |")
    bad = [k for k in med if k != floor_key and "end to end" not in k and "--help" not in k]
    worst_w = max(med[k][0] / fw for k in bad)
    worst_c = max(med[k][1] / fc for k in bad)
    print()
    print(f"slowest bad call: {worst_w:.3f}x the floor in wall time, {worst_c:.3f}x in CPU time "
          f"(target <= 0.1x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
