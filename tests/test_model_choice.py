"""Model choice by input: the bundled models' fit rules, applied to real inputs.

The rules are read from each bundled model's configs/inference.json (torch-free); a test that
needs a model's weights skips when that model is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medxai.errors import ModelMismatchError
from medxai.models.fit import FitRules, InputFacts, choose_model
from medxai.models.registry import BUNDLED_MODELS, choose_bundled_model
from tests.conftest import ROOT, shared_path

LESION, LUNGS, HIPPO = "isic2018-lesion-unet", "cxr-lungs-unet", "hippocampus-unet"


def _require(name: str) -> None:
    if not BUNDLED_MODELS[name].available:
        pytest.skip(f"bundled model {name} is not installed in this checkout")


def _facts(path: Path) -> InputFacts:
    from medxai.io.readers import load_image
    from medxai.pipeline import input_facts

    return input_facts(load_image(path))


# --- the rules themselves (no weights needed) ---------------------------------------------------

HIPPO_RULES = FitRules(spatial_dims=3, channels=1, modalities=("MR",), pictures=False,
                       max_extent_mm=(80.0, 64.0, 64.0), spacing_mm=(0.8, 1.25),
                       note="a hippocampus-centred crop")
LUNG_RULES = FitRules(spatial_dims=2, channels=1, modalities=("DX", "CR"), pictures=True,
                      body_parts=("CHEST", "THORAX", "LUNG"))
LESION_RULES = FitRules(spatial_dims=2, channels=3, modalities=("XC", "OT"), pictures=True)
CANDIDATES = [(LESION, LESION_RULES), (LUNGS, LUNG_RULES), (HIPPO, HIPPO_RULES)]


def test_colour_photo_goes_to_the_lesion_model() -> None:
    facts = _facts(ROOT / "sample_data" / "dermoscopy.jpg")
    choice = choose_model(facts, CANDIDATES)
    assert choice.name == LESION
    assert "RGB" in choice.reason and choice.refused == {}


def test_dicom_photo_goes_to_the_lesion_model() -> None:
    facts = _facts(ROOT / "sample_data" / "dermoscopy.dcm")
    assert facts.modality == "XC"
    assert choose_model(facts, CANDIDATES).name == LESION


def test_grey_chest_picture_goes_to_the_lungs_model() -> None:
    png = next(shared_path("cxr_lungs", "val").glob("CHNCXR_*_0.png"))
    choice = choose_model(_facts(png), CANDIDATES)
    assert choice.name == LUNGS
    assert "channel" in choice.refused[LESION]


def test_chest_cr_dicom_goes_to_the_lungs_model() -> None:
    from pydicom.data import get_testdata_file

    facts = _facts(Path(get_testdata_file("RG1_UNCR.dcm")))
    assert (facts.modality, facts.channels, facts.spatial_dims, facts.body_part) == (
        "CR", 1, 2, "CHEST")
    assert choose_model(facts, CANDIDATES).name == LUNGS


def test_thorax_dx_goes_to_the_lungs_model() -> None:
    dx = shared_path("dicom", "highdicom_test_files", "dx_image.dcm")
    facts = _facts(dx)
    assert (facts.modality, facts.body_part) == ("DX", "THORAX")
    choice = choose_model(facts, CANDIDATES)
    assert choice.name == LUNGS and "names no body part" not in choice.reason


def test_radiograph_without_body_part_is_accepted_and_the_reason_says_so() -> None:
    facts = InputFacts(2, 1, "CR", "dicom", (2048, 2048))
    choice = choose_model(facts, CANDIDATES)
    assert choice.name == LUNGS and "names no body part" in choice.reason


def test_extremity_radiograph_is_refused_by_the_lungs_model() -> None:
    from pydicom.data import get_testdata_file

    leg = Path(get_testdata_file("RG3_UNCR.dcm"))  # a tibia: CR, BodyPartExamined EXTREMITY
    with pytest.raises(ModelMismatchError) as info:
        choose_model(_facts(leg), CANDIDATES, str(leg))
    assert "BodyPartExamined is EXTREMITY" in str(info.value)


def test_hippocampus_crop_series_goes_to_the_hippocampus_model() -> None:
    series = shared_path("hippocampus", "dicom_study1", "13_HCropVolume")
    facts = _facts(series)
    assert facts.spatial_dims == 3 and facts.modality == "MR"
    choice = choose_model(facts, CANDIDATES)
    assert choice.name == HIPPO
    assert set(choice.refused) == {LESION, LUNGS}


def test_full_brain_series_is_refused_with_the_crop_rule() -> None:
    series = shared_path("hippocampus", "dicom_study1", "12-T1post-05670")
    with pytest.raises(ModelMismatchError) as info:
        choose_model(_facts(series), CANDIDATES, str(series))
    msg = str(info.value)
    assert "hippocampus-centred crop" in msg and "at most 80x64x64 mm" in msg
    for name in (LESION, LUNGS, HIPPO):  # every candidate says why it refused
        assert f"{name}:" in msg


def test_ct_series_is_refused_listing_every_candidate() -> None:
    folder = shared_path("dicom", "totalsegmentator_tests", "tests", "reference_files",
                         "example_ct_dicom")
    with pytest.raises(ModelMismatchError) as info:
        choose_model(_facts(folder), CANDIDATES, str(folder))
    msg = str(info.value)
    assert "CT" in msg and "it is for MR, this is CT" in msg
    assert f"{LESION}:" in msg and f"{LUNGS}:" in msg
    assert "--model" in (info.value.hint or "")


def test_rules_parse_from_an_input_block() -> None:
    rules = FitRules.from_input_config(
        {"modalities": ["mr"], "max_extent_mm": [64, 80, 64], "spacing_mm": [0.8, 1.25]}, 3, 1)
    assert rules.modalities == ("MR",) and rules.pictures is False
    assert rules.max_extent_mm == (64.0, 80.0, 64.0)
    # orientation-free: a 51x35x32 mm crop fits bounds given in another axis order
    facts = InputFacts(3, 1, "MR", "dicom-series", (35, 51, 32), (1.0, 1.0, 1.0))
    assert rules.problems(facts) == []
    wide = InputFacts(3, 1, "MR", "nifti", (240, 240, 22), (0.94, 0.94, 5.0))
    assert any("field of view" in p for p in rules.problems(wide))
    # a NIfTI crop has no modality: judged on dims, channels, extent and spacing
    assert rules.problems(InputFacts(3, 1, "", "nifti", (36, 50, 35), (1.0, 1.0, 1.0))) == []
    assert rules.problems(InputFacts(2, 1, "", "picture", (512, 512))) != []


def test_msd_nifti_crop_goes_to_the_hippocampus_model() -> None:
    case = sorted(shared_path("hippocampus", "imagesTr").glob("*.nii.gz"))[0]
    assert choose_model(_facts(case), CANDIDATES).name == HIPPO


# --- the shipped registry (needs the bundled models) ---------------------------------------------

@pytest.mark.parametrize("name", [LESION, LUNGS, HIPPO])
def test_bundled_rules_are_valid(name: str) -> None:
    _require(name)
    model = BUNDLED_MODELS[name]
    rules = model.fit_rules()
    config = json.loads((model.path / "configs" / "inference.json").read_text())
    assert rules.spatial_dims == config["network_def"]["spatial_dims"]
    assert rules.channels == config["network_def"]["in_channels"]


def test_registry_chooses_by_input() -> None:
    for name in (LESION, LUNGS, HIPPO):
        _require(name)
    png = next(shared_path("cxr_lungs", "val").glob("CHNCXR_*_0.png"))
    assert choose_bundled_model(_facts(png)).name == LUNGS
    assert choose_bundled_model(_facts(ROOT / "sample_data" / "dermoscopy.jpg")).name == LESION
    crop = shared_path("hippocampus", "dicom_study1", "13_HCropVolume")
    assert choose_bundled_model(_facts(crop)).name == HIPPO
    brain = shared_path("hippocampus", "dicom_study1", "12-T1post-05670")
    with pytest.raises(ModelMismatchError, match="hippocampus-centred crop"):
        choose_bundled_model(_facts(brain))
