"""CPU milliseconds per image of each output object, next to the network's, in the same run.

    python benchmarks/bench_outputs_cost.py                  # 8 ISIC val photos, 5 repeats
    python benchmarks/bench_outputs_cost.py --images 16 --repeats 7 --json

What it does: ``--images`` ISIC 2018 val photos (512x512, ../shared/data; synthetic photos
without it) are written as a DICOM export, as ``medxai batch`` sees them (one photo per series,
Secondary Capture XC: ``bench_batch.build_photo_export``), and read back with
``medxai.io.readers.load_image``. The bundled ``isic2018-lesion-unet`` then does, per photo:

- ``network``: the network alone over its test-time augmentation views, in plain torch, on the
  already prepared model input (``process_time``: all torch threads), in the memory layout
  medxai runs it in (channels-last for this 2D network on the CPU);
- ``predict()``: medxai's prediction (preparation, the same views, back onto the photo's grid,
  label map), with the network held for the run as ``medxai batch`` holds it (its layout and
  device set up once, not per photo);
- ``saliency``: the model's default explanation (HiResCAM for this model) of every foreground
  label; where medxai reuses the prediction's identity view for it
  (``medxai.pipeline.saliency_forward``), its forward pass is in ``predict()`` and this row is
  the backward pass;
- each output object of the default batch formats and of the ones on request, with the CPU
  time of the writing thread (``time.thread_time``), recorded per object by
  ``medxai.outputs.write_outputs(object_cpu=...)``;
- ``uncertainty``: the uncertainty maps and quality scores from the collected views (what the
  NIfTI copies, the uncertainty PM and the report take);
- ``report.json``: the report (saliency scores, label statistics, input digest, the
  uncertainty section) and its file, via ``segment_loaded`` with the prediction, the saliency
  maps and the uncertainty above given, as ``medxai batch`` has them (the uncertainty is
  computed once per image: its row above; ``medxai.pipeline.summarise`` is replaced by the
  computed one for this row, where that function exists).

Then a synthetic CT series (64x56x24, oblique) gets the series objects (RTSTRUCT among them)
from a fixed label map and a smooth map: CPU ms per *series*.

Every figure is the median over ``--repeats`` runs (after one warm-up run) of the per-image
mean. CPU time, not wall time: the machine may be shared (say so when you quote a figure).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# this checkout's package after PYTHONPATH's, so that PYTHONPATH=<other checkout> measures that
# one (inserted first, it was measured instead of the other checkout)
sys.path.append(str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: the formats ``medxai batch`` writes by default for a DICOM photo (medxai.pipeline)
ALL_PHOTO_FORMATS = ["nifti", "png", "json", "dicom-seg", "dicom-sc", "dicom-pm", "dicom-sr"]


def _cpu(fn: Any) -> tuple[float, Any]:
    """(thread CPU seconds, result) of ``fn()`` in this thread."""
    c = time.thread_time()
    out = fn()
    return time.thread_time() - c, out


def _proc(fn: Any) -> tuple[float, Any]:
    """(process CPU seconds: all threads, e.g. torch's, result) of ``fn()``."""
    c = time.process_time()
    out = fn()
    return time.process_time() - c, out


#: the network row again, in PyTorch's default memory layout (medxai's before it ran 2D
#: networks channels-last on the CPU): a reference, not part of medxai's work
DEFAULT_LAYOUT_ROW = "network in PyTorch's default layout (reference)"


@contextlib.contextmanager
def _plain_network(bundle: Any) -> Iterator[Any]:
    """A copy of the bundle's network held for the block as medxai holds its own on the CPU
    (``medxai.inference.network_on``: in the memory layout medxai runs it in, channels-last
    for a 2D U-Net in a checkout that has that rule), so that ``predict()`` minus this
    network's time is medxai's own work, not a layout's gain."""
    import torch

    from medxai.inference import network_on

    with network_on(copy.deepcopy(bundle.network), torch.device("cpu")) as net:
        yield net


def _network_views(bundle: Any, x: Any, net: Any) -> None:
    """``net`` over the bundle's TTA views of ``x`` (1, C, H, W), plain torch."""
    import torch

    from medxai.inference import _tta_views, _unview, _view, tta_mode

    mode = tta_mode(bundle.inference)
    with torch.inference_mode():
        total = None
        for view in _tta_views(x.ndim - 2, mode, bundle.contract.inference.tta_axes):
            p = _unview(torch.softmax(net(_view(x, *view)), dim=1), *view)
            total = p if total is None else total + p


def photo_costs(n: int, repeats: int, work: Path) -> dict[str, Any]:
    """Per photo, CPU ms of the network, predict(), saliency and every output object."""
    import torch
    from bench_batch import _photos, build_photo_export

    from medxai.inference import network_on, predict, prepare_input
    from medxai.io.readers import load_image
    from medxai.models.registry import load_model
    from medxai.outputs import write_outputs
    from medxai.pipeline import SegmentOptions, resolve_explain, saliency_maps, segment_loaded
    from medxai.uncertainty import estimate, tta_accumulator

    try:
        from medxai.pipeline import saliency_forward
    except ImportError:  # before the saliency reused the identity view
        saliency_forward = None
    try:
        from medxai.uncertainty import ViewCollector
    except ImportError:  # before the foreground views
        ViewCollector = None  # noqa: N806

    photos = _photos(n, work / "jpegs")
    build_photo_export(photos, work / "export")
    files = sorted((work / "export").rglob("*.dcm"))
    bundle = load_model("isic2018-lesion-unet")
    bundle.network.eval()
    default_layout = copy.deepcopy(bundle.network).eval()
    device = torch.device("cpu")
    opts = SegmentOptions(device="cpu")
    settings = resolve_explain(bundle, opts)
    saliency_method = settings.method if settings else "none"
    runs: list[dict[str, float]] = []
    # medxai's network held for the run, as ``medxai batch`` holds it for its stream of images
    # (set up once, not once per photo: medxai.inference.network_on)
    with _plain_network(bundle) as plain, network_on(bundle.network, device):
        for rep in range(repeats + 1):
            sums: dict[str, float] = {}

            def add(key: str, seconds: float, sums: dict[str, float] = sums) -> None:
                sums[key] = sums.get(key, 0.0) + seconds

            for i, f in enumerate(files):
                s, loaded = _cpu(lambda f=f: load_image(f))
                add("read (load_image)", s)
                x, _ = prepare_input(bundle, loaded.image)
                add("network (TTA views, plain torch)",
                    _proc(lambda x=x: _network_views(bundle, x, plain))[0])
                add(DEFAULT_LAYOUT_ROW,
                    _proc(lambda x=x: _network_views(bundle, x, default_layout))[0])
                views = tta_accumulator(bundle)
                # the hook medxai passes (where it has one: the foreground views of a binary model)
                hook = ViewCollector([views]) if ViewCollector else (lambda _i, p, v=views: v.add(p))
                # the saliency's forward pass is the identity view's, where medxai has that
                kept = saliency_forward(bundle, opts, device) if saliency_forward else None
                extra = {"identity_forward": kept} if kept is not None else {}
                s, pred = _proc(
                    lambda loaded=loaded, hook=hook, extra=extra: predict(
                        bundle, loaded.image, device=device, each_view=hook, **extra)
                )
                add("predict() (prep + network + back)", s)
                extra = {"kept": kept} if kept is not None else {}
                s, maps = _proc(lambda loaded=loaded, pred=pred, extra=extra: saliency_maps(
                    bundle, loaded, opts, device, pred, **extra))
                add(f"saliency ({saliency_method})", s)
                s, unc = _proc(lambda loaded=loaded, pred=pred, views=views: estimate(
                    bundle, loaded.image, pred, "tta", device, views=views))
                add("uncertainty (maps and scores from the TTA views)", s)
                out = work / f"out_{rep}_{i}"
                out.mkdir()
                cpu: dict[str, float] = {}
                s, _ = _cpu(lambda out=out, loaded=loaded, pred=pred, maps=maps, cpu=cpu, unc=unc:
                            write_outputs(out, loaded, bundle, pred, maps, ALL_PHOTO_FORMATS, "x",
                                          method=saliency_method, uncertainty=unc, object_cpu=cpu))
                for k, v in cpu.items():
                    add(k, v)
                add("all objects but report.json (write_outputs)", s)
                json_opts = SegmentOptions(device="cpu", formats=["json"])
                with _uncertainty_given(unc):
                    s, _ = _cpu(lambda loaded=loaded, pred=pred, maps=maps, views=views, i=i, rep=rep,
                                json_opts=json_opts:
                                segment_loaded(loaded, bundle, work / f"json_{rep}", json_opts,
                                               name=f"p{i}", prediction=pred, saliency=maps,
                                               views=views))
                add("report.json (scores, label statistics, sha256; uncertainty given)", s)
            if rep > 0:  # the first run warms up (fonts, imports, caches)
                runs.append({k: 1000 * v / len(files) for k, v in sums.items()})

    return {"images": len(files), "source": _source(photos), "runs": runs,
            "torch_threads": torch.get_num_threads()}


@contextlib.contextmanager
def _uncertainty_given(unc: Any) -> Iterator[None]:
    """Inside: ``segment_loaded`` takes ``unc`` as the uncertainty it would compute from the
    views (computed once per image, as in ``medxai batch``; timed in its own row)."""
    import medxai.pipeline as pipeline

    # the write stage makes the uncertainty from the samples (medxai.pipeline.summarise)
    name = "summarise" if hasattr(pipeline, "summarise") else "_uncertainty"
    if not hasattr(pipeline, name):
        yield
        return
    with mock.patch.object(pipeline, name, lambda *_a, **_k: unc):
        yield


def _source(photos: list[Path]) -> str:
    from _bench_utils import SHARED

    real = (SHARED / "isic2018" / "val" / "images").is_dir()
    return "ISIC 2018 val, 512x512" if real and "synthetic" not in photos[0].name else "synthetic"


def series_costs(repeats: int, work: Path) -> dict[str, Any]:
    """Per series, CPU ms of each output object of a synthetic oblique CT series."""
    import torch

    from medxai.inference import Prediction
    from medxai.io.readers import load_image
    from medxai.models.bundle import ModelBundle, network_from_config
    from medxai.models.networks import default_unet_args
    from medxai.outputs import write_outputs
    from medxai.samples import make_ct_volume, write_ct_series

    vol, lesion = make_ct_volume((64, 56, 24))
    write_ct_series(vol, work / "ct")
    loaded = load_image(work / "ct")
    labels = torch.as_tensor(lesion.astype(np.uint8))[None]
    prob = torch.stack([1.0 - labels[0].float(), labels[0].float()])
    pred = Prediction(probabilities=prob, labels=labels,
                      affine=torch.as_tensor(loaded.image.affine), seconds=0.0)
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, s) for s in vol.shape], indexing="ij")
    sal = torch.as_tensor(np.exp(-(i**2 + j**2 + k**2) * 3).astype(np.float32))[None]
    config = {
        "network_def": {"_target_": "monai.networks.nets.UNet",
                        **default_unet_args(3, 1, 2, width=4, depth=2, num_res_units=0)},
        "input": {"spatial_dims": 3, "channels": 1, "modalities": ["CT"]},
        "preprocessing": {"spatial_size": [32, 32, 16]},
        "inference": {"mode": "whole_image"},
        "labels": [{"value": 0, "name": "background", "color": [0, 0, 0]},
                   {"value": 1, "name": "lesion", "color": [255, 64, 64]}],
    }
    bundle = ModelBundle(config=config, metadata={"name": "bench-ct", "version": "0"},
                         network=network_from_config(config))
    formats = ALL_PHOTO_FORMATS + ["dicom-rtstruct"]
    runs = []
    for rep in range(repeats + 1):
        out = work / f"ct_out_{rep}"
        out.mkdir()
        cpu: dict[str, float] = {}
        write_outputs(out, loaded, bundle, pred, {1: sal}, formats, "ct", method="gradcam",
                      object_cpu=cpu)
        if rep > 0:
            runs.append({k: 1000 * v for k, v in cpu.items()})
    return {"series": f"CT {vol.shape[0]}x{vol.shape[1]}x{vol.shape[2]}", "runs": runs}


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = list(runs[0])
    return {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys}


#: objects ``medxai batch`` writes by default for a DICOM photo (medxai.choices)
def _default_keys() -> set[str]:
    try:
        from medxai.choices import BATCH_DEFAULT_FORMATS
    except ImportError:  # before the batch defaults existed: every format
        return set()
    fmt_keys = {"nifti": ("nifti_",), "png": ("preview",), "json": ("report.json",),
                "dicom-seg": ("seg", "source_photo"), "dicom-sc": ("sc",),
                "dicom-pm": ("pm_",), "dicom-sr": ("sr",), "dicom-rtstruct": ("rtstruct",)}
    return {p for f in BATCH_DEFAULT_FORMATS for p in fmt_keys.get(f, ())}


def _own_work(med: dict[str, float], default_total: float) -> float:
    """medxai's own CPU ms per photo in a batch with the default outputs: everything but the
    network (issue 27's target: at most the network's)."""
    net = med["network (TTA views, plain torch)"]
    keys = ("read", "saliency", "uncertainty")
    med = {k: v for k, v in med.items() if k != DEFAULT_LAYOUT_ROW}
    parts = [v for k, v in med.items() if k.startswith(keys)]
    return sum(parts) + med["predict() (prep + network + back)"] - net + default_total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8, help="ISIC val photos (one per series)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs (after one warm-up)")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch threads (default 1: CPU time without idle-spinning threads)")
    ap.add_argument("--no-series", action="store_true", help="skip the CT series table")
    ap.add_argument("--json", action="store_true", help="print the medians as JSON too")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory(prefix="medxai-bench-cost-") as tmp:
        photo = photo_costs(args.images, args.repeats, Path(tmp))
        series = None if args.no_series else series_costs(args.repeats, Path(tmp))
    med = _medians(photo["runs"])
    net = med["network (TTA views, plain torch)"]
    defaults = _default_keys()
    print(f"CPU ms per photo: {photo['images']} photos as DICOM ({photo['source']}), "
          f"median of {args.repeats} runs, torch threads {photo['torch_threads']}")
    print("| step / object | CPU ms per image | x network | batch default |")
    print("|---|---|---|---|")
    default_total = 0.0
    for k, v in med.items():
        is_default = any(k.startswith(p) for p in defaults) if defaults else None
        if is_default:
            default_total += v
        mark = "" if is_default is None or k.startswith(("read", "network", "predict",
                                                           "saliency", "uncertainty", "all ")) \
            else ("yes" if is_default else "on request")
        print(f"| {k} | {v:.1f} | {v / net:.2f} | {mark} |")
    if defaults:
        print(f"| **batch default objects together** | {default_total:.1f} | "
              f"{default_total / net:.2f} | |")
        own = _own_work(med, default_total)
        print(f"| **medxai's own work** (read, predict() beyond the network, saliency, "
              f"uncertainty, batch default objects) | {own:.1f} | **{own / net:.2f}** | |")
        ref = med[DEFAULT_LAYOUT_ROW]
        print(f"\nmedxai's own work against the network in PyTorch's default layout "
              f"({ref:.1f} ms): {own / ref:.2f}x")
    if series is not None:
        smed = _medians(series["runs"])
        print(f"\nCPU ms per series: {series['series']} (fixed label map, smooth map; no "
              f"network), median of {args.repeats} runs")
        print("| object | CPU ms per series |")
        print("|---|---|")
        for k, v in smed.items():
            print(f"| {k} | {v:.1f} |")
    if args.json:
        print(json.dumps({"photo_ms": med, "series_ms": _medians(series["runs"])
                          if series else None}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
