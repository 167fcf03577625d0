"""The bundled networks on the CPU in PyTorch's default memory format vs channels-last.

``medxai.inference.network_on`` runs a 2D network on the CPU with its weights in the
channels-last memory format (oneDNN's convolutions take the channels innermost) and gives it
back as it was. This script times each bundled network's forward pass (a batch of one image's
TTA views, and one view alone), its forward and backward pass (what a gradient saliency runs),
in both layouts, interleaved, and checks that the outputs agree. The 3D network is timed with
``channels_last_3d`` as well, which medxai does not use.

Usage::

    python benchmarks/bench_channels_last.py                 # one torch thread
    python benchmarks/bench_channels_last.py --threads 2 --reps 7 --json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _bench_utils import (  # noqa: E402
    emit,
    header_line,
    interleaved,
    machine_info,
    markdown_table,
    median,
    set_threads,
)

from medxai.models.registry import load_model  # noqa: E402

#: (model, input shape of one pass, what the pass is)
CASES = [
    ("isic2018-lesion-unet", (8, 3, 192, 192), "8 TTA views"),
    ("isic2018-lesion-unet", (1, 3, 192, 192), "1 view"),
    ("cxr-lungs-unet", (1, 1, 256, 256), "1 image (no TTA)"),
    ("hippocampus-unet", (4, 1, 40, 56, 40), "4 windows (sw_batch_size)"),
]


def _forward(net: torch.nn.Module, x: torch.Tensor) -> Any:
    with torch.no_grad():
        return net(x)


def _backward(net: torch.nn.Module, x: torch.Tensor) -> None:
    net.zero_grad(set_to_none=True)
    net(x)[:, 1].sum().backward()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    info = machine_info(args.threads)
    g = torch.Generator().manual_seed(0)
    rows, result = [], {"machine": info, "args": vars(args), "cases": []}
    for model, shape, what in CASES:
        bundle = load_model(model)
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        default, other = bundle.network.eval(), load_model(model).network.eval()
        other.to(memory_format=fmt)
        x = torch.rand(shape, generator=g)
        diff = float((_forward(default, x) - _forward(other, x)).abs().max())
        for step, fn in (("forward", _forward), ("forward + backward", _backward)):
            t = interleaved({"default": lambda fn=fn, n=default, x=x: fn(n, x),
                             "other": lambda fn=fn, n=other, x=x: fn(n, x)}, args.reps)
            a, b = median(t.cpu["default"]) * 1000, median(t.cpu["other"]) * 1000
            aw, bw = median(t["default"]) * 1000, median(t["other"]) * 1000
            name = "channels_last" if len(shape) == 4 else "channels_last_3d"
            rows.append([model, what, step, name, f"{a:.1f} ({aw:.1f})", f"{b:.1f} ({bw:.1f})",
                         f"{b / a:.2f}", f"{diff:.1e}"])
            result["cases"].append({"model": model, "input": list(shape), "step": step,
                                    "layout": name, "default_cpu_ms": a, "other_cpu_ms": b,
                                    "default_wall_ms": aw, "other_wall_ms": bw,
                                    "max_abs_diff": diff})
    table = markdown_table(["model", "pass", "step", "other layout", "default CPU ms (wall)",
                            "other CPU ms (wall)", "other / default", "max |logit diff|"], rows)
    emit(result, header_line(info) + "\n\n" + table, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
