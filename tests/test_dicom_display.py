"""The X-ray display pipeline (medxai.io.dicom.display) on real CR/DX/MG files.

Each file is rendered by medxai and independently (dcmtk's dcm2pnm with the same VOI choice, and
pydicom's LUT functions applied by hand here); the reader gives the displayed image as the model
input.
"""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medxai.io.dicom.display import display_image, radiograph_spacing
from medxai.io.readers import load_image
from tests.conftest import require_tool, shared_path

warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")


def _pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    try:
        p = get_testdata_file(name)
    except Exception:  # noqa: BLE001 - pydicom-data may be absent or offline
        p = None
    if p is None:
        pytest.skip(f"pydicom test file {name} not available (pip install pydicom-data)")
    return Path(p)


# (file, what it exercises)
CASES = {
    "RG1_UNCR.dcm": "CR MONOCHROME1, 15 of 16 bits stored, window 15000/30000",
    "RG3_UNCR.dcm": "CR MONOCHROME1, 10 bits stored, window 550/1024",
    "6154": "CR MONOCHROME1, 12 bits, rescale slope 0.684, ImagerPixelSpacing",
    "vlut_04.dcm": "VOI LUT Sequence",
    "mlut_18.dcm": "Modality LUT Sequence, signed 12-bit, no VOI: full stored range",
    "dx_image.dcm": "DX MONOCHROME1, 8 bits, PixelSpacing and ImagerPixelSpacing",
    "MG_Explicit_Little.dcm": "MG MONOCHROME2, window, magnification factor 1.5",
}


def _path(name: str) -> Path:
    if name == "dx_image.dcm":
        return shared_path("dicom", "highdicom_test_files", name)
    if name == "MG_Explicit_Little.dcm":
        return shared_path("dicom", "notZaki_DICOMSamples", name)
    return _pydicom_file(name)


def _dcm2pnm(path: Path, ds: pydicom.Dataset, tmp: Path) -> np.ndarray:
    exe = require_tool("dcm2pnm")
    if "VOILUTSequence" in ds:
        voi = ["+Wl", "1"]
    elif "WindowCenter" in ds:
        voi = ["+Wi", "1"]
    else:
        voi = ["-W"]  # no VOI windowing: the full range
    out = tmp / "ref.pgm"
    subprocess.run([exe, *voi, "--write-raw-pnm", str(path), str(out)], check=True,
                   capture_output=True)
    data = out.read_bytes()
    n = int(ds.Rows) * int(ds.Columns)
    return np.frombuffer(data[-n:], dtype=np.uint8).reshape(int(ds.Rows), int(ds.Columns))


def _by_hand(ds: pydicom.Dataset) -> np.ndarray:
    """pydicom's Modality and VOI LUT functions, output range and inversion written out here."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    arr = apply_modality_lut(ds.pixel_array, ds)
    bits = int(ds.BitsStored)
    signed = int(ds.PixelRepresentation) == 1
    if "VOILUTSequence" in ds:
        out = apply_voi_lut(np.rint(arr).astype(np.int64), ds)
        lo, hi = 0.0, 2.0 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1
    elif "WindowCenter" in ds:
        out = apply_voi_lut(arr, ds, prefer_lut=False)
        # PS3.3 C.11.2.1.2: the output range of the window is that of the modality LUT output
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        if "RescaleSlope" in ds and "RescaleIntercept" in ds:
            lo = lo * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            hi = hi * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    else:
        out = arr
        stored = np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed else np.arange(2**bits)
        full = apply_modality_lut(stored, ds)
        lo, hi = float(full.min()), float(full.max())
    v = np.clip((out.astype(np.float64) - lo) / (hi - lo), 0, 1)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        v = 1 - v
    return v


@pytest.mark.parametrize("name", sorted(CASES))
def test_display_matches_dcmtk_and_pydicom_by_hand(name: str, tmp_path: Path) -> None:
    path = _path(name)
    ds = pydicom.dcmread(str(path))
    shown = display_image(ds, path)
    assert shown.pixels.dtype == np.float32 and shown.pixels.shape == (ds.Rows, ds.Columns)
    assert 0.0 <= float(shown.pixels.min()) and float(shown.pixels.max()) <= 1.0
    # pydicom's LUT functions applied by hand: the same float image
    np.testing.assert_allclose(shown.pixels, _by_hand(pydicom.dcmread(str(path))), atol=1e-6)
    # dcmtk renders it independently (it truncates where medxai rounds): within one grey level
    ref = _dcm2pnm(path, ds, tmp_path)
    diff = np.abs(ref.astype(int) - shown.to_uint8().astype(int))
    assert diff.max() <= 1, f"{name} ({CASES[name]}): differs from dcm2pnm by {diff.max()}"
    assert shown.applied["inverted"] == (ds.PhotometricInterpretation == "MONOCHROME1")


def test_what_was_applied_is_recorded() -> None:
    rg1 = display_image(pydicom.dcmread(str(_pydicom_file("RG1_UNCR.dcm"))))
    assert rg1.applied["voi"] == "window" and rg1.applied["inverted"] is True
    assert (rg1.applied["window_center"], rg1.applied["window_width"]) == (15000.0, 30000.0)
    assert rg1.applied["voi_lut_function"] == "LINEAR" and rg1.applied["bits_stored"] == 15
    cr = display_image(pydicom.dcmread(str(_pydicom_file("6154"))))
    assert cr.applied["modality_lut"] == "rescale" and cr.applied["rescale_slope"] == 0.684
    assert display_image(pydicom.dcmread(str(_pydicom_file("vlut_04.dcm")))).applied["voi"] == \
        "lut-sequence"
    mlut = display_image(pydicom.dcmread(str(_pydicom_file("mlut_18.dcm")))).applied
    assert (mlut["modality_lut"], mlut["voi"]) == ("lut-sequence", "full-range")


def test_sigmoid_window_matches_dcmtk(tmp_path: Path) -> None:
    src = shared_path("dicom", "highdicom_test_files", "dx_image.dcm")
    ds = pydicom.dcmread(str(src))
    ds.VOILUTFunction = "SIGMOID"
    path = tmp_path / "sigmoid.dcm"
    ds.save_as(path)
    shown = display_image(pydicom.dcmread(str(path)))
    assert shown.applied["voi_lut_function"] == "SIGMOID"
    ref = _dcm2pnm(path, ds, tmp_path)
    assert np.abs(ref.astype(int) - shown.to_uint8().astype(int)).max() <= 1


@pytest.mark.parametrize("name", ["6154", "dx_image.dcm", "MG_Explicit_Little.dcm"])
def test_reader_gives_the_displayed_image_as_model_input(name: str) -> None:
    path = _path(name)
    loaded = load_image(path)
    img = loaded.image
    assert img.meta["intensity"] == "display"
    hdr = pydicom.dcmread(str(path), stop_before_pixels=True)
    assert str(img.dtype) == "torch.uint8"
    assert tuple(img.shape) == (1, int(hdr.Columns), int(hdr.Rows))
    shown = display_image(pydicom.dcmread(str(path)), path).to_uint8()
    # (C, I, J): i along columns, j along rows
    np.testing.assert_array_equal(img[0].numpy(), shown.T)
    assert img.meta["display"]["voi"] == display_image(pydicom.dcmread(str(path))).applied["voi"]
    modality = load_image(path, display=False).image
    assert modality.meta["intensity"] == "modality"


def test_a_ct_slice_keeps_modality_values_by_default() -> None:
    img = load_image(_pydicom_file("CT_small.dcm")).image
    assert img.meta["intensity"] == "modality" and float(img.min()) < 0  # Hounsfield units
    shown = load_image(_pydicom_file("CT_small.dcm"), display=True).image
    assert shown.meta["intensity"] == "display" and str(shown.dtype) == "torch.uint8"


def test_radiograph_pixel_spacing_source() -> None:
    cr = load_image(_pydicom_file("6154")).image.meta
    assert cr["pixel_spacing_source"] == "ImagerPixelSpacing" and cr["spacing"][:2] == [0.1, 0.1]
    dx = load_image(_path("dx_image.dcm")).image.meta
    assert dx["pixel_spacing_source"] == "PixelSpacing"
    assert dx["spacing"][:2] == [round(1.2011999999990001, 6), 1.2]  # (column, row)
    mg = load_image(_path("MG_Explicit_Little.dcm")).image.meta
    assert mg["pixel_spacing_source"] == "PixelSpacing"
    assert mg["estimated_radiographic_magnification_factor"] == 1.5
    assert "patient_plane_spacing" not in mg  # PixelSpacing is already at the patient


def test_unusable_pixel_spacing_is_reported(tmp_path: Path) -> None:
    # RG1_UNCR.dcm (pydicom-data) has PixelSpacing 0, 0; the same on a small real CR
    ds = pydicom.dcmread(str(_pydicom_file("6154")))
    del ds.ImagerPixelSpacing
    ds.PixelSpacing = [0, 0]
    ds.save_as(tmp_path / "zero.dcm")
    meta = load_image(tmp_path / "zero.dcm").image.meta
    assert "pixel_spacing_source" not in meta and meta["spacing"][:2] == [1.0, 1.0]
    assert any("sizes are in pixels" in w for w in meta["geometry_warnings"])


def test_imager_spacing_with_magnification_gives_patient_plane_spacing() -> None:
    ds = pydicom.dcmread(str(_pydicom_file("6154")), stop_before_pixels=True)
    ds.EstimatedRadiographicMagnificationFactor = 1.25
    sp = radiograph_spacing(ds)
    assert sp is not None and sp.source == "ImagerPixelSpacing" and sp.magnification == 1.25
    assert sp.patient_plane_spacing == pytest.approx((0.08, 0.08))


def test_colour_is_refused_with_the_reason() -> None:
    from medxai.errors import UnsupportedInputError

    with pytest.raises(UnsupportedInputError, match="RGB.*MONOCHROME1/2 only"):
        display_image(pydicom.dcmread(str(_pydicom_file("SC_rgb.dcm"))))


@pytest.mark.parametrize(
    ("name", "signed"),
    [("RG3_UNCR.dcm", False), ("CT_small.dcm", True)],
)
def test_monochrome1_raw_values_match_highdicom(name: str, signed: bool, tmp_path: Path) -> None:
    """MONOCHROME1 read without the display pipeline: inverted within the stored range, then
    rescaled, exactly as highdicom's presentation LUT (no VOI) gives it.

    No signed MONOCHROME1 file ships with pydicom or pydicom-data, so the signed case is pydicom's
    real CT_small.dcm (signed 16-bit, intercept -1024) relabelled MONOCHROME1.
    """
    import highdicom as hd

    from medxai.io.dicom import apply_modality_lut, decode_frames

    path = _pydicom_file(name)
    if signed:
        ds = pydicom.dcmread(str(path))
        assert ds.PixelRepresentation == 1 and ds.PhotometricInterpretation == "MONOCHROME2"
        ds.PhotometricInterpretation = "MONOCHROME1"
        path = tmp_path / "signed_monochrome1.dcm"
        ds.save_as(path)
    ds = pydicom.dcmread(str(path))
    slope, inter = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    ours = apply_modality_lut(decode_frames(ds, path), [slope], [inter])[0, ..., 0]
    ref = hd.imread(str(path)).get_frame(1, apply_voi_transform=False, apply_presentation_lut=True)
    np.testing.assert_array_equal(ours.astype(np.float64), ref)
    stored = ds.pixel_array.astype(np.int64)
    lo_hi = -1 if signed else 2 ** int(ds.BitsStored) - 1
    np.testing.assert_array_equal(ours, (lo_hi - stored) * slope + inter)
