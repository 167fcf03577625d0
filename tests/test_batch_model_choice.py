"""``medxai batch`` without ``--model``: each series goes to the bundled model whose fit rules
accept it, and the manifest, the CSV and each report.json say which and why.

A small mixed export of real files: a dermoscopy photo as DICOM (XC), a chest CR and a tibia CR
(pydicom's), a hippocampus MR crop series and a CT slice.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from medxai.models.registry import BUNDLED_MODELS
from tests.conftest import ROOT, shared_path

LESION, LUNGS, HIPPO = "isic2018-lesion-unet", "cxr-lungs-unet", "hippocampus-unet"


@pytest.fixture(scope="module")
def mixed_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for name in (LESION, LUNGS):
        if not BUNDLED_MODELS[name].available:
            pytest.skip(f"bundled model {name} is not installed in this checkout")
    root = tmp_path_factory.mktemp("mixed_export")
    (root / "photo").mkdir()
    shutil.copy(ROOT / "sample_data" / "dermoscopy.dcm", root / "photo" / "derm.dcm")
    (root / "cr").mkdir()
    shutil.copy(get_testdata_file("RG1_UNCR.dcm"), root / "cr" / "chest.dcm")
    shutil.copy(get_testdata_file("RG3_UNCR.dcm"), root / "cr" / "tibia.dcm")
    (root / "ct").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "ct" / "ct.dcm")
    return root


def test_mixed_export_goes_to_the_right_models(mixed_export: Path, tmp_path: Path) -> None:
    from medxai.batch import run_batch
    from medxai.pipeline import SegmentOptions

    out = tmp_path / "results"
    summary = run_batch(mixed_export, out, model=None,
                        options=SegmentOptions(formats=["nifti", "json"], explain=None))
    with open(out / "manifest_series.csv") as fh:
        rows = list(csv.DictReader(fh))
    by_modality: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_modality.setdefault(r["modality"], []).append(r)
    (photo,) = by_modality["XC"]
    assert photo["state"] == "done" and photo["model"] == LESION
    crs = {r["state"]: r for r in by_modality["CR"]}
    assert crs["done"]["model"] == LUNGS  # the chest
    assert "BodyPartExamined is EXTREMITY" in crs["skipped"]["reason"]  # the tibia
    (ct,) = by_modality["CT"]
    assert ct["state"] == "skipped"
    for name in (LESION, LUNGS):
        assert f"{name}:" in ct["reason"]
    assert summary.model["series_per_model"] == {LESION: 1, LUNGS: 1}
    report = json.loads((out / crs["done"]["output_name"] / "report.json").read_text())
    assert report["model"]["name"] == LUNGS
    assert report["model"]["choice"]["chosen"] == LUNGS
    assert LESION in report["model"]["choice"]["refused"]


def test_hippocampus_series_in_an_export(tmp_path: Path) -> None:
    if not BUNDLED_MODELS[HIPPO].available:
        pytest.skip(f"bundled model {HIPPO} is not installed in this checkout")
    from medxai.batch import run_batch
    from medxai.pipeline import SegmentOptions

    study = shared_path("hippocampus", "dicom_study1")
    export = tmp_path / "export"
    shutil.copytree(study / "13_HCropVolume", export / "crop")
    shutil.copytree(study / "12-T1post-05670", export / "brain")
    out = tmp_path / "results"
    run_batch(export, out, model=None,
              options=SegmentOptions(formats=["nifti", "json"], explain=None))
    with open(out / "manifest_series.csv") as fh:
        rows = {r["n_slices"]: r for r in csv.DictReader(fh)}
    crop, brain = rows["32"], rows["22"]
    assert crop["state"] == "done" and crop["model"] == HIPPO
    assert brain["state"] == "skipped" and "hippocampus-centred crop" in brain["reason"]
