"""3D sliding-window inference: medxai ``predict`` vs plain MONAI ``sliding_window_inference``.

A 3D MONAI UNet (channels 8,16,32,64, strides 2,2,2; 1 input channel, 2 labels) on a synthetic
CT-like 512x512xN float32 volume (default N=64; ``--depth 300`` for a full-size CT) with a 96^3
window (``--roi 64`` for 64^3), overlap 0.25, gaussian blending, 4 windows per batch, CPU.

Each variant runs in a fresh Python subprocess so that its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is its own; the peak is reset to the current RSS
(``/proc/self/clear_refs``) once the volume and network are in memory, so "peak - before" is what
the inference itself adds. Variants:

- ``monai``: ``ScaleIntensityRange`` then ``sliding_window_inference(x, roi, 4, net, 0.25,
  "gaussian")``, softmax, argmax to uint8: the plain script.
- ``medxai``: ``medxai.inference.predict(bundle, image, device="cpu")`` with a bundle describing
  the same network and window settings: intensity scaling, reorientation to RAS (the image
  carries the affine a CT read from DICOM gets, ``diag(-0.7, -0.7, 1.5)``: two axis flips),
  sliding window with windows on ``device`` and stitching on the CPU, softmax, orientation
  undone, argmax. It returns the probabilities *and* the label map.

Reported per variant: wall and CPU time of the inference (median over ``--reps`` subprocesses,
interleaved A, B, B, A, ...), peak RSS, RSS before the inference (volume + network loaded) and the
difference, against the theoretical size of one float32 buffer of the volume (= one label's
output, or the input).

Usage::

    python benchmarks/bench_sliding_window_3d.py                  # 512x512x64, roi 96
    python benchmarks/bench_sliding_window_3d.py --depth 300 --roi 96 --reps 1 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

AFFINE = [[-0.7, 0, 0, 180.0], [0, -0.7, 0, 180.0], [0, 0, 1.5, -100.0], [0, 0, 0, 1]]
LABELS = 2


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM, and with it ru_maxrss) to the current RSS (Linux
    >= 4.0: write 5 to /proc/self/clear_refs). False when that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _network(res_units: int) -> Any:
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(spatial_dims=3, in_channels=1, out_channels=LABELS, channels=(8, 16, 32, 64),
                strides=(2, 2, 2), num_res_units=res_units, norm="batch").eval()


def _volume(depth: int) -> Any:
    """A CT-like (1, 512, 512, depth) float32 volume in HU: body ellipse, noise, no tumours."""
    import torch

    g = torch.Generator().manual_seed(0)
    vol = torch.randn((1, 512, 512, depth), generator=g).mul_(20.0)
    yy, xx = torch.meshgrid(torch.arange(512.0), torch.arange(512.0), indexing="ij")
    body = (((xx - 256) / 200) ** 2 + ((yy - 256) / 150) ** 2) < 1
    vol[0] += torch.where(body, 40.0, -1000.0)[..., None]
    return vol


def child(variant: str, depth: int, roi: int, threads: int, res_units: int, sw_batch: int
          ) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    net = _network(res_units)
    vol = _volume(depth)
    with torch.inference_mode():  # warm up the kernels on one small window
        net(torch.zeros(1, 1, 32, 32, 32))
    reset = _reset_peak()
    rss_before = _status_mib("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    if variant == "monai":
        from monai.inferers import sliding_window_inference
        from monai.transforms import ScaleIntensityRange

        x = ScaleIntensityRange(-1000.0, 1000.0, 0.0, 1.0, clip=True)(vol)
        with torch.inference_mode():
            logits = sliding_window_inference(x[None], roi_size=(roi,) * 3, sw_batch_size=sw_batch,
                                              predictor=net, overlap=0.25, mode="gaussian",
                                              progress=False)
            prob = torch.softmax(logits, dim=1)[0]
            labels = prob.argmax(0, keepdim=True).to(torch.uint8)
        out_shape = tuple(labels.shape)
    else:
        from monai.data import MetaTensor

        from medxai.inference import predict
        from medxai.models.bundle import ModelBundle

        image = MetaTensor(vol, affine=torch.tensor(AFFINE, dtype=torch.float64),
                           meta={"spacing": [0.7, 0.7, 1.5]})
        config = {
            "network_def": {"_target_": "monai.networks.nets.UNet"},
            "input": {"spatial_dims": 3, "channels": 1, "modalities": ["CT"]},
            "preprocessing": {"intensity": {"kind": "scale", "a_min": -1000.0, "a_max": 1000.0}},
            "inference": {"mode": "sliding_window", "roi_size": [roi] * 3, "overlap": 0.25,
                          "sw_batch_size": sw_batch, "blend_mode": "gaussian"},
            "labels": [{"value": 0, "name": "background"}, {"value": 1, "name": "organ"}],
        }
        bundle = ModelBundle(config=config, metadata={"name": "bench3d"}, network=net)
        pred = predict(bundle, image, device="cpu")
        out_shape = tuple(pred.labels.shape)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": variant, "wall_s": wall, "cpu_s": cpu, "peak_rss_mib": peak,
            "vm_hwm_mib": _status_mib("VmHWM"), "rss_before_mib": rss_before,
            "peak_reset_before_inference": reset, "out_shape": list(out_shape)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depth", type=int, default=64, help="slices N of the 512x512xN volume")
    ap.add_argument("--roi", type=int, default=96, choices=(64, 96, 128), help="window side")
    ap.add_argument("--reps", type=int, default=1, help="subprocess runs per variant (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--res-units", type=int, default=1, help="UNet residual units (default 1)")
    ap.add_argument("--sw-batch", type=int, default=4, help="windows per forward (default 4)")
    ap.add_argument("--variants", default="medxai,monai")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        print(json.dumps(child(args.child, args.depth, args.roi, args.threads, args.res_units,
                               args.sw_batch)))
        return 0

    from _bench_utils import header_line, machine_info, markdown_table, median

    info = machine_info(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for r in range(args.reps):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            cmd = [sys.executable, __file__, "--child", v, "--depth", str(args.depth), "--roi",
                   str(args.roi), "--threads", str(args.threads), "--res-units",
                   str(args.res_units), "--sw-batch", str(args.sw_batch)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                 env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return 1
            runs[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
    nvox = 512 * 512 * args.depth
    buf_mib = nvox * 4 / 2**20
    stride = max(1, int(args.roi * 0.75))

    def n_win(s: int) -> int:
        s = max(s, args.roi)
        return 1 + -(-(s - args.roi) // stride)

    windows = n_win(512) ** 2 * n_win(args.depth)
    rows = []
    for v in variants:
        rs = runs[v]
        peak = median([x["peak_rss_mib"] for x in rs])
        before = median([x["rss_before_mib"] for x in rs])
        rows.append([v, f"{median([x['wall_s'] for x in rs]):.1f}",
                     f"{median([x['cpu_s'] for x in rs]):.1f}", f"{peak:.0f}", f"{before:.0f}",
                     f"{peak - before:.0f}", f"{(peak - before) / buf_mib:.1f}"])
    result = {"machine": info, "args": vars(args), "runs": runs, "windows": windows,
              "float32_buffer_per_label_mib": buf_mib, "labels": LABELS,
              "machine_end_loadavg": machine_info(args.threads)["loadavg_1_5_15"]}
    table = (
        f"<!-- {header_line(info)} -->\n\n"
        f"### 3D sliding window, 512x512x{args.depth} float32 volume, roi {args.roi}^3, overlap "
        f"0.25 ({windows} windows), sw_batch {args.sw_batch}, UNet 3D (8,16,32,64) res units "
        f"{args.res_units}, {LABELS} labels, CPU, {args.threads} thread(s); median of "
        f"{args.reps} fresh subprocess(es) per variant\n\n"
        f"One float32 buffer of the volume (one label's output, or the input) = "
        f"{buf_mib:.0f} MiB; the K={LABELS} output probabilities = {LABELS * buf_mib:.0f} MiB.\n\n"
        + markdown_table(["variant", "wall s", "CPU s", "peak RSS MiB",
                          "RSS before inference MiB", "peak - before MiB",
                          "(peak - before) / one buffer"], rows)
        + f"\n\n<!-- load average at end: {result['machine_end_loadavg']} -->")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
