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


def test_group_reasons_counts_series_refused_for_the_same_rule() -> None:
    from medxai.batch.job import group_reasons

    head = ("does not fit the model: hippocampus-unet was chosen by the series' headers, but the "
            "image read does not fit it: it expects a field of view of at most 80x80x80 mm (a "
            "hippocampus-centred crop)")
    reasons = {f"{head}, this is 230x230x{n} mm\n  hint: h": 1 for n in (110, 120, 130)}
    reasons["does not fit the model: modality CT (the model is for XC)"] = 2
    assert group_reasons(reasons) == {
        f"{head}\n  hint: h": 3,
        "does not fit the model: modality CT (the model is for XC)": 2,
    }


def test_series_refused_after_the_scan_are_grouped_with_a_hint_that_fits(tmp_path) -> None:
    """Hippocampus MR series that the header scan gives to hippocampus-unet (no --model) and
    that its field-of-view rule refuses once read: one summary line with their count, and a hint
    that does not tell the user to leave out a --model they did not give."""
    import shutil

    from medxai.batch import run_batch
    from medxai.models.registry import BUNDLED_MODELS
    from medxai.pipeline import SegmentOptions
    from tests.conftest import shared_path

    if not BUNDLED_MODELS["hippocampus-unet"].available:
        pytest.skip("bundled model hippocampus-unet is not installed in this checkout")
    brain = shared_path("hippocampus", "dicom_study1", "12-T1post-05670")
    export = tmp_path / "export"
    for k, spacing_scale in enumerate((1.0, 1.1)):  # two series, different fields of view
        for f in sorted(brain.iterdir()):
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID = f"{ds.SeriesInstanceUID}.{k + 7}"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = \
                f"{ds.SOPInstanceUID}.{k + 7}"
            ds.PixelSpacing = [float(v) * spacing_scale for v in ds.PixelSpacing]
            (export / f"s{k}").mkdir(parents=True, exist_ok=True)
            ds.save_as(export / f"s{k}" / f.name, enforce_file_format=True)
    summary = run_batch(export, tmp_path / "out", model=None,
                        options=SegmentOptions(explain=None, device="cpu"))
    assert summary.series["skipped"] == 2
    ((reason, n),) = summary.skipped_reasons.items()
    assert n == 2
    assert reason.startswith("does not fit the model: hippocampus-unet was chosen by the "
                             "series' headers, but the image read does not fit it: it expects "
                             "a field of view of at most")
    assert "leave --model out" not in reason and str(export) not in reason
    assert "no bundled model takes these series" in reason
    shutil.rmtree(tmp_path / "out")


def test_a_job_of_other_default_formats_is_refused_on_resume(small_export, tmp_path) -> None:
    """A job whose settings say "the defaults" (None: before the batch defaults changed, when
    that meant every format) must not resume with today's defaults for its remaining series."""
    import json
    import sqlite3

    from medxai.batch import run_batch
    from medxai.batch.manifest import MANIFEST_NAME
    from medxai.errors import InputError
    from medxai.pipeline import SegmentOptions

    export, bundle = small_export
    out = tmp_path / "out"
    opts = SegmentOptions(explain="gradcam", device="cpu")
    run_batch(export, out, model=bundle, options=opts)
    manifest = out / MANIFEST_NAME
    with sqlite3.connect(manifest) as c:
        (raw,) = c.execute("SELECT value FROM job WHERE key='settings'").fetchone()
        settings = json.loads(raw)
        assert settings["formats"] == sorted(BATCH_DEFAULT_FORMATS)
        settings["formats"] = None  # what an older release recorded for "no --format"
        c.execute("UPDATE job SET value=? WHERE key='settings'", (json.dumps(settings),))
    with pytest.raises(InputError, match="formats: None before"):
        run_batch(export, out, model=bundle, options=opts)
