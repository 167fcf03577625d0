"""``medxai batch`` on a real dask cluster against the local batch, on the same photos and cores,
in one run (issue 27 item 3: the cluster at >= 0.8x the local rate on one machine).

    python benchmarks/bench_batch_cluster.py                      # 20 photos, 2 dask workers
    python benchmarks/bench_batch_cluster.py --images 40 --rounds 2 --nworkers 2

Builds a DICOM export of ISIC 2018 val photos (../shared/data; synthetic photos without it),
starts ``dask scheduler`` and ``dask worker --nworkers N --nthreads 1`` on loopback, and runs,
each as a fresh ``medxai batch`` CLI process with the bundled skin-lesion model, default outputs
and ``--explain gradcam``:

1. the local batch (``--workers 1``, default ``--writers``);
2. the cluster (``--scheduler tcp://127.0.0.1:PORT``), first with cold workers (their first
   task loads the model), then warm (the workers keep it);
3. the local batch again, and the cluster again (``--rounds``): the order alternates so that the
   machine's load drifts onto both alike.

Prints images/s (processing, from summary.json, and wall, start-up included) and the ratio of
the medians, cluster / local. Each rate is medxai's own summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_batch import (  # noqa: E402
    RATIO_MODEL,
    _cli,
    _manifest_stages,
    _photos,
    build_photo_export,
    table,
)

STAGES: dict[str, dict[str, float]] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_workers(address: str, n: int, timeout: float = 180.0) -> None:
    from distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(n, timeout=timeout)


def _batch(export: Path, out: Path, extra: list[str], env: dict[str, str], work: Path,
           batch_size: int, kind: str) -> tuple[float, float, int]:
    wall = _cli(["batch", str(export), "-o", str(out), "-m", RATIO_MODEL, "--device", "cpu",
                 "--explain", "gradcam", "--batch-size", str(batch_size), "-q", *extra], env, work)
    summary = json.loads((out / "summary.json").read_text())
    done = int(summary["series"].get("done", 0))
    STAGES[kind] = _manifest_stages(out / "manifest.sqlite")
    shutil.rmtree(out)
    return float(summary["process"]["images_per_s"]), done / wall, done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20, help="photos in the export")
    ap.add_argument("--nworkers", type=int, default=2, help="dask worker processes")
    ap.add_argument("--rounds", type=int, default=2, help="local/cluster pairs after the first")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--local-args", default="", help="extra arguments of the local run, "
                                                      "e.g. '--writers 0'")
    args = ap.parse_args()
    dask = shutil.which("dask") or str(Path(sys.executable).parent / "dask")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="medxai-bench-cluster-") as tmp:
        work = Path(tmp)
        photos = _photos(args.images, work / "jpegs")
        build_photo_export(photos, work / "export")
        port = _free_port()
        address = f"tcp://127.0.0.1:{port}"
        log = open(work / "dask.log", "w")  # noqa: SIM115 - closed below
        try:
            procs.append(subprocess.Popen(
                [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                 "--no-dashboard"], env=env, cwd=work, stdout=log, stderr=log))
            procs.append(subprocess.Popen(
                [dask, "worker", address, "--nworkers", str(args.nworkers), "--nthreads", "1",
                 "--no-dashboard", "--local-directory", str(work / "dask-worker")],
                env=env, cwd=work, stdout=log, stderr=log))
            _wait_workers(address, args.nworkers)
            local_extra = args.local_args.split()
            runs: dict[str, list[tuple[float, float, int]]] = {"local": [], "cluster": []}
            cold = None
            order = ["local", "cluster"]
            for r in range(args.rounds + 1):
                for kind in order if r % 2 == 0 else order[::-1]:
                    extra = local_extra if kind == "local" else ["--scheduler", address]
                    res = _batch(work / "export", work / f"out_{kind}_{r}", extra, env, work,
                                 args.batch_size, kind)
                    print(f"  round {r + 1} {kind}{' (cold workers)' if kind == 'cluster' and cold is None else ''}: "
                          f"{res[0]:.2f} images/s processing, {res[1]:.2f} wall, {res[2]} done")
                    if kind == "cluster" and cold is None:
                        cold = res
                        continue
                    runs[kind].append(res)
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in reversed(procs):
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
            log.close()
    med = {k: (float(np.median([p for p, _, _ in v])), float(np.median([w for _, w, _ in v])))
           for k, v in runs.items()}
    load = os.getloadavg()
    rows = [["local (--workers 1" + (f", {args.local_args}" if args.local_args else "") + ")",
             len(runs["local"]), f"{med['local'][0]:.2f}", f"{med['local'][1]:.2f}", "1.00",
             "1.00"],
            [f"dask, {args.nworkers} workers x 1 thread, warm", len(runs["cluster"]),
             f"{med['cluster'][0]:.2f}", f"{med['cluster'][1]:.2f}",
             f"{med['cluster'][0] / med['local'][0]:.2f}",
             f"{med['cluster'][1] / med['local'][1]:.2f}"]]
    if cold is not None:
        rows.append([f"dask, {args.nworkers} workers, cold (first run)", 1, f"{cold[0]:.2f}",
                     f"{cold[1]:.2f}", f"{cold[0] / med['local'][0]:.2f}",
                     f"{cold[1] / med['local'][1]:.2f}"])
    table(f"medxai batch, local vs dask on loopback: {args.images} photos 512x512 as DICOM, "
          f"default outputs, Grad-CAM, {os.cpu_count()} CPU(s), load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (medians)",
          ["run", "runs", "images/s", "images/s wall", "ratio", "ratio wall"], rows)
    keys = ["read", "predict", "explain", "write", "total"]
    table("ms per image by stage (manifest of the last run of each; wall time of each stage)",
          ["run", *keys], [[k, *(f"{v.get(s, 0.0):.0f}" for s in keys)]
                           for k, v in STAGES.items()])
    ratio = med["cluster"][0] / med["local"][0]
    print(f"\ncluster / local: {ratio:.2f}x (processing), "
          f"{med['cluster'][1] / med['local'][1]:.2f}x (wall); target >= 0.8x")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f} s)")
