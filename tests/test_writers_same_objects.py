"""The default DICOM objects of a result (SEG, the saliency and uncertainty Parametric Maps, the
TID 1500 SR) are pinned element for element, for several ISIC photos and a CT series.

The objects are built by ``medxai.outputs.write_outputs`` (formats ``dicom-seg``, ``dicom-pm``,
``dicom-sr``; UIDs derived from a fixed seed) from fixed inputs: the ISIC 2018 val photos as
Secondary Capture DICOMs (as ``benchmarks/bench_outputs_cost.py`` and ``medxai batch`` see
them) and the sample CT series, with label maps, saliency maps and uncertainty maps computed
from the pixels (no network: the objects, not the model, are under test). Each object is read
back, its dates and times blanked (``DA``/``TM``/``DT`` values, wherever they are nested), the UIDs
highdicom draws at random numbered, and
its pydicom JSON (``to_json_dict``) hashed. ``tests/golden/default_dicom_objects.json`` holds
those hashes as the writers made them before their building was made cheaper (issue 27: the
objects must stay the same). After a deliberate change of the output, rewrite it with
``MEDXAI_UPDATE_GOLDEN=1 python -m pytest tests/test_writers_same_objects.py``.

The hashes hold for the highdicom and pydicom versions recorded in the file; with others the
test is skipped (a new library version may add or encode an attribute differently; the golden
tests of tests/test_writers_golden.py compare the decoded content then).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from scipy import ndimage

from tests.conftest import shared_path

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

GOLDEN = Path(__file__).resolve().parent / "golden" / "default_dicom_objects.json"
FORMATS = ["dicom-seg", "dicom-pm", "dicom-sr"]
PHOTOS = 4
_VERSIONS = {"highdicom": hd.__version__, "pydicom": pydicom.__version__}
_BLANK = {"DA": "", "TM": "", "DT": ""}
#: the root of the UIDs highdicom draws itself (medxai's derived UIDs have pydicom's)
_RANDOM_ROOT = "1.2.826.0.1.3680043.10.511."


def _normalise(ds: pydicom.Dataset) -> None:
    """Blank dates and times; number the UIDs highdicom draws at random (DimensionOrganizationUID)
    in order of appearance. medxai's own UIDs are derived from the seed and stay as they are."""
    uids: dict[str, str] = {}
    for elem in ds.iterall():
        if elem.VR in _BLANK:
            elem.value = ""
        elif elem.VR == "UI" and elem.VM == 1 and str(elem.value).startswith(_RANDOM_ROOT):
            elem.value = uids.setdefault(str(elem.value), f"9.{len(uids) + 1}")


def object_digest(path: Path) -> str:
    """SHA-256 of the pydicom JSON of the object at ``path`` (:func:`_normalise`)."""
    ds = pydicom.dcmread(path)
    _normalise(ds)
    text = json.dumps(ds.to_json_dict(), sort_keys=True)
    meta = json.dumps(ds.file_meta.to_json_dict(), sort_keys=True)
    return hashlib.sha256((meta + text).encode()).hexdigest()


def _bundle(labels: list[dict[str, Any]]) -> Any:
    # write_outputs reads the name, version, weights' hash and labels of the bundle
    return SimpleNamespace(
        name="objects-test-unet", version="1.0.0", weights_sha256="ab" * 32, labels=labels
    )


PHOTO_LABELS = [
    {"value": 0, "name": "background", "color": [0, 0, 0]},
    {"value": 1, "name": "lesion", "color": [255, 64, 64]},
]
CT_LABELS = [
    {"value": 0, "name": "background", "color": [0, 0, 0]},
    {"value": 1, "name": "lesion", "color": [255, 64, 64]},
    {"value": 2, "name": "rim", "color": [64, 255, 64]},
]


def _maps(gray: np.ndarray, labels: np.ndarray, values: list[int]) -> tuple[dict, Any]:
    """Saliency maps (one per foreground label) and an uncertainty of ``labels``, from the
    pixels: fixed, smooth, non-trivial."""
    from medxai.uncertainty import Uncertainty

    smooth = ndimage.gaussian_filter(gray.astype(np.float64), 4)
    span = float(np.ptp(smooth)) or 1.0
    saliency = {}
    for n, value in enumerate(values):
        inside = ndimage.gaussian_filter((labels == value).astype(np.float64), 6 + 2 * n)
        sal = (inside * (smooth - smooth.min()) / span).astype(np.float32)
        saliency[value] = torch.as_tensor(sal)[None]
    edge = ndimage.gaussian_gradient_magnitude((labels > 0).astype(np.float64), 2)
    entropy = (edge / (edge.max() or 1.0)).astype(np.float32)
    unc = Uncertainty(
        method="tta",
        samples=4,
        entropy=torch.as_tensor(entropy)[None],
        variance=torch.as_tensor(entropy / 4)[None],
        scores={"quality_score": 0.8125},
    )
    return saliency, unc


def _write(out: Path, loaded: Any, labels: np.ndarray, info: list, seed: str) -> dict[str, str]:
    from medxai.inference import Prediction
    from medxai.outputs import write_outputs

    values = [int(v) for v in np.unique(labels) if v]
    saliency, unc = _maps(_gray(loaded.image), labels, values)
    lab = torch.as_tensor(labels)[None]
    onehot = torch.stack([(lab[0] == lv["value"]).float() for lv in info])
    pred = Prediction(
        probabilities=onehot,
        labels=lab,
        affine=torch.as_tensor(loaded.image.affine),
        seconds=0.0,
    )
    out.mkdir(parents=True)
    files, _, skipped = write_outputs(
        out,
        loaded,
        _bundle(info),
        pred,
        saliency,
        FORMATS,
        "x",
        method="hirescam",
        uncertainty=unc,
        uid_seed=seed,
    )
    assert not skipped, skipped
    return {f: object_digest(out / f) for f in sorted(files)}


def _gray(image: Any) -> np.ndarray:
    arr = np.asarray(image.detach().cpu().numpy(), dtype=np.float64)
    return arr.mean(0) if arr.shape[0] in (1, 3) else arr


def photo_export(folder: Path, n: int = PHOTOS) -> list[Path]:
    """The first ``n`` ISIC 2018 val photos as Secondary Capture DICOMs with fixed UIDs."""
    from PIL import Image

    from medxai.samples import write_dermoscopy_dicom

    photos = sorted(shared_path("isic2018", "val", "images").glob("*.jpg"))[:n]
    paths = []
    for i, photo in enumerate(photos):
        rgb = np.asarray(Image.open(photo).convert("RGB"))
        path = folder / f"IM{i:05d}.dcm"
        write_dermoscopy_dicom(rgb, path)
        ds = pydicom.dcmread(path)
        uid = f"1.2.826.0.1.3680043.10.1476.17.{i // 8}"
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{uid}.{i}"
        ds.InstanceNumber = i + 1
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def photo_labels(loaded: Any) -> np.ndarray:
    """A lesion mask of a dermoscopy photo, like a model's: the three largest components of the
    dark pixels, opened."""
    gray = ndimage.median_filter(_gray(loaded.image), 5)
    mask = ndimage.binary_opening(gray < np.percentile(gray, 25), iterations=2)
    components, n = ndimage.label(mask)
    sizes = ndimage.sum_labels(mask, components, range(1, n + 1))
    keep = 1 + np.argsort(-sizes, kind="stable")[:3]
    return np.isin(components, keep).astype(np.uint8)


def ct_case(folder: Path) -> tuple[Any, np.ndarray]:
    from medxai.io.readers import load_image
    from medxai.samples import make_ct_volume, write_ct_series

    vol, lesion = make_ct_volume((64, 56, 12))
    write_ct_series(vol, folder)
    loaded = load_image(folder)
    rim = ndimage.binary_dilation(lesion, iterations=2) & ~lesion.astype(bool)
    labels = lesion.astype(np.uint8) + 2 * rim.astype(np.uint8)
    return loaded, labels


def all_digests(work: Path, n: int = PHOTOS) -> dict[str, str]:
    """``{case/file: digest}`` of the default DICOM objects of ``n`` photos and the CT series."""
    from medxai.io.readers import load_image

    warnings.simplefilter("ignore")
    out: dict[str, str] = {}
    for i, path in enumerate(photo_export(work / "photos", n)):
        loaded = load_image(path)
        digests = _write(work / f"photo{i}", loaded, photo_labels(loaded), PHOTO_LABELS, f"p{i}")
        out.update({f"photo{i}/{k}": v for k, v in digests.items()})
    loaded, labels = ct_case(work / "ct")
    digests = _write(work / "ct_out", loaded, labels, CT_LABELS, "ct")
    out.update({f"ct/{k}": v for k, v in digests.items()})
    return out


def test_default_dicom_objects_are_unchanged(tmp_path):
    digests = all_digests(tmp_path)
    if os.environ.get("MEDXAI_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps({"versions": _VERSIONS, "objects": digests}, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())
    if golden["versions"] != _VERSIONS:
        pytest.skip(f"golden digests made with {golden['versions']}, installed {_VERSIONS}")
    # every photo has a SEG, a saliency PM, an uncertainty PM and an SR
    assert sorted(k.split("/")[1] for k in digests if k.startswith("photo0/")) == [
        "pm_saliency_lesion.dcm",
        "pm_uncertainty.dcm",
        "seg.dcm",
        "sr.dcm",
    ]
    assert digests == golden["objects"]
