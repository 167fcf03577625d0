"""SEG segment codes: SNOMED CT for known anatomy and lesion names, the documented fallback."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medxai.io.writers import create_photo_study, segment_codes, write_dicom_seg
from medxai.io.writers._common import normalise_labels
from tests.helpers_dicom import assert_dciodvfy_clean

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("name, category, prop_type", [
    ("lungs", "91723000", "39607008"),
    ("lung_left", "91723000", "39607008"),
    ("hippocampus anterior", "91723000", "5366008"),
    ("Spleen", "91723000", "78961009"),
    ("skin lesion", "49755003", "52988006"),
    ("thing", "85756007", "85756007"),
])
def test_segment_codes_from_label_names(name, category, prop_type):
    cat, typ = segment_codes(normalise_labels([{"value": 1, "name": name}])[0])
    assert (cat.value, typ.value) == (category, prop_type)


def test_seg_with_anatomy_codes_validates(tmp_path):
    source = create_photo_study(np.zeros((3, 12, 10), np.uint8), tmp_path / "photo.dcm")
    labels = np.zeros((12, 10), np.uint8)
    labels[2:5, 3:7] = 1
    labels[6:9, 3:7] = 2
    info = [{"value": 1, "name": "lung_right"}, {"value": 2, "name": "hippocampus"}]
    path = write_dicom_seg(labels, source, info, "m", "1", tmp_path / "seg.dcm")
    assert_dciodvfy_clean(path)
    types = [s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning
             for s in pydicom.dcmread(path).SegmentSequence]
    assert types == ["Lung", "Hippocampus"]
