"""CPU milliseconds to encode each DICOM object: medxai's lean encoder against pydicom's save_as.

    python benchmarks/bench_dicom_encode.py               # a 512x512 photo, 20 repeats
    python benchmarks/bench_dicom_encode.py --repeats 50 --ct

What it does: a synthetic 512x512 photo (one round lesion with a hole, a smooth saliency map)
gets the objects of ``medxai batch`` (SEG, the saliency and uncertainty Parametric Maps, the
SR) and the Secondary Capture; ``--ct`` adds a synthetic CT series (64x56x24) with the same
objects and the RTSTRUCT. Each dataset, as the writer hands it to the encoder, is encoded
``--repeats`` times by ``medxai.io.writers._encode.dicom_file_bytes`` (``lean``) and by
``ds.save_as(buffer, enforce_file_format=True)`` (``save_as``), and the two files compared
byte for byte. The SR is encoded as its writer does (``dicom_sr._encoded``) against the
writer's previous save (every item marked as encoded, then ``save_as``). Figures are the
median thread CPU time per object; the machine may be shared (say so when quoting them).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _capture(write: Any) -> list[Any]:
    """The datasets ``write()`` hands to the encoder, in order."""
    from medxai.io.writers import _encode

    seen: list[Any] = []
    real = _encode.lean_attempt

    def keep(ds: Any) -> Any:
        seen.append(ds)
        return real(ds)

    _encode.lean_attempt = keep
    try:
        write()
    finally:
        _encode.lean_attempt = real
    return seen


def _objects(folder: Path, ct: bool) -> list[tuple[str, Any]]:
    """(name, dataset) of each object of one result."""
    from medxai.io import writers as w
    from medxai.io.readers import load_image
    from medxai.samples import make_ct_volume, write_ct_series

    rng = np.random.default_rng(0)
    if ct:
        volume, labels = make_ct_volume((64, 56, 24))
        write_ct_series(volume, folder / "ct")
        source = load_image(folder / "ct").dicom
        shape = volume.shape
    else:
        shape = (512, 512)
        picture = (rng.random((3, *shape)) * 255).astype(np.uint8)
        source = w.create_photo_study(picture, folder / "photo.dcm")
        i, j = np.mgrid[: shape[0], : shape[1]]
        r = np.hypot(i - 250, j - 260)
        labels = ((r < 140) & (r > 20)).astype(np.uint8)
    saliency = np.exp(-(((np.indices(shape) - 200.0) / 90.0) ** 2).sum(axis=0))
    model = {"model_name": "bench-unet", "model_version": "1"}
    info = [{"value": 1, "name": "lesion", "color": [255, 0, 0]}]
    out: list[tuple[str, Any]] = []

    def add(name: str, write: Any) -> Any:
        (ds, *_) = _capture(write)
        out.append((name, ds))

    add("seg", lambda: w.write_dicom_seg(labels, source, info, *model.values(), folder / "s.dcm"))
    add("pm_saliency", lambda: w.write_dicom_pm(saliency, source, folder / "p.dcm", **model))
    add(
        "pm_uncertainty",
        lambda: w.write_dicom_pm(
            saliency / 2, source, folder / "u.dcm", quantity="uncertainty", **model
        ),
    )
    seg = folder / "s.dcm"
    add(
        "sr",
        lambda: w.write_dicom_sr(
            labels, source, seg, info, folder / "r.dcm", saliency={1: saliency}, **model
        ),
    )
    rgb = w.overlay_rgb(np.zeros((3, *shape), np.uint8), labels, None, info)
    add("sc", lambda: w.write_dicom_sc(rgb, source, folder / "sc", *model.values()))
    if ct:
        add(
            "rtstruct",
            lambda: w.write_dicom_rtstruct(labels, source, info, folder / "rt.dcm", **model),
        )
    return out


def _cpu_ms(fn: Any, repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        c = time.thread_time()
        result = fn()
        times.append(time.thread_time() - c)
    return statistics.median(times) * 1e3, result


def _save_as(ds: Any) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _sr_as_before(sr: Any) -> bytes:
    """The SR's save before the lean encoder: every item marked as encoded, then save_as."""
    items: list[Any] = []

    def walk(ds: Any) -> None:
        for elem in ds._dict.values():
            if getattr(elem, "VR", None) == "SQ" and not getattr(elem, "is_raw", False):
                for item in elem.value:
                    items.append(item)
                    walk(item)

    walk(sr)
    before = [(it.original_encoding, it.original_character_set) for it in items]
    try:
        for item in items:
            item.set_original_encoding(False, True, item._character_set)
        return _save_as(sr)
    finally:
        for item, ((implicit, little), charset) in zip(items, before, strict=True):
            item.set_original_encoding(implicit, little, charset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--ct", action="store_true", help="also a synthetic CT series")
    args = parser.parse_args()
    from medxai.io.writers import dicom_sr
    from medxai.io.writers._encode import dicom_file_bytes, lean_file_bytes

    warnings.simplefilter("ignore")
    print("| object | elements | lean ms | save_as ms | save_as / lean |")
    print("|---|---|---|---|---|")
    for ct in [False, True] if args.ct else [False]:
        with tempfile.TemporaryDirectory() as tmp:
            for name, ds in _objects(Path(tmp), ct):
                if name == "sr":
                    lean_ms, lean = _cpu_ms(lambda d=ds: dicom_sr._encoded(d), args.repeats)
                    pyd_ms, pyd = _cpu_ms(lambda d=ds: _sr_as_before(d), args.repeats)
                else:
                    lean_ms, lean = _cpu_ms(lambda d=ds: dicom_file_bytes(d), args.repeats)
                    pyd_ms, pyd = _cpu_ms(lambda d=ds: _save_as(d), args.repeats)
                assert lean == pyd, f"{name}: the lean file differs from pydicom's"
                if name != "sr":
                    assert lean_file_bytes(ds) is not None, f"{name}: fell back to pydicom"
                n = sum(1 for _ in ds.iterall())
                label = f"{'ct ' if ct else 'photo '}{name}"
                print(f"| {label} | {n} | {lean_ms:.2f} | {pyd_ms:.2f} | {pyd_ms / lean_ms:.1f}x |")


if __name__ == "__main__":
    main()
