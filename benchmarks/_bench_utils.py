"""Shared helpers of the medxai benchmark scripts (not a test; not part of the package).

Every script measures medxai and its baseline *interleaved* (A, B, B, A, A, B, ...: the order
flips each repetition so that a slow drift of the machine's load hits both sides alike) and reports
medians, so that the ratios stay meaningful on a loaded machine.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
ISIC_FULLRES = SHARED / "isic2018" / "fullres"
TRAINING_RUN = ROOT / "runs" / "isic2018-unet"

#: The architecture of the bundled ISIC 2018 lesion model (used when no trained bundle is found;
#: timings do not depend on the weights).
ISIC_CONFIG: dict[str, Any] = {
    "network_def": {"_target_": "monai.networks.nets.UNet", "spatial_dims": 2, "in_channels": 3,
                    "out_channels": 2, "channels": [16, 32, 64, 128, 256],
                    "strides": [2, 2, 2, 2], "num_res_units": 2, "dropout": 0.1,
                    "norm": "batch"},
    "input": {"spatial_dims": 2, "channels": 3, "modalities": ["XC", "OT"]},
    "preprocessing": {"intensity": {"kind": "scale", "a_min": 0.0, "a_max": 255.0},
                      "spatial_size": [192, 192]},
    "inference": {"mode": "whole_image", "tta_flips": True},
    "labels": [{"value": 0, "name": "background", "color": [0, 0, 0]},
               {"value": 1, "name": "lesion", "color": [255, 64, 64]}],
}


def set_threads(n: int) -> None:
    """Intra-op threads for torch (and SimpleITK, when it is imported by the caller)."""
    import torch

    torch.set_num_threads(int(n))
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """What the numbers were measured on."""
    import monai
    import torch

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "ram_gib": mem_gib,
        "python": platform.python_version(), "torch": torch.__version__,
        "monai": monai.__version__, "torch_threads": threads or torch.get_num_threads(),
        "loadavg_1_5_15": [round(v, 2) for v in load if v is not None],
        "utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def header_line(info: dict[str, Any]) -> str:
    return (f"machine: {info['nproc']} CPU(s) {info['cpu']}, {info['ram_gib']} GiB; torch "
            f"{info['torch']}, monai {info['monai']}; torch threads {info['torch_threads']}; "
            f"load average at start {info['loadavg_1_5_15']} ({info['utc']} UTC)")


class Timings(dict):
    """case -> list of wall seconds; ``.cpu`` holds case -> list of process CPU seconds.

    On a loaded machine, process CPU time (``time.process_time``: all threads of this process)
    is the steadier measure of the work done; wall time includes waiting for a CPU.
    """

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__({n: [] for n in names})
        self.cpu: dict[str, list[float]] = {n: [] for n in names}


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call, after a garbage collection."""
    gc.collect()
    c = time.process_time()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def interleaved(cases: dict[str, Callable[[], Any]], reps: int, warmup: int = 1) -> Timings:
    """Run each case ``reps`` times, interleaved (order reversed every other round), after
    ``warmup`` untimed rounds. Returns case -> wall seconds (``.cpu``: CPU seconds)."""
    names = list(cases)
    for _ in range(warmup):
        for n in names:
            cases[n]()
    times = Timings(names)
    for r in range(reps):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            wall, cpu = timed(cases[n])
            times[n].append(wall)
            times.cpu[n].append(cpu)
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def emit(result: dict[str, Any], table: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(table)


@contextlib.contextmanager
def temp_dir(prefix: str = "medxai-bench-") -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def isic_bundle(*, use_trained: bool = True) -> tuple[Any, str]:
    """The 2D ISIC lesion bundle: the bundled model, else the training run's bundle (copied
    first, since training may be rewriting it), else an untrained network of the same
    architecture. Returns (bundle, where from)."""
    import torch

    from medxai.models.bundle import ModelBundle, load_bundle, network_from_config

    bundle = None
    source = "untrained network, architecture of isic2018-lesion-unet"
    if use_trained:
        try:
            from medxai.models.registry import load_model

            bundle = load_model()
            source = "bundled isic2018-lesion-unet"
        except Exception:  # noqa: BLE001 - any failure: fall back
            bundle = None
        if bundle is None and (TRAINING_RUN / "models" / "model.pt").is_file():
            with temp_dir() as d:
                try:
                    shutil.copytree(TRAINING_RUN / "configs", d / "configs")
                    shutil.copytree(TRAINING_RUN / "models", d / "models")
                    bundle = load_bundle(d, verify=False)
                    source = "runs/isic2018-unet (checkpoint of the training in progress)"
                except Exception:  # noqa: BLE001
                    bundle = None
    if bundle is None:
        torch.manual_seed(0)
        config = copy.deepcopy(ISIC_CONFIG)
        net = network_from_config(config).eval()
        bundle = ModelBundle(config=config, metadata={"name": "isic2018-lesion-unet",
                                                      "version": "bench"}, network=net)
    bundle.network.eval()
    return bundle, source


def isic_photos(n: int, out: Path) -> tuple[list[Path], str]:
    """``n`` full-resolution ISIC photos spread over the sizes present, or synthetic photos
    (written into ``out``) when the data set is absent."""
    files = sorted(ISIC_FULLRES.glob("*.jpg")) if ISIC_FULLRES.is_dir() else []
    if files:
        from PIL import Image

        by_size: dict[tuple[int, int], list[Path]] = {}
        for f in files:
            with Image.open(f) as im:
                by_size.setdefault(im.size, []).append(f)
        # round-robin over the sizes (largest first) so every size is represented
        sizes = sorted(by_size, key=lambda s: -s[0] * s[1])
        chosen: list[Path] = []
        i = 0
        while len(chosen) < min(n, len(files)):
            s = sizes[i % len(sizes)]
            k = i // len(sizes)
            if k < len(by_size[s]):
                chosen.append(by_size[s][k])
            i += 1
        return chosen, f"ISIC 2018 full-resolution originals ({ISIC_FULLRES})"
    from PIL import Image

    from medxai.samples import make_dermoscopy_photo

    paths = []
    sizes = [(1024, 768), (1504, 1128), (2048, 1536)]
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        rgb, _ = make_dermoscopy_photo(w, h, seed=i)
        p = out / f"synthetic_{i:02d}_{w}x{h}.jpg"
        Image.fromarray(rgb).save(p, quality=92)
        paths.append(p)
    return paths, f"SYNTHETIC photos (medxai.samples; {ISIC_FULLRES} is absent)"


def photo_1024x768(out: Path) -> tuple[Path, str]:
    """A ~1024x768 photo: a real 1022x767 ISIC original when present, else a synthetic one."""
    if ISIC_FULLRES.is_dir():
        from PIL import Image

        for f in sorted(ISIC_FULLRES.glob("*.jpg")):
            with Image.open(f) as im:
                if abs(im.size[0] - 1024) <= 4 and abs(im.size[1] - 768) <= 4:
                    return f, f"{f.name} ({im.size[0]}x{im.size[1]})"
    from PIL import Image

    from medxai.samples import make_dermoscopy_photo

    rgb, _ = make_dermoscopy_photo(1024, 768, seed=1)
    p = out / "synthetic_1024x768.jpg"
    Image.fromarray(rgb).save(p, quality=92)
    return p, "synthetic 1024x768"
