"""Load on the DICOM node: N concurrent senders (dcmtk ``storescu`` processes) x M instances each
into one ``medxai listen`` process; prints instances/s received (every instance fsync'd and
recorded before its acknowledgement), the time until every study is processed, and the node's
peak memory (VmHWM).

Each sender sends its own study: M real CT slices (``sample_data/ct_oblique_series``, 64x56,
restamped with new UIDs and positions so each study is one M-slice volume). The default model is
the 2D skin-lesion model, so "processed" here means received, grouped, scanned and selected (the
CT volumes are recorded as not fitting); segmentation time is measured by bench_batch.py.

    python benchmarks/bench_node.py [--senders 4] [--instances 200] [--idle-seconds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
SERIES = ROOT / "sample_data" / "ct_oblique_series"
_MAIN = "import sys; from medxai.cli.main import main; sys.exit(main())"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_studies(folder: Path, senders: int, instances: int) -> list[list[Path]]:
    """One study of ``instances`` slices per sender, from the real sample CT slices."""
    slices = sorted(SERIES.iterdir())
    base = [pydicom.dcmread(f) for f in slices]
    out = []
    for s in range(senders):
        study, series, frame = generate_uid(), generate_uid(), generate_uid()
        d = folder / f"sender{s}"
        d.mkdir(parents=True)
        files = []
        for i in range(instances):
            ds = base[i % len(base)].copy()
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.FrameOfReferenceUID = frame
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = i + 1
            pos = [float(v) for v in base[0].ImagePositionPatient]
            ds.ImagePositionPatient = [pos[0], pos[1], pos[2] + 2.0 * i]
            files.append(d / f"{i:05d}.dcm")
            ds.save_as(files[-1], enforce_file_format=True)
        out.append(files)
    return out


def _status(work: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", _MAIN, "listen", "--status", "-o", str(work),
                        "--json"], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(r.stdout)


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--idle-seconds", type=float, default=2.0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    storescu = shutil.which("storescu")
    if storescu is None:
        print("storescu (dcmtk) is not installed", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench_node_"))
    work = tmp / "work"
    port = _free_port()
    try:
        studies = make_studies(tmp / "in", args.senders, args.instances)
        log = open(tmp / "listen.log", "wb")  # noqa: SIM115
        node = subprocess.Popen([sys.executable, "-c", _MAIN, "listen", "-o", str(work),
                                 "--port", str(port), "--host", "127.0.0.1", "--allow",
                                 "BENCH", "--idle-seconds", str(args.idle_seconds),
                                 "--min-free-disk", "0", "--json"], stdout=log,
                                stderr=subprocess.STDOUT, cwd=ROOT)
        t0 = time.monotonic()
        while b'"started"' not in (tmp / "listen.log").read_bytes():
            if node.poll() is not None or time.monotonic() - t0 > 600:
                print((tmp / "listen.log").read_text()[-3000:], file=sys.stderr)
                return 1
            time.sleep(0.2)
        startup = time.monotonic() - t0
        t1 = time.monotonic()
        procs = [subprocess.Popen([storescu, "-aet", "BENCH", "-aec", "MEDXAI", "127.0.0.1",
                                   str(port), *map(str, files)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for files in studies]
        rcs = [p.wait() for p in procs]
        receive_s = time.monotonic() - t1
        total = args.senders * args.instances
        while True:
            st = _status(work)
            if st["studies"]["processed"] + st["studies"]["failed"] >= args.senders:
                break
            if time.monotonic() - t1 > 1800:
                break
            time.sleep(0.5)
        processed_s = time.monotonic() - t1
        peak = _vm_hwm_mb(node.pid)
        node.terminate()
        node.wait(120)
        log.close()
        files_on_disk = sum(1 for _ in (work / "studies").glob("*/instances/*.dcm"))
        rows = [
            ("senders x instances", f"{args.senders} x {args.instances} = {total}"),
            ("storescu exit codes", " ".join(map(str, rcs))),
            ("node start-up (model loaded)", f"{startup:.1f} s"),
            ("all acknowledged after", f"{receive_s:.2f} s"),
            ("received instances/s", f"{total / receive_s:.1f}"),
            ("instances recorded / files on disk", f"{st['instances_received']} / "
                                                   f"{files_on_disk}"),
            ("refused", str(st["refused"])),
            ("studies processed (idle " + f"{args.idle_seconds:g} s incl.)",
             f"{st['studies']['processed']} of {args.senders} after {processed_s:.1f} s"),
            ("node peak memory (VmHWM)", f"{peak:.0f} MB"),
            ("CPU cores", str(os.cpu_count())),
        ]
        w = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k:<{w}}  {v}")
        ok = st["instances_received"] == total == files_on_disk and not any(rcs)
        print("none lost" if ok else "MISMATCH")
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")


if __name__ == "__main__":
    sys.exit(main())
