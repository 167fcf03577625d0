"""`medxai info` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom.data
from click.testing import CliRunner

from medxai.cli.main import cli


def test_info_dicom_json() -> None:
    res = CliRunner().invoke(cli, ["info", "--json", pydicom.data.get_testdata_file("CT_small.dcm")])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["modality"] == "CT"
    assert info["shape"] == [128, 128, 1]
    assert info["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.2"
    assert info["series_instance_uid"]
    assert info["orientation"] == "LPS"


def test_info_text() -> None:
    res = CliRunner().invoke(cli, ["info", pydicom.data.get_testdata_file("MR_small.dcm")])
    assert res.exit_code == 0
    assert "modality       MR" in res.output


def test_info_bad_input_exit_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"\x00" * 10)
    res = CliRunner().invoke(cli, ["info", str(bad)])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert str(bad) in res.output
    res = CliRunner().invoke(cli, ["info", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_version_and_help() -> None:
    res = CliRunner().invoke(cli, ["--version"])
    assert res.exit_code == 0 and "medxai" in res.output
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0 and "info" in res.output
