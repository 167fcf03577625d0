"""TID 1500 Measurement Report writer: dcmqi's tid1500reader reads it, the volume is the label
count times the voxel volume, highdicom parses it, dciodvfy finds no error."""

from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from medxai.errors import InputError
from medxai.io.writers import create_photo_study, write_dicom_seg
from medxai.io.writers.dicom_sr import segment_measurements, write_dicom_sr
from tests.helpers_dicom import assert_dciodvfy_clean, find_tool, load_series, shared_file

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

LABELS = [{"value": 1, "name": "lesion"}, {"value": 2, "name": "liver"}]
MODEL = {"model_name": "test-unet", "model_version": "1.2.3", "weights_sha256": "cd" * 32}


def _tid1500(path: Path, out: Path) -> dict:
    tool = find_tool("tid1500reader")
    if tool is None:
        pytest.skip("dcmqi's tid1500reader is not installed (pip install dcmqi)")
    run = subprocess.run([tool, "--inputDICOM", str(path), "--outputMetadata", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(out.read_text())


def _items(group: dict) -> dict[tuple[str, str], float]:
    """(quantity code, derivation code or '') -> value of one dcmqi measurement group."""
    out = {}
    for item in group["measurementItems"]:
        derivation = item.get("derivationModifier", {}).get("CodeValue", "")
        out[(item["quantity"]["CodeValue"], derivation)] = float(item["value"])
    return out


def test_sr_of_ct_series_reports_volume_and_saliency(tmp_path):
    folder = shared_file("dcmqi_data", "data", "segmentations", "ct-3slice")
    source, volume = load_series(sorted(folder.glob("*.dcm")))
    labels = (volume > np.percentile(volume, 80)).astype(np.uint8)
    labels[: volume.shape[0] // 3] *= 2
    seg = write_dicom_seg(labels, source, LABELS, MODEL["model_name"], MODEL["model_version"],
                          tmp_path / "seg.dcm")
    saliency = np.random.default_rng(0).random(volume.shape)
    first = source.first
    slice_step = float(np.linalg.norm(np.subtract(
        [float(v) for v in source.datasets[1].ImagePositionPatient],
        [float(v) for v in source.datasets[0].ImagePositionPatient])))
    spacing = [float(first.PixelSpacing[1]), float(first.PixelSpacing[0]), slice_step]
    path = write_dicom_sr(labels, source, seg, LABELS, tmp_path / "sr.dcm", spacing=spacing,
                          saliency={1: saliency}, method="gradcam", quality_score=0.75, **MODEL)
    assert_dciodvfy_clean(path)
    ds = pydicom.dcmread(path)
    assert ds.StudyInstanceUID == first.StudyInstanceUID
    evidence = {item.ReferencedSOPInstanceUID
                for study in ds.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for item in series.ReferencedSOPSequence}
    seg_uid = pydicom.dcmread(seg).SOPInstanceUID
    assert evidence == {d.SOPInstanceUID for d in source.datasets} | {seg_uid}

    report = _tid1500(path, tmp_path / "sr.json")
    groups = {g["ReferencedSegment"]: g for g in report["Measurements"]}
    assert set(groups) == {1, 2}
    voxel = float(np.prod(spacing))
    lesion = _items(groups[1])
    assert lesion[("118565006", "")] == pytest.approx(int((labels == 1).sum()) * voxel, rel=1e-9)
    assert _items(groups[2])[("118565006", "")] == pytest.approx(int((labels == 2).sum()) * voxel,
                                                                  rel=1e-9)
    inside = saliency[labels == 1]
    assert lesion[("130403", "255586005")] == pytest.approx(inside.mean(), rel=1e-9)
    assert lesion[("130403", "56851009")] == pytest.approx(inside.max(), rel=1e-9)
    assert lesion[("saliency-energy-share", "")] == pytest.approx(inside.sum() / saliency.sum())
    assert lesion[("quality-score", "")] == 0.75
    assert groups[1]["Finding"]["CodeValue"] == "52988006"  # SCT Lesion
    assert groups[1]["measurementAlgorithmIdentification"]["AlgorithmName"] == "test-unet"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sr = hd.sr.srread(path)
    parsed = sr.content.get_volumetric_roi_measurement_groups()
    assert len(parsed) == 2
    (size,) = parsed[0].get_measurements(name=codes.SCT.Volume)
    assert size.value == pytest.approx(int((labels == 1).sum()) * voxel, rel=1e-9)


def test_sr_of_a_photo_reports_area_in_pixels(tmp_path):
    picture = (np.random.default_rng(1).random((3, 20, 16)) * 255).astype(np.uint8)
    source = create_photo_study(picture, tmp_path / "photo.dcm")
    labels = np.zeros((20, 16), np.uint8)
    labels[3:9, 4:10] = 1
    seg = write_dicom_seg(labels, source, LABELS[:1], "test-unet", "1.2.3", tmp_path / "seg.dcm")
    path = write_dicom_sr(labels, source, seg, LABELS[:1], tmp_path / "sr.dcm", **MODEL)
    assert_dciodvfy_clean(path)
    report = _tid1500(path, tmp_path / "sr.json")
    (group,) = report["Measurements"]
    area = next(i for i in group["measurementItems"] if i["quantity"]["CodeValue"] == "42798000")
    assert float(area["value"]) == 36 and area["units"]["CodeValue"] == "{pixels}"
    with pytest.raises(InputError, match="segments"):
        write_dicom_sr(labels, source, seg, LABELS, tmp_path / "x.dcm", **MODEL)


def test_segment_measurements_of_an_empty_segment():
    stats = segment_measurements(np.zeros((4, 4, 2), np.uint8), 1, [1, 1, 2], np.ones((4, 4, 2)))
    assert stats == {"count": 0, "volume_mm3": 0.0, "saliency_mean": 0.0, "saliency_max": 0.0,
                     "energy_share": 0.0}
