"""Writer processes when the network costs almost nothing: a GPU stand-in on this CPU.

On a GPU the network takes milliseconds and medxai's own work per image (decoding, the views
back onto the photo, their label maps, the saliency's maps and measures, the uncertainty, the
DICOM objects) is what the CPU does. Writer processes (``--writers N``) exist for that case:
in one process that work shares one GIL. With the real network on this 2-core CPU they cannot
win (docs/benchmarks.md, "Writer processes and the cluster"): the network fills the cores.

This script replaces the bundled photo model's network by a replay of its own logits
(``_replay_network.py``: a 2-channel UNet of the same structure, whose output is the real
network's recorded logits), so that the network's share becomes a few per cent, as on a GPU,
and runs ``medxai batch`` (default outputs, ``--explain`` as given, one torch thread) with
each setting of ``--settings`` in fresh CLI processes, interleaved round by round:

- ``threads``: ``--workers 1 --writers 0``: one process, writer threads;
- ``w1``, ``w2``: ``--workers 1 --writers 1`` / ``2``: writer processes;
- ``auto``: neither flag: the run's own choice (local worker processes on 2 cores);
- ``real-threads``, ``real-w1``...: the same with the real network, for reference.

It prints images/s (``summary.json``'s processing rate, and wall with start-up) and CPU per
image of the whole CLI call (every process, imports and scan included), and checks that the
stand-in's SEGs equal the real network's on a few photos (same label maps).

Usage::

    python benchmarks/bench_writers_standin.py --images 40 --rounds 2
    python benchmarks/bench_writers_standin.py --images 120 --settings threads,w1,w2,auto
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _bench_utils import header_line, machine_info, markdown_table, median, temp_dir  # noqa: E402
from bench_batch import _photos, build_photo_export  # noqa: E402

MODEL = "isic2018-lesion-unet"
SETTINGS: dict[str, list[str]] = {
    "threads": ["--workers", "1", "--writers", "0"],
    "w1": ["--workers", "1", "--writers", "1"],
    "w2": ["--workers", "1", "--writers", "2"],
    "auto": [],
}
_CLI = ("import sys, warnings; warnings.simplefilter('ignore'); {install}"
        "from medxai.cli.main import main; sys.exit(main())")
_INSTALL = "sys.path.insert(0, {bench!r}); import _replay_network as r; r.install({rec!r}); "


def _run(export: Path, out: Path, flags: list[str], explain: str, recorded: Path | None,
         cwd: Path) -> dict[str, Any]:
    """One ``medxai batch`` CLI call: its summary's rate, its wall rate and the CPU seconds of
    every process of the call."""
    install = _INSTALL.format(bench=str(BENCH), rec=str(recorded)) if recorded else ""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CLI.format(install=install), "batch",
                           str(export), "-o", str(out), "-m", MODEL, "--device", "cpu",
                           "--explain", explain, "-q", *flags],
                          env=env, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-3000:])
        raise SystemExit(f"medxai batch {' '.join(flags)} failed ({proc.returncode})")
    summary = json.loads((out / "summary.json").read_text())
    done = int(summary["series"].get("done", 0))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"rate": float(summary["process"]["images_per_s"]), "wall": done / wall,
            "cpu_ms": 1000 * cpu / max(done, 1), "cores": cpu / wall, "done": done}


def _seg_difference(a: Path, b: Path, n: int) -> tuple[int, int, int]:
    """(photos compared, photos whose SEG frames differ, pixels that differ) between two batch
    outputs, over the first ``n`` SEGs."""
    import numpy as np
    import pydicom

    segs = sorted(a.rglob("seg.dcm"))[:n]
    photos = pixels = 0
    for s in segs:
        x = pydicom.dcmread(s).pixel_array
        y = pydicom.dcmread(b / s.relative_to(a)).pixel_array
        d = int(np.count_nonzero(x != y)) if x.shape == y.shape else x.size
        photos += d > 0
        pixels += d
    return len(segs), photos, pixels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=40, help="ISIC val photos")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--settings", default="threads,w1,w2,auto,real-threads,real-auto",
                    help="comma-separated: threads, w1, w2, auto, each optionally real-")
    ap.add_argument("--explain", default="gradcam")
    args = ap.parse_args()
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    for s in settings:
        if s.removeprefix("real-") not in SETTINGS:
            raise SystemExit(f"unknown setting {s!r}: use {', '.join(SETTINGS)} (or real-...)")
    import _replay_network as replay

    from medxai.models.registry import load_model

    print(header_line(machine_info(1)))
    with temp_dir("medxai-bench-standin-") as work:
        photos = _photos(args.images, work / "jpegs")
        build_photo_export(photos, work / "export")
        recorded = work / "recorded.pt"
        t = time.perf_counter()
        bundle = load_model(MODEL)
        dicoms = sorted((work / "export").rglob("*.dcm"))
        n = replay.record(bundle, dicoms, recorded)
        print(f"recorded {n} views' logits in {time.perf_counter() - t:.1f} s")
        real_ms, standin_ms = replay.standin_cost(bundle, recorded, dicoms[:8])
        print(f"one forward pass of 8 photos (identity view), CPU ms: real network "
              f"{real_ms:.1f}, stand-in {standin_ms:.1f} ({standin_ms / real_ms:.2f}x)")
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in settings}
        kept: dict[str, Path] = {}
        for r in range(args.rounds):
            order = settings if r % 2 == 0 else settings[::-1]
            for s in order:
                out = work / f"out-{s}-{r}"
                rec = None if s.startswith("real-") else recorded
                runs[s].append(_run(work / "export", out, SETTINGS[s.removeprefix("real-")],
                                    args.explain, rec, work))
                got = runs[s][-1]
                print(f"  round {r + 1} {s}: {got['rate']:.2f} images/s, "
                      f"{got['cpu_ms']:.0f} CPU ms/image", flush=True)
                if s not in kept:
                    kept[s] = out
                else:
                    shutil.rmtree(out)
        stand_in = next((kept[s] for s in settings if not s.startswith("real-")), None)
        real = next((kept[s] for s in settings if s.startswith("real-")), None)
        check = _seg_difference(real, stand_in, 16) if stand_in and real else None
    base = median([g["rate"] for g in runs[settings[0]]])
    rows = []
    for s in settings:
        g = runs[s]
        rate = median([x["rate"] for x in g])
        rows.append([("real network, " if s.startswith("real-") else "stand-in, ")
                     + " ".join(SETTINGS[s.removeprefix("real-")] or ["(no --workers/--writers)"]),
                     f"{rate:.2f}", f"{median([x['wall'] for x in g]):.2f}",
                     f"{median([x['cpu_ms'] for x in g]):.0f}",
                     f"{median([x['cores'] for x in g]):.2f}", f"{rate / base:.2f}"])
    print(f"\nmedxai batch, {args.images} ISIC val photos (512x512) as DICOM, default outputs, "
          f"--explain {args.explain}, OMP_NUM_THREADS=1, medians of {args.rounds} interleaved "
          f"rounds; the stand-in replays the network's logits (a GPU's share of the CPU)\n")
    print(markdown_table(["run", "images/s", "images/s wall", "CPU ms/image (whole call)",
                          "cores busy (whole call)", f"vs {settings[0]}"], rows))
    if check:
        print(f"\nSEG frames, stand-in vs real network: {check[1]} of {check[0]} photos differ, "
              f"{check[2]} pixels in all (512x512 each)")


if __name__ == "__main__":
    main()
