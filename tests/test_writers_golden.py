"""The SEG and SC writers' output for fixed inputs is pinned: everything but the UIDs medxai and
highdicom generate and the dates/times of writing must stay the same, element by element and
byte for byte (pixel data included).

The golden files in ``tests/golden/`` are dumps of the normalised datasets (pydicom JSON, bulk
data replaced by its SHA-256) plus the SHA-256 of the normalised file. They were written before
the writers were split into steps (issue 12 item 6) and pin that the split changed nothing.
After a deliberate change of the output, rewrite them with
``MEDXAI_UPDATE_GOLDEN=1 python -m pytest tests/test_writers_golden.py``.

The element-by-element and byte comparison holds for the highdicom and pydicom versions recorded
in each file (CI installs exactly those: .ci/constraints.txt). With other versions, where a new
library may add an optional attribute or encode a value differently, the decoded content is
compared instead, and must be the same: the pixels as pydicom decodes them (SHA-256 of the array,
shape and dtype) and the values of the attributes that say what the object shows and where
(:data:`_CONTENT_KEYWORDS`, wherever they are nested, in order). The test never skips.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from medxai.io.writers import overlay_rgb, write_dicom_sc, write_dicom_seg
from tests.helpers_dicom import load_multiframe, load_series, load_single, pydicom_file

GOLDEN = Path(__file__).resolve().parent / "golden"
LABELS = [
    {"value": 1, "name": "lesion", "color": [255, 0, 0]},
    {"value": 2, "name": "liver", "color": [0, 255, 0]},
]
MODEL = ("test-unet", "1.2.3")
#: UID roots of generated UIDs (highdicom's and pydicom's): replaced by UID1, UID2, ...
_GENERATED = ("1.2.826.0.1.3680043.10.511.", "1.2.826.0.1.3680043.8.498.")
_DATE_VRS = ("DA", "TM", "DT")
_VERSIONS = {"highdicom": hd.__version__, "pydicom": pydicom.__version__}


def _normalise(ds: Dataset, uids: dict[str, str]) -> None:
    for elem in ds.iterall():
        if elem.VR == "UI" and elem.value:
            values = list(elem.value) if elem.VM > 1 else [elem.value]
            new = []
            for v in values:
                v = str(v)
                if v.startswith(_GENERATED):
                    v = uids.setdefault(v, f"9.{len(uids) + 1}")
                new.append(v)
            elem.value = new if elem.VM > 1 else new[0]
        elif elem.VR in _DATE_VRS and elem.value not in (None, ""):
            elem.value = {"DA": "20000101", "TM": "000000", "DT": "20000101000000"}[elem.VR]
        elif elem.keyword in ("StudyID",) and str(elem.value).startswith("MX"):
            elem.value = "MX"  # the placeholder study's ID is its creation time


#: The attributes whose values the decoded-content comparison pins (anywhere in the dataset).
_CONTENT_KEYWORDS = frozenset({
    "SOPClassUID", "Modality", "ImageType", "Rows", "Columns", "NumberOfFrames",
    "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored",
    "PixelSpacing", "SliceThickness", "ImagePositionPatient", "ImageOrientationPatient",
    "FrameOfReferenceUID", "PatientOrientation", "Laterality", "PatientID", "PatientName",
    "StudyInstanceUID", "SeriesDescription", "SeriesNumber", "InstanceNumber",
    "DerivationDescription", "BurnedInAnnotation", "ContentLabel", "SegmentationType",
    "MaximumFractionalValue", "SegmentNumber", "SegmentLabel", "SegmentAlgorithmType",
    "SegmentAlgorithmName", "RecommendedDisplayCIELabValue", "CodeValue", "CodingSchemeDesignator",
    "CodeMeaning", "ReferencedSegmentNumber", "ReferencedSOPClassUID", "ReferencedSOPInstanceUID",
    "ReferencedFrameNumber", "DimensionIndexValues", "Manufacturer", "SoftwareVersions",
})


def _content(ds: Dataset) -> dict:
    """What a normalised dataset shows: decoded pixels and the :data:`_CONTENT_KEYWORDS`."""
    pixels = np.ascontiguousarray(ds.pixel_array)
    values = [[elem.keyword, str(elem.value)] for elem in ds.iterall()
              if elem.keyword in _CONTENT_KEYWORDS]
    return {"pixels": {"sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
                       "shape": list(pixels.shape), "dtype": str(pixels.dtype)},
            "values": values}


def _dump(path: Path) -> dict:
    ds = pydicom.dcmread(path)
    uids: dict[str, str] = {}
    del ds.file_meta.FileMetaInformationGroupLength  # depends on the UIDs' lengths
    _normalise(ds.file_meta, uids)
    _normalise(ds, uids)
    content = _content(ds)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)

    def bulk(elem):  # noqa: ANN001 - pydicom's callback
        return "sha256:" + hashlib.sha256(elem.value).hexdigest()

    return {
        "file_sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
        "meta": ds.file_meta.to_json_dict(bulk_data_threshold=64, bulk_data_element_handler=bulk),
        "dataset": ds.to_json_dict(bulk_data_threshold=64, bulk_data_element_handler=bulk),
        "content": content,
    }


def _diff(expected: dict, got: dict, where: str = "") -> list[str]:
    out = []
    for key in sorted(set(expected) | set(got)):
        a, b = expected.get(key), got.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{where}/{key}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                if isinstance(x, dict) and isinstance(y, dict):
                    out += _diff(x, y, f"{where}/{key}[{i}]")
                elif x != y:
                    out.append(f"{where}/{key}[{i}]: {x!r} != {y!r}")
        elif a != b:
            out.append(f"{where}/{key}: {a!r} != {b!r}")
    return out


def _check(name: str, paths: list[Path]) -> None:
    got = {"versions": _VERSIONS, "files": [_dump(p) for p in paths]}
    golden = GOLDEN / f"{name}.json"
    if os.environ.get("MEDXAI_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        return
    if not golden.exists():
        pytest.fail(f"{golden} is missing; write it with MEDXAI_UPDATE_GOLDEN=1")
    expected = json.loads(golden.read_text())
    assert len(expected["files"]) == len(got["files"])
    for n, (e, g) in enumerate(zip(expected["files"], got["files"])):
        assert g["content"]["values"], f"{name} file {n}: no content attributes found"
        assert e["content"] == g["content"], f"{name} file {n}: decoded content differs:\n" + \
            "\n".join(_diff(e["content"], g["content"])[:30])
        if expected["versions"] != _VERSIONS:
            continue  # other library versions: the decoded content (above) is what must hold
        differences = _diff(e["meta"], g["meta"], "meta") + _diff(e["dataset"], g["dataset"])
        assert not differences, f"{name} file {n} differs:\n" + "\n".join(differences[:30])
        assert e["file_sha256"] == g["file_sha256"], f"{name} file {n}: bytes differ"


def _labels(shape: tuple[int, ...]) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    i, j = shape[0], shape[1]
    labels[i // 4 : i // 2, j // 3 : j // 2] = 1
    labels[i // 2 + 2 : i // 2 + 8, 2:9] = 2
    return labels


def _oblique_series():
    folder = Path(__file__).resolve().parents[1] / "sample_data" / "ct_oblique_series"
    if not folder.is_dir():
        pytest.skip("sample_data/ct_oblique_series is missing (python sample_data/make_samples.py)")
    return load_series(sorted(folder.glob("*.dcm"))[:4])


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_seg_output_is_pinned(tmp_path):
    paths = []
    source, volume = _oblique_series()  # a series with patient geometry
    paths.append(write_dicom_seg(_labels(volume.shape), source, LABELS, *MODEL, tmp_path / "a.dcm"))
    source, image = load_single(pydicom_file("CT_small.dcm"))  # one slice
    paths.append(
        write_dicom_seg(_labels(image.shape[1:]), source, LABELS, *MODEL, tmp_path / "b.dcm")
    )
    source, image = load_single(pydicom_file("SC_rgb_rle.dcm"))  # a picture, no geometry
    paths.append(
        write_dicom_seg(_labels(image.shape[1:]), source, LABELS, *MODEL, tmp_path / "c.dcm")
    )
    source, volume = load_multiframe(pydicom_file("examples_ybr_color.dcm"))  # US cine
    labels = np.zeros(volume.shape[1:], np.uint8)
    labels[100:140, 60:90, 4:7] = 1
    labels[10:20, 10:15, 20] = 2
    paths.append(write_dicom_seg(labels, source, LABELS, *MODEL, tmp_path / "d.dcm"))
    empty = np.zeros(image.shape[1:], np.uint8)  # nothing found
    source, _ = load_single(pydicom_file("SC_rgb_rle.dcm"))
    paths.append(write_dicom_seg(empty, source, LABELS, *MODEL, tmp_path / "e.dcm"))
    _check("seg", paths)


def test_sc_output_is_pinned(tmp_path):
    paths = []
    source, volume = _oblique_series()
    volume = volume[..., :2]
    source.datasets[:] = source.datasets[:2]
    source.paths[:] = source.paths[:2]
    sal = np.linspace(0, 1, volume.size, dtype=np.float32).reshape(volume.shape)
    rgb = overlay_rgb(volume[None], _labels(volume.shape), sal, LABELS)
    paths += write_dicom_sc(rgb, source, tmp_path / "series", *MODEL)
    source, volume = load_multiframe(pydicom_file("examples_ybr_color.dcm"))
    source.frame_numbers[:] = source.frame_numbers[3:5]
    rgb = overlay_rgb(volume[..., 3:5], np.zeros(volume.shape[1:3] + (2,), np.uint8), None)
    paths += write_dicom_sc(rgb, source, tmp_path / "us", *MODEL)
    source, image = load_single(pydicom_file("CT_small.dcm"))
    rgb = overlay_rgb(image[..., None].repeat(2, axis=-1), _labels(image.shape[1:] + (2,)), None)
    paths += write_dicom_sc(rgb, source, tmp_path / "mosaic", *MODEL)
    rgb = np.zeros((3, 8, 6), dtype=np.uint8)
    rgb[0, 2:5, 1:3] = 200
    paths += write_dicom_sc(rgb, None, tmp_path / "none", *MODEL)
    _check("sc", paths)
