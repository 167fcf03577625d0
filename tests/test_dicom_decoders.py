"""Pixel decoding: GDCM as the fallback decoder, dcmtk as the last resort, and refusals that name
their real cause (one assertion per refusal class)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medxai.errors import CorruptInputError, SeriesError, UnsupportedInputError
from medxai.io.dicom.pixels import DECODER_ORDER, decode_stored, decoder_report
from medxai.io.readers import load_image
from tests.conftest import require_tool, shared_path

warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")


def _pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    p = get_testdata_file(name)
    if p is None:
        pytest.skip(f"pydicom test file {name} not available")
    return Path(p)


def test_gdcm_is_installed_and_comes_after_pylibjpeg_and_pyjpegls() -> None:
    from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless

    for uid in (JPEG2000Lossless, JPEGLSLossless, JPEGLosslessSV1):
        assert decoder_report(uid).get("gdcm") == "available", uid.name
    assert DECODER_ORDER.index("gdcm") > DECODER_ORDER.index("pylibjpeg")
    assert DECODER_ORDER.index("gdcm") > DECODER_ORDER.index("pyjpegls")


@pytest.mark.parametrize(("name", "plugin"), [("MR_small_jp2klossless.dcm", "gdcm"),
                                              ("MR_small_jpeg_ls_lossless.dcm", "gdcm"),
                                              ("MR_small_RLE.dcm", "pydicom")])
def test_fallback_alone_gives_the_uncompressed_voxels(name: str, plugin: str) -> None:
    """The fallback (GDCM; pydicom's own for RLE, which GDCM's plugin does not take) decodes
    lossless data to exactly the original (MR_small.dcm, uncompressed)."""
    reference = pydicom.dcmread(str(_pydicom_file("MR_small.dcm"))).pixel_array
    ds = pydicom.dcmread(str(_pydicom_file(name)))
    np.testing.assert_array_equal(decode_stored(ds, plugins=(plugin,), use_dcmtk=False),
                                  reference)
    np.testing.assert_array_equal(decode_stored(ds), reference)


def test_gdcm_and_pylibjpeg_agree_on_jpeg_lossless() -> None:
    ds = pydicom.dcmread(str(_pydicom_file("JPEG-LL.dcm")))
    np.testing.assert_array_equal(decode_stored(ds, plugins=("gdcm",), use_dcmtk=False),
                                  decode_stored(ds, plugins=("pylibjpeg",), use_dcmtk=False))


def test_12_bit_jpeg_extended_is_decoded_by_dcmtk_when_the_plugins_fail(tmp_path: Path) -> None:
    """pydicom's JPEG-lossy.dcm: pylibjpeg and GDCM both fail; dcmtk's dcmdjpeg decodes it."""
    import subprocess

    exe = require_tool("dcmdjpeg")
    path = _pydicom_file("JPEG-lossy.dcm")
    ds = pydicom.dcmread(str(path))
    with pytest.raises(UnsupportedInputError) as err:
        decode_stored(ds, path, use_dcmtk=False)
    assert "gdcm:" in err.value.detail and "pylibjpeg:" in err.value.detail
    out = tmp_path / "raw.dcm"
    subprocess.run([exe, str(path), str(out)], check=True, capture_output=True)
    np.testing.assert_array_equal(decode_stored(ds, path), pydicom.dcmread(out).pixel_array)
    assert load_image(path).image.shape[1:3] == (ds.Columns, ds.Rows)


def test_dcm_qa_ts_every_transfer_syntax_reads_the_same_slice() -> None:
    """One MR slice in every transfer syntax of dcm_qa_ts: all decode to the same voxels
    (their dcm2niix reference NIfTIs are compared in test_reader_geometry)."""
    root = shared_path("dicom", "dcm_qa_ts")
    files = sorted(p for p in root.rglob("*.dcm") if "Ref" not in p.parts)
    if not files:
        pytest.skip("dcm_qa_ts holds no .dcm files")
    arrays = {}
    for p in files:
        ds = pydicom.dcmread(str(p))
        ts = ds.file_meta.TransferSyntaxUID
        if "Lossy" in ts.name or "Baseline" in ts.name or "Extended" in ts.name:
            continue
        arrays[p.name] = decode_stored(ds, p).astype(np.int32)
    assert len(arrays) >= 3
    first = next(iter(arrays.values()))
    for name, arr in arrays.items():
        np.testing.assert_array_equal(arr, first, err_msg=name)


# ---------------------------------------------------------------------------------------------
# every refusal class names its real cause (Parametric Map: test_dicom_derived)
# ---------------------------------------------------------------------------------------------

def test_undecodable_pixel_data_names_syntax_decoders_and_what_they_said() -> None:
    path = _pydicom_file("JPEG2000-embedded-sequence-delimiter.dcm")
    with pytest.raises(UnsupportedInputError) as err:
        load_image(path)
    text = str(err.value)
    assert "JPEG 2000" in text and "1.2.840.10008.1.2.4.91" in text
    for plugin in ("pylibjpeg:", "gdcm:", "pillow:"):
        assert plugin in text
    # the decoders are installed: no "install X" hint; the data is at fault
    assert "install a decoder" not in text and "pip install" not in text
    assert "probably damaged" in text


def test_truncated_pixel_data_is_named_as_such() -> None:
    with pytest.raises(CorruptInputError, match="does not match its header.*less than expected"):
        load_image(_pydicom_file("MR_truncated.dcm"))


def test_missing_image_pixel_attributes_are_named() -> None:
    with pytest.raises(CorruptInputError, match="Image Pixel module is incomplete.*Bits Allocated"):
        load_image(_pydicom_file("nested_priv_SQ.dcm"))


def test_no_pixel_data_is_named() -> None:
    with pytest.raises(UnsupportedInputError, match=r"\(ECG\) but holds no pixel data"):
        load_image(_pydicom_file("waveform_ecg.dcm"))


@pytest.mark.parametrize(("parts", "what", "instead"), [
    (("dcmqi_data", "data", "segmentations", "liver.dcm"), "Segmentation Storage object \\(1 "
     "segment\\(s\\): Liver", "series this SEG was drawn on.*reference segmentation"),
    (("rt-utils_testdata", "tests", "mock_data", "rt.dcm"), "RT Structure Set Storage object "
     "\\(1 ROI\\(s\\): ROI-1\\)", "series this RTSTRUCT was drawn on"),
    (("dcmqi_data", "data", "sr-example", "sr.dcm"), "Comprehensive SR object \\(Imaging "
     "Measurement Report, 24 measurement", "holds measurements, not pixels"),
])
def test_derived_objects_say_what_they_are_and_what_to_give(parts: tuple[str, ...], what: str,
                                                            instead: str) -> None:
    with pytest.raises(UnsupportedInputError) as err:
        load_image(shared_path("dicom", *parts))
    assert err.value.hint is not None
    import re

    assert re.search(what, err.value.detail), err.value.detail
    assert re.search(instead, err.value.hint), err.value.hint


def test_folder_of_several_series_lists_them(tmp_path: Path) -> None:
    import shutil

    shutil.copy(_pydicom_file("CT_small.dcm"), tmp_path / "a.dcm")
    shutil.copy(_pydicom_file("MR_small.dcm"), tmp_path / "b.dcm")
    with pytest.raises(SeriesError, match="holds 2 image series"):
        load_image(tmp_path)
