"""Multi-channel inputs from several files (BraTS: T1c, T1, T2, FLAIR): `medxai channels` stacks
co-registered files into the 4D NIfTI the bundle takes; wrong counts and grids are refused with
what the bundle expects (issue 13)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import shared_path
from tests.test_monai_bundles import (
    BRATS_LABELS,
    _brats_input,
    _medxai_labels,
    plain_monai,
    run_cli,
    zoo_bundle,
)

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]
SEQUENCES = ("t1c", "t1", "t2", "flair")


def _files(tmp: Path) -> list[str]:
    _brats_input(tmp)  # a crop of a real brain MR, as four scaled "sequences"
    return [str(tmp / f"brats_{seq}.nii.gz") for seq in SEQUENCES]


def _brats(tmp: Path) -> Path:
    def edit(cfg: dict) -> None:
        cfg["medxai"] = {"labels": BRATS_LABELS}

    shared_path("model_zoo", "brats_mri_segmentation")
    return zoo_bundle(tmp, "brats_mri_segmentation", edit=edit)


def test_four_files_stacked_segment_as_plain_monai_with_the_four_files(tmp_path: Path) -> None:
    files = _files(tmp_path)
    bundle = _brats(tmp_path)
    out = tmp_path / "case.nii.gz"
    code, text = run_cli("channels", *files, "-o", str(out), "--model", str(bundle))
    assert code == 0, text
    assert "4 channels (T1c, T1, T2, FLAIR)" in text
    stacked = nib.load(str(out))
    assert stacked.shape[-1] == 4
    for c, f in enumerate(files):
        one = nib.load(f)
        np.testing.assert_array_equal(np.asarray(stacked.dataobj)[..., c], np.asarray(one.dataobj))
        np.testing.assert_allclose(stacked.affine, one.affine, atol=1e-6)
    # the bundle's own datalist form (four files, stacked by LoadImaged) gives the same labels
    ref = plain_monai(bundle, files, tmp_path / "plain")
    labels, affine, _ = _medxai_labels(bundle, out)
    np.testing.assert_array_equal(labels, np.asarray(ref.dataobj).squeeze())
    np.testing.assert_allclose(affine, ref.affine, atol=1e-5)


def test_wrong_count_names_what_the_bundle_expects(tmp_path: Path) -> None:
    files = _files(tmp_path)
    bundle = _brats(tmp_path)
    out = tmp_path / "case.nii.gz"
    code, text = run_cli("channels", *files[:3], "-o", str(out), "--model", str(bundle))
    assert code == 2, text
    assert "expects 4 input channel(s) (T1c, T1, T2, FLAIR), 3 file(s) given" in text
    assert "Traceback" not in text and not out.exists()
    # without --model the stack is written, and segment then refuses it with the same facts
    code, text = run_cli("channels", *files[:3], "-o", str(out))
    assert code == 0, text
    code, text = run_cli("segment", str(out), "--model", str(bundle), "-o", str(tmp_path / "r"),
                         "--device", "cpu", "--explain", "none")
    assert code == 2, text
    assert "expects 4 input channel(s) (T1c, T1, T2, FLAIR), this input has 3" in text
    assert "medxai channels" in text


def test_files_on_different_grids_or_with_several_channels_are_refused(tmp_path: Path) -> None:
    files = _files(tmp_path)
    moved = nib.load(files[1])
    aff = moved.affine.copy()
    aff[0, 3] += 2.0
    shifted = tmp_path / "shifted.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(moved.dataobj), aff), str(shifted))
    out = tmp_path / "case.nii.gz"
    code, text = run_cli("channels", files[0], str(shifted), "-o", str(out))
    assert code == 2 and "is not on the grid of brats_t1c.nii.gz" in text and "shifted" in text
    assert not out.exists()
    code, text = run_cli("channels", files[0], str(tmp_path / "brats4.nii.gz"), "-o", str(out))
    assert code == 2 and "has 4 channels" in text
    code, text = run_cli("channels", files[0], "-o", str(out))
    assert code == 2 and "needs two or more" in text
    code, text = run_cli("channels", *files[:2], "-o", str(tmp_path / "case.png"))
    assert code == 2 and "not a NIfTI file name" in text


def test_segment_channels_in_memory_equals_plain_monai(tmp_path: Path) -> None:
    """`medxai segment --channels A B C D --model M`: the four files as one case, stacked in
    memory, give plain MONAI's labels (four files through LoadImaged); the report names the
    files; a wrong count or a missing --model is refused before anything is read or written."""
    import json

    files = _files(tmp_path)
    bundle = _brats(tmp_path)
    res = tmp_path / "results"
    code, text = run_cli("segment", "--channels", *files, "--model", str(bundle), "-o", str(res),
                         "--device", "cpu", "--explain", "none", "--format", "nifti,json")
    assert code == 0, text
    folder = res / "brats_t1c"
    ref = plain_monai(bundle, files, tmp_path / "plain")
    ours = nib.load(str(folder / "labels.nii.gz"))
    np.testing.assert_array_equal(np.asarray(ours.dataobj).squeeze(),
                                  np.asarray(ref.dataobj).squeeze())
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-5)
    report = json.loads((folder / "report.json").read_text())
    assert report["input"]["channels"] == 4
    assert report["input"]["channel_files"] == files

    other = tmp_path / "other"
    code, text = run_cli("segment", "--channels", *files[:3], "--model", str(bundle), "-o",
                         str(other), "--device", "cpu", "--explain", "none")
    assert code == 2, text
    assert "expects 4 input channel(s) (T1c, T1, T2, FLAIR), 3 file(s) given" in text
    assert "Traceback" not in text and not other.exists()
    code, text = run_cli("segment", "--channels", *files, "-o", str(other))
    assert code == 2 and "--channels needs --model" in text and not other.exists()


def test_segment_channels_refuses_folders_and_reports_bad_files_as_json(tmp_path: Path) -> None:
    """--channels takes the files as named: a folder of volumes (whose name order is not the
    channel order) is refused, and with --json a missing file is reported in the JSON."""
    import json

    files = _files(tmp_path)
    bundle = _brats(tmp_path)
    folder = tmp_path / "seqs"
    folder.mkdir()
    for f in files:
        (folder / Path(f).name).write_bytes(Path(f).read_bytes())
    out = tmp_path / "r"
    code, text = run_cli("segment", "--channels", str(folder), "--model", str(bundle), "-o",
                         str(out))
    assert code == 2 and "is a folder of files: name each file" in text and not out.exists()
    code, text = run_cli("segment", "--channels", *files[:3], str(tmp_path / "missing.nii.gz"),
                         "--model", str(bundle), "-o", str(out), "--json")
    assert code == 2, text
    payload = json.loads(text[text.index("{"):])
    assert payload["results"] == [] and "missing.nii.gz" in payload["failures"][0]["input"]
    assert not out.exists()
