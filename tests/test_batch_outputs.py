"""``medxai batch``'s default outputs (what a PACS-export user gets without ``--format``) and
the summary of series refused at processing time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from medxai.choices import BATCH_DEFAULT_FORMATS
from tests.fixtures_pacs import make_test_bundle, write_photo_dicom

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def small_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from medxai.samples import make_dermoscopy_photo

    root = tmp_path_factory.mktemp("outputs_export")
    rgb, _ = make_dermoscopy_photo(40, 32, seed=5)
    write_photo_dicom(rgb, root / "export" / "S1" / "IM1.dcm", study="1.2.3.4.1",
                      series="1.2.3.4.1.1", sop="1.2.3.4.1.1.1", series_number=1, instance=1)
    return root / "export", make_test_bundle(root / "model")


def _files(out: Path) -> set[str]:
    (folder,) = [p for p in out.glob("*/*") if p.is_dir()]
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_batch_writes_seg_pm_sr_and_the_report_by_default(small_export, tmp_path) -> None:
    from medxai.batch import run_batch
    from medxai.pipeline import SegmentOptions

    export, bundle = small_export
    assert BATCH_DEFAULT_FORMATS == ("dicom-seg", "dicom-pm", "dicom-sr", "json")
    out = tmp_path / "out"
    run_batch(export, out, model=bundle, options=SegmentOptions(explain="gradcam", device="cpu"))
    files = _files(out)
    # no NIfTI, preview or Secondary Capture unless asked for
    assert files == {"seg.dcm", "pm_saliency_lesion.dcm", "pm_uncertainty.dcm", "sr.dcm",
                     "report.json"}
    folder = next(p for p in out.glob("*/*") if p.is_dir())
    assert pydicom.dcmread(folder / "seg.dcm").Modality == "SEG"
    assert pydicom.dcmread(folder / "sr.dcm").Modality == "SR"


def test_every_output_stays_available_by_format(small_export, tmp_path) -> None:
    from medxai.batch import run_batch
    from medxai.pipeline import SegmentOptions

    export, bundle = small_export
    out = tmp_path / "out"
    opts = SegmentOptions(formats=["nifti", "png", "dicom-sc"], explain="gradcam", device="cpu")
    run_batch(export, out, model=bundle, options=opts)
    files = _files(out)
    assert {"labels.nii.gz", "labels.json", "saliency_lesion.nii.gz", "preview.png"} <= files
    assert any(f.startswith("overlay_sc/") for f in files)
    assert not {"seg.dcm", "sr.dcm", "report.json"} & files
    assert np.asarray(pydicom.dcmread(folder_sc(out)).pixel_array).ndim == 3


def folder_sc(out: Path) -> Path:
    return next(out.glob("*/*/overlay_sc/*.dcm"))
