"""Cost of each saliency method relative to one inference of the 2D lesion model (CPU).

Input: photos prepared as ``predict`` prepares them (``medxai.inference.prepare_input``: scaled to
[0, 1], resized to the model's input size: the bundle's ``spatial_size``, 160x160 for the
bundled isic2018-lesion-unet, 192x192 for the training run's bundle; ``--size`` overrides it),
one at a time ``(1, 3, S, S)``.

Measured, interleaved per image (medians):

- ``inference``: one forward pass under ``torch.inference_mode`` (the unit of the ratios);
- ``inference + TTA``: identity + 2 flips (what ``predict`` does when the bundle asks for TTA);
- ``gradcam``, ``gradcampp``, ``occlusion``, ``ig``: ``medxai.explain.explain(net, x, method)``
  with the methods' default options (occlusion: patch 1/8 of the side, stride half a patch,
  16 images per pass; IG: 32 steps, 16 per pass).

Usage::

    python benchmarks/bench_saliency.py               # 3 photos; ~1-2 min on 2 loaded cores
    python benchmarks/bench_saliency.py --images 10 --reps 5 --heavy-reps 3 --json
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _bench_utils import (  # noqa: E402
    emit,
    header_line,
    isic_bundle,
    isic_photos,
    machine_info,
    markdown_table,
    median,
    set_threads,
    temp_dir,
    timed,
)

warnings.filterwarnings("ignore", message=".*nvImageCodec.*")

HEAVY = ("occlusion", "ig")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=3, help="photos (default 3)")
    ap.add_argument("--reps", type=int, default=3,
                    help="reps of inference/gradcam/gradcampp per image (default 3)")
    ap.add_argument("--heavy-reps", type=int, default=1,
                    help="reps of occlusion and ig per image (default 1)")
    ap.add_argument("--methods", default="gradcam,gradcampp,occlusion,ig")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--size", type=int, default=None,
                    help="override the bundle's model input side (e.g. 192); default: the "
                         "bundle's spatial_size")
    ap.add_argument("--untrained", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from medxai.explain import explain
    from medxai.inference import prepare_input
    from medxai.io.readers import read_image

    set_threads(args.threads)
    info = machine_info(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    with temp_dir() as tmp:
        photos, photo_source = isic_photos(args.images, tmp)
        bundle, model_source = isic_bundle(use_trained=not args.untrained)
        if args.size:
            bundle.config["preprocessing"]["spatial_size"] = [args.size, args.size]
            model_source += f" (input size overridden to {args.size}x{args.size})"
        net = bundle.network.eval()
        inputs = [prepare_input(bundle, read_image(p))[0] for p in photos]

    def infer(x: torch.Tensor, tta: bool = False) -> torch.Tensor:
        with torch.inference_mode():
            p = torch.softmax(net(x), 1)
            if tta:
                for ax in (2, 3):
                    p = p + torch.softmax(net(x.flip(ax)), 1).flip(ax)
        return p

    cases: dict[str, Any] = {
        "inference (1 forward)": lambda x: infer(x),
        "inference + flip TTA (3 forwards)": lambda x: infer(x, True),
    }
    for m in methods:
        cases[m] = lambda x, m=m: explain(net, x, m, target_label=1)
    names = list(cases)
    times: dict[str, list[float]] = {n: [] for n in names}      # CPU s, median per image
    walls: dict[str, list[float]] = {n: [] for n in names}      # wall s, median per image
    # warm-up: every case once on the first image
    for n in names:
        cases[n](inputs[0])
    rounds = max(args.reps, args.heavy_reps)
    for x in inputs:
        per: dict[str, list[float]] = {n: [] for n in names}
        per_wall: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]
            for n in order:
                limit = args.heavy_reps if n in HEAVY else args.reps
                if r >= limit:
                    continue
                wall, cpu = timed(lambda n=n: cases[n](x))
                per[n].append(cpu)
                per_wall[n].append(wall)
        for n in names:
            times[n].append(median(per[n]))
            walls[n].append(median(per_wall[n]))
    unit = sum(times[names[0]]) / len(inputs)
    unit_wall = sum(walls[names[0]]) / len(inputs)
    spatial = tuple(inputs[0].shape[2:])
    patch = tuple(max(1, math.ceil(s / 8)) for s in spatial)
    per_axis = [len(range(0, s - p + 1, max(1, p // 2))) + (1 if (s - p) % max(1, p // 2) else 0)
                for s, p in zip(spatial, patch)]
    passes = {
        "inference (1 forward)": "1 forward",
        "inference + flip TTA (3 forwards)": "3 forwards",
        "gradcam": "1 forward + 1 backward",
        "gradcampp": "1 forward + 1 backward",
        "occlusion": f"1 + {math.prod(per_axis)} occluded forwards (batches of 16)",
        "ig": "1 forward + 32 forward/backward (batches of 16)",
    }
    rows = []
    result: dict[str, Any] = {"machine": info, "args": vars(args), "photos": photo_source,
                              "model": model_source, "input_shape": list(inputs[0].shape),
                              "per_image_cpu_s": times, "per_image_wall_s": walls,
                              "ratios_cpu": {}, "ratios_wall": {}}
    for n in names:
        ms = sum(times[n]) / len(inputs) * 1e3
        ms_wall = sum(walls[n]) / len(inputs) * 1e3
        ratio = ms / (unit * 1e3)
        ratio_wall = ms_wall / (unit_wall * 1e3)
        result["ratios_cpu"][n] = ratio
        result["ratios_wall"][n] = ratio_wall
        rows.append([n, passes.get(n, ""), f"{ms:.0f} ({ms_wall:.0f})",
                     f"{ratio:.1f}x ({ratio_wall:.1f}x)"])
    result["machine_end_loadavg"] = machine_info(args.threads)["loadavg_1_5_15"]
    table = (f"<!-- {header_line(info)} -->\n\n"
             f"### saliency cost vs one inference (CPU, {args.threads} thread(s), input "
             f"{tuple(inputs[0].shape)}, {len(inputs)} photo(s); per-image mean of medians; "
             f"{args.reps} rep(s), occlusion/ig {args.heavy_reps}; **CPU** (wall))\n\n"
             f"photos: {photo_source}; model: {model_source}\n\n"
             + markdown_table(["method", "passes", "ms per image, CPU (wall)",
                              "x one inference, CPU (wall)"], rows)
             + f"\n\n<!-- load average at end: {result['machine_end_loadavg']} -->")
    emit(result, table, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
