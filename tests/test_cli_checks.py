"""Checks before imports: every command answers a bad call without torch/MONAI; the folder rule,
the exit-code rule and the pydicom warning line (issue 17). Fast: no model is loaded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from click.testing import CliRunner
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from medxai.cli.common import dicom_warnings_as_lines, exit_code_for, resolve_inputs
from medxai.cli.main import cli
from medxai.errors import CorruptInputError, InputError, UnsupportedInputError
from medxai.io.detect import sniff_folder, sniff_form
from medxai.io.readers import detect_form

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"


@pytest.fixture()
def picture_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "pics"
    folder.mkdir()
    shutil.copy(SAMPLES / "dermoscopy.jpg", folder / "b.jpg")
    shutil.copy(SAMPLES / "dermoscopy_mask.png", folder / "a.png")
    (folder / "notes.txt").write_text("not a picture")
    (folder / ".hidden.jpg").write_bytes(b"\xff\xd8\xff")
    return folder


@pytest.mark.parametrize("path", [
    SAMPLES / "dermoscopy.jpg", SAMPLES / "dermoscopy_mask.png", SAMPLES / "dermoscopy.dcm",
    SAMPLES / "ct_oblique.nii.gz", SAMPLES / "ct_oblique_series",
    Path(get_testdata_file("CT_small.dcm")), Path(get_testdata_file("MR_small.dcm")),
])
def test_sniff_agrees_with_the_reader(path: Path) -> None:
    assert sniff_form(path) == detect_form(path)


def test_sniff_agrees_with_the_reader_on_pydicoms_test_files() -> None:
    """Every file pydicom ships (broken and odd ones included) gets the reader's answer."""
    folder = Path(pydicom.data.__file__).parent / "test_files"
    differ = []
    for path in sorted(folder.glob("*.dcm")):
        answers = []
        for fn in (sniff_form, detect_form):
            try:
                answers.append(fn(path))
            except Exception as exc:  # noqa: BLE001 - the error class is the answer
                answers.append(type(exc).__name__)
        if answers[0] != answers[1]:
            differ.append((path.name, *answers))
    assert not differ


def test_sniff_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        sniff_form(tmp_path / "missing.jpg")
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(CorruptInputError, match="empty"):
        sniff_form(tmp_path / "empty.dcm")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnsupportedInputError, match="starts with b'hello'"):
        sniff_form(tmp_path / "notes.txt")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(InputError, match="holds no DICOM file, picture or volume"):
        sniff_form(tmp_path / "nothing")


def test_folder_rule(picture_folder: Path) -> None:
    contents = sniff_folder(picture_folder)
    assert contents.form == "picture-folder" and contents.foreign == 1
    assert [p.name for p in contents.files] == ["a.png", "b.jpg"]
    items, bad = resolve_inputs([str(picture_folder), str(SAMPLES / "ct_oblique_series")])
    assert not bad
    assert [(Path(i.path).name, i.form) for i in items] == [
        ("a.png", "picture"), ("b.jpg", "picture"), ("ct_oblique_series", "dicom-folder")]
    # one DICOM file anywhere below makes it a DICOM folder
    shutil.copy(SAMPLES / "dermoscopy.dcm", picture_folder / "x.dcm")
    assert sniff_folder(picture_folder).form == "dicom-folder"


def test_exit_code_rule() -> None:
    assert exit_code_for([]) == 0
    assert exit_code_for([{"exit_code": 1}]) == 1
    assert exit_code_for([{"exit_code": 1}, {"exit_code": 2}]) == 2


@pytest.mark.parametrize("argv", [
    ["segment", "{tmp}/missing.jpg"],
    ["segment", "{tmp}/notes.txt", "{tmp}/missing.jpg"],
    ["segment", "{photo}", "-o", "{tmp}/notes.txt"],
    ["segment", "{photo}", "-m", "./no-such-bundle"],
    ["info", "{tmp}/missing.dcm"],
    ["explain", "{tmp}/missing.jpg"],
    ["batch", "{tmp}/missing", "-o", "{tmp}/out"],
    ["train", "{tmp}/missing", "-o", "{tmp}/out"],
    ["evaluate", "{tmp}", "-m", "./no-such-bundle"],
])
def test_bad_calls_answer_before_torch(argv: list[str], tmp_path: Path) -> None:
    """A fresh process: exit 2 with a message, and torch/MONAI never imported."""
    (tmp_path / "notes.txt").write_text("not an image")
    args = [a.format(tmp=tmp_path, photo=SAMPLES / "dermoscopy.jpg") for a in argv]
    code = ("import sys; from medxai.cli.main import main; rc = main(sys.argv[1:]); "
            "heavy = [m for m in ('torch', 'monai', 'numpy') if m in sys.modules]; "
            "print('HEAVY', heavy, file=sys.stderr); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "HEAVY []" in proc.stderr, proc.stderr
    assert "Error" in proc.stderr and "Traceback" not in proc.stderr


def test_info_several_paths_and_mixed_exit_code(picture_folder: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ct = get_testdata_file("CT_small.dcm")
    res = runner.invoke(cli, ["info", "--json", ct, str(picture_folder)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert [Path(r["path"]).name for r in data["results"]] == ["CT_small.dcm", "a.png", "b.jpg"]
    assert data["failures"] == []
    # a missing path next to a good one: the good one is described, exit 2 (the highest)
    res = runner.invoke(cli, ["info", ct, str(tmp_path / "missing.dcm")])
    assert res.exit_code == 2
    assert "modality       CT" in res.output and "does not exist" in res.output
    # one path keeps the one-description JSON
    res = runner.invoke(cli, ["info", "--json", ct])
    assert res.exit_code == 0 and json.loads(res.output)["modality"] == "CT"


def test_pydicom_value_warnings_become_one_line() -> None:
    lines: list[str] = []
    with dicom_warnings_as_lines("odd.dcm", lines.append):
        for _ in range(2):  # the same problem twice: one line
            ds = Dataset()
            ds.Modality = "c t"
        ds.PatientSex = "male"
    assert lines == ["warning: odd.dcm: tag (0008,0060) VR CS: invalid value 'c t' (kept as is)",
                     "warning: odd.dcm: tag (0010,0040) VR CS: invalid value 'male' (kept as is)"]
    assert isinstance(pydicom.__version__, str)
