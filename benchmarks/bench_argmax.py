"""Label map from class probabilities: ``prob.argmax(0)`` vs alternatives that give the same labels.

``medxai.inference.predict`` (and MONAI's ``AsDiscrete(argmax=True)``) take the argmax over the
class axis of a ``(K, *spatial)`` tensor. On the CPU, torch's reduction along that outer axis is
slow. This script times it against three alternatives that give identical labels (checked):
``torch.max(p, 0)``, a running maximum over the channels (first maximum wins, like argmax), and
for K == 2 a single comparison.

Usage::

    python benchmarks/bench_argmax.py                     # 2592x1944 photo and 512x512x64
    python benchmarks/bench_argmax.py --depth 300 --json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from medxai.inference import _argmax_channels as running_argmax  # noqa: E402

from _bench_utils import (  # noqa: E402
    emit,
    header_line,
    interleaved,
    machine_info,
    markdown_table,
    median,
    set_threads,
)



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depth", type=int, default=64, help="slices of the 512x512xN volume case")
    ap.add_argument("--labels", type=int, default=2, help="K, classes incl. background")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    info = machine_info(args.threads)
    g = torch.Generator().manual_seed(0)
    rows = []
    result: dict[str, Any] = {"machine": info, "args": vars(args), "cases": []}
    for shape in ((2592, 1944), (512, 512, args.depth)):
        p = torch.softmax(torch.randn((args.labels, *shape), generator=g), 0)
        ref = p.argmax(0, keepdim=True).to(torch.uint8)
        cases = {
            "p.argmax(0)": lambda p=p: p.argmax(0, keepdim=True).to(torch.uint8),
            "torch.max(p, 0)": lambda p=p: torch.max(p, 0, keepdim=True)[1].to(torch.uint8),
            "running max over channels": lambda p=p: running_argmax(p),
        }
        if args.labels == 2:
            cases["p[1] > p[0] (K = 2)"] = lambda p=p: (p[1:2] > p[0:1]).to(torch.uint8)
        for name, fn in cases.items():
            assert torch.equal(fn(), ref), name
        t = interleaved(cases, reps=args.reps, warmup=1)
        base = median(t.cpu["p.argmax(0)"])
        for name in cases:
            c = median(t.cpu[name])
            rows.append(["x".join(map(str, (args.labels, *shape))), name,
                         f"{c * 1e3:.0f} ({median(t[name]) * 1e3:.0f})", f"{base / c:.1f}x"])
        result["cases"].append({"shape": [args.labels, *shape], "wall_s": dict(t),
                                "cpu_s": t.cpu})
    table = (f"<!-- {header_line(info)} -->\n\n### label map from probabilities ({args.threads} "
             f"thread(s); median of {args.reps}; all give identical labels)\n\n"
             + markdown_table(["probabilities", "method", "CPU ms (wall)", "speed-up vs argmax"],
                              rows))
    emit(result, table, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
