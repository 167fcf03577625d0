"""The lean DICOM encoder (``medxai.io.writers._encode``): byte for byte the file pydicom's
``save_as(buffer, enforce_file_format=True)`` writes of the same dataset, for every object the
writers make (on a photo and on a CT series), for datasets with the character sets and values
of real files, and pydicom's own file wherever the lean path does not apply (the fallback is
taken, and the bytes are still pydicom's)."""

from __future__ import annotations

import copy
import datetime
import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.charset import convert_encodings
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import DA, DT, TM

from medxai.io.writers import (
    _encode,
    create_photo_study,
    write_dicom_pm,
    write_dicom_rtstruct,
    write_dicom_sc,
    write_dicom_seg,
    write_dicom_sr,
)
from medxai.samples import make_ct_volume, write_ct_series
from tests.helpers_dicom import load_series, shared_file

MODEL = {"model_name": "test-unet", "model_version": "1.2.3"}
LABELS = [
    {"value": 1, "name": "lesion", "color": [255, 0, 0]},
    {"value": 2, "name": "liver", "color": [0, 255, 0]},
]


def _pydicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def recorded(monkeypatch):
    """Every dataset the writers encode: (a deep copy of it taken before, the lean file or
    None, why not)."""
    records: list[tuple[Dataset, bytes | None, str]] = []
    real = _encode.lean_attempt

    def record(ds):
        before = copy.deepcopy(ds)
        data, why = real(ds)
        records.append((before, data, why))
        return data, why

    monkeypatch.setattr(_encode, "lean_attempt", record)
    return records


def _assert_lean_and_pydicoms(records, files: list[Path]) -> None:
    """Each object took the lean path, its bytes are pydicom's, and they are the file."""
    assert len(records) == len(files)
    for (before, data, why), path in zip(records, files, strict=True):
        assert data is not None, f"{path.name}: fell back to pydicom ({why})"
        assert data == _pydicom_bytes(before), path.name
        assert path.read_bytes() == data, path.name


def _probabilities(shape, seed=0):
    rng = np.random.default_rng(seed)
    prob = rng.random((3, *shape)).astype(np.float32) + 0.01
    prob /= prob.sum(axis=0)
    return prob, prob.argmax(axis=0).astype(np.uint8)


def _all_objects(labels, prob, source, tmp: Path, *, rtstruct: bool) -> list[Path]:
    """Every DICOM object the writers make of one result (SEG of each type, PM of saliency and
    uncertainty, SR, SC, RTSTRUCT), in the order they are encoded."""
    files = []
    for seg_type in ("binary", "labelmap", "fractional"):
        path = tmp / f"seg_{seg_type}.dcm"
        files.append(
            write_dicom_seg(
                labels, source, LABELS, *MODEL.values(), path,
                seg_type=seg_type, probabilities=prob,
            )
        )
    smooth = prob[1].astype(np.float64)
    files.append(write_dicom_pm(smooth, source, tmp / "pm_saliency.dcm", method="gradcam",
                                label_name="lesion", **MODEL))
    files.append(write_dicom_pm(prob[0], source, tmp / "pm_uncertainty.dcm",
                                quantity="uncertainty", encoding="uint16", **MODEL))
    files.append(write_dicom_sr(labels, source, files[0], LABELS, tmp / "sr.dcm",
                                saliency={1: smooth}, method="gradcam", quality_score=0.75,
                                **MODEL))
    files += write_dicom_sc((prob * 255).astype(np.uint8), source,
                            tmp / "sc", *MODEL.values())
    if rtstruct:
        files.append(write_dicom_rtstruct(labels, source, LABELS, tmp / "rtstruct.dcm",
                                          **MODEL))
    return files


def test_every_object_of_a_photo_is_the_bytes_pydicom_writes(tmp_path, recorded):
    picture = (np.random.default_rng(1).random((3, 48, 40)) * 255).astype(np.uint8)
    source = create_photo_study(picture, tmp_path / "photo.dcm")
    recorded.clear()  # the photo itself
    prob, labels = _probabilities((48, 40))
    files = _all_objects(labels, prob, source, tmp_path, rtstruct=False)
    _assert_lean_and_pydicoms(recorded, files)


def test_every_object_of_a_ct_series_is_the_bytes_pydicom_writes(tmp_path, recorded):
    volume, _ = make_ct_volume((24, 20, 6))
    source, _ = load_series(write_ct_series(volume, tmp_path / "ct"))
    prob, labels = _probabilities(volume.shape, seed=2)
    files = _all_objects(labels, prob, source, tmp_path, rtstruct=True)
    assert len(files) == 3 + 2 + 1 + 6 + 1  # the SC: one file per slice
    _assert_lean_and_pydicoms(recorded, files)


def test_the_writers_do_not_call_save_as(tmp_path, monkeypatch):
    """SEG, PM, SR, SC and RTSTRUCT written with pydicom's save_as out of the way: the lean
    encoder writes them all (not a fallback that happens to give the same bytes)."""
    volume, _ = make_ct_volume((20, 16, 3))
    source, _ = load_series(write_ct_series(volume, tmp_path / "ct"))

    def refuse(*args, **kwargs):
        raise AssertionError("save_as was called")

    monkeypatch.setattr(Dataset, "save_as", refuse)
    monkeypatch.setattr(pydicom.filewriter, "dcmwrite", refuse)
    prob, labels = _probabilities(volume.shape, seed=3)
    files = _all_objects(labels, prob, source, tmp_path, rtstruct=True)
    assert all(pydicom.dcmread(f).SOPInstanceUID for f in files)


# ---------------------------------------------------------------------------------------------
# sources with other character sets; files read and written again
# ---------------------------------------------------------------------------------------------

_CHARSET_FILES = [Path(f).name for f in get_charset_files("chr*.dcm")]


@pytest.mark.filterwarnings("ignore:The string")  # highdicom: one-component names
@pytest.mark.parametrize("name", ["chrFren.dcm", "chrX1.dcm", "chrX2.dcm", "chrRuss.dcm",
                                  "chrH31.dcm", "chrGreek.dcm", "chrKoreanMulti.dcm"])
def test_objects_of_a_source_with_another_character_set(tmp_path, recorded, name):
    """The patient of a real file in another character set (Latin-1, UTF-8, GB18030, Cyrillic,
    Greek; the Japanese and Korean ISO 2022 ones become UTF-8 in medxai's copy of the header) on
    a photo: its SEG, PM and SR are pydicom's bytes, by the lean path (the text is encoded by
    pydicom's own ``encode_string`` and ``PersonName.encode``), with the non-ASCII name."""
    (charset_file,) = [f for f in get_charset_files(name)]
    patient = pydicom.dcmread(charset_file)
    picture = (np.random.default_rng(4).random((3, 16, 12)) * 255).astype(np.uint8)
    source = create_photo_study(picture, tmp_path / "photo.dcm")
    recorded.clear()
    first = source.datasets[0]
    first.SpecificCharacterSet = patient.SpecificCharacterSet
    first.PatientName = patient.PatientName
    prob, labels = _probabilities((16, 12), seed=5)
    files = [write_dicom_seg(labels, source, LABELS, *MODEL.values(), tmp_path / "seg.dcm")]
    files.append(write_dicom_pm(prob[1], source, tmp_path / "pm.dcm", **MODEL))
    files.append(write_dicom_sr(labels, source, files[0], LABELS, tmp_path / "sr.dcm", **MODEL))
    _assert_lean_and_pydicoms(recorded, files)
    written = pydicom.dcmread(files[0])
    assert str(written.PatientName) == str(patient.PatientName)
    assert not str(written.PatientName).isascii()


def _in_memory(path: Path, *, convert: bool) -> Dataset:
    """A file as a dataset to write again in Explicit VR Little Endian, marked as made in
    memory (as the writers' objects are); ``convert``: every raw element converted first."""
    ds = pydicom.dcmread(path, force=True)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_original_encoding(None, None)
    if convert:
        for _ in ds.iterall():
            pass
    return ds


_FILES = [
    *_CHARSET_FILES,
    "CT_small.dcm",
    "MR_small.dcm",
    "rtplan.dcm",
    "rtstruct.dcm",
    "rtdose.dcm",
    "waveform_ecg.dcm",
    "reportsi.dcm",
    "priv_SQ.dcm",
    "SC_rgb.dcm",
    "emri_small.dcm",
    "JPEG2000.dcm",
    "image_dfl.dcm",
    "liver.dcm",
]


def _testdata(name: str) -> Path:
    found = get_charset_files(name) if name.startswith("chr") else []
    path = found[0] if found else get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return Path(path)


@pytest.mark.parametrize("name", _FILES)
def test_real_files_written_again_are_pydicoms_bytes(name):
    """Real files (every pydicom character set file, CT, MR, RT, waveforms with OB or OW, an
    SR, private sequences, compressed pixel data), their elements converted: the lean file is
    pydicom's. Left raw (pydicom converts them as it writes): pydicom's bytes either way, by
    the lean path where the raw elements are explicit little endian."""
    path = _testdata(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for convert in (True, False):
            ds = _in_memory(path, convert=convert)
            before = copy.deepcopy(ds)
            data, why = _encode.lean_attempt(ds)
            assert data == _pydicom_bytes(before) or (data is None and not convert), why
            if convert:
                assert data is not None, why


def test_real_files_under_shared_data_written_again():
    """Objects of other toolkits (highdicom's SEG, SR and slide microscopy test files, dcmqi's
    SEG): converted, the lean file is pydicom's."""
    folder = shared_file("highdicom_test_files")
    names = ["seg_image_ct_binary.dcm", "seg_image_sm_control_labelmap.dcm", "sr_document.dcm",
             "sm_annotations.dcm", "ct_image.dcm", "dx_image.dcm"]
    for name in names:
        ds = _in_memory(folder / name, convert=True)
        before = copy.deepcopy(ds)
        data, why = _encode.lean_attempt(ds)
        assert data is not None, f"{name}: {why}"
        assert data == _pydicom_bytes(before), name


def test_converted_character_sets_convert_to_themselves():
    """Items without a Specific Character Set take their parent's converted encodings as they
    are (pydicom converts them again for every element: the same list)."""
    terms = ["", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192", "ISO_IR 144", "GB18030", "GBK",
             ["", "ISO 2022 IR 87"], ["ISO 2022 IR 6", "ISO 2022 IR 149"],
             ["ISO 2022 IR 100", "ISO 2022 IR 126"], ["", "ISO 2022 IR 13", "ISO 2022 IR 87"]]
    for term in terms:
        once = convert_encodings(term)
        assert convert_encodings(once) == once, term


# ---------------------------------------------------------------------------------------------
# hand-made datasets: every kind of value the lean path writes, and what it leaves to pydicom
# ---------------------------------------------------------------------------------------------


def _dataset(charset: str | None = "ISO_IR 100") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    if charset:
        ds.SpecificCharacterSet = charset
    return ds


def _every_kind() -> Dataset:
    ds = _dataset()
    ds.PatientName = ["Müller^Jürgen", "Smith^J"]
    ds.PatientID = "ÄB1"  # LO, odd byte count
    ds.ReferringPhysicianName = ""
    ds.StudyDate = DA(datetime.date(2024, 2, 29))
    ds.StudyTime = TM(datetime.time(9, 5, 1, 250))
    ds.AcquisitionDateTime = DT(datetime.datetime(2024, 2, 29, 9, 5, 1))
    ds.SeriesDate = "20240229"
    ds.ContentTime = ["101010", "1111"]
    ds.ImageType = ["DERIVED", "PRIMARY", "X"]
    ds.ImagePositionPatient = [0.1, 1 / 3, -1e-20]
    ds.PixelSpacing = ["0.5", " 0.25 "]
    ds.SliceThickness = 2.5
    ds.InstanceNumber = 7
    ds.ReferencedFrameNumber = [1, 22, 333]
    ds.StudyComments = "one\\two, with a backslash"  # LT keeps it
    ds.ImageComments = b"bytes value"
    ds.InstitutionName = "St. Mary's"  # LO, odd length
    ds.FrameOfReferenceUID = "1.2.3"  # UI, odd length
    ds.Rows, ds.Columns = 2, 3
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.SmallestImagePixelValue = -5  # US or SS
    ds.LargestImagePixelValue = 300
    ds.PixelData = np.arange(6, dtype="<i2").tobytes()  # OB or OW
    ds.add_new(0x00181310, "US", [0, 2, 3, 0])  # AcquisitionMatrix
    ds.add_new(0x00089007, "CS", ["ORIGINAL", "PRIMARY", "", ""])
    ds.add_new(0x00209165, "AT", [0x00209056, 0x00209057])  # DimensionIndexPointer-like
    ds.add_new(0x00209167, "AT", 0x00209056)
    ds.add_new(0x00700022, "FL", [np.float32(1.5), 2.25])
    ds.add_new(0x00186028, "FD", 0.1)
    ds.add_new(0x00189219, "SS", -3)
    ds.add_new(0x00189237, "SL", [-70000, 70000])
    ds.add_new(0x00720002, "SV", [-(2**40)])
    ds.add_new(0x00720003, "UV", 2**40)
    ds.add_new(0x00280008, "IS", "3")
    ds.add_new(0x00660016, "OF", np.arange(3, dtype="<f4").tobytes())
    ds.add_new(0x00660040, "OL", b"\x01\x00\x00\x00")
    ds.add_new(0x00189510, "OB", b"\x01\x02\x03")  # odd: padded with a zero byte
    ds.add_new(0x00211001, "UN", b"\x01\x02\x03")  # UN: not padded
    ds.add_new(0x00210010, "LO", "MEDXAI TEST")  # private creator
    ds.add_new(0x00211002, "LO", "private value")
    ds.add_new(0x00400275, "SQ", [])  # empty sequence
    ds.ReferencedSeriesSequence = _items()
    ds["ReferencedSeriesSequence"].is_undefined_length = True
    ds.add(RawDataElement(pydicom.tag.Tag(0x00280006), "US", 2, b"\x01\x00", 0, False, True))
    # raw, explicit little endian (Planar Configuration): converted as pydicom converts it
    return ds


def _items() -> Sequence:
    inner = Dataset()
    inner.SpecificCharacterSet = "ISO_IR 192"
    inner.PatientName = "Ωμέγα^Δέλτα"
    inner.LargestPixelValueInSeries = 12  # US or SS, PixelRepresentation of the root
    inherited = Dataset()
    inherited.SeriesDescription = "Ärzte"
    inherited.is_undefined_length_sequence_item = True
    inherited.ReferencedSOPSequence = [Dataset()]
    inherited.ReferencedSOPSequence[0].ReferencedSOPInstanceUID = "1.2.840.99"
    return Sequence([inner, inherited])


def test_every_kind_of_value_is_written_as_pydicom_writes_it():
    ds = _every_kind()
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"  # not the dataset's: updated in the file
    before = copy.deepcopy(ds)
    meta = dict(ds.file_meta._dict)
    data, why = _encode.lean_attempt(ds)
    assert data is not None, why
    assert data == _pydicom_bytes(before)
    # the file meta completed on a copy, as save_as does: the dataset's own is as it was
    assert ds.file_meta._dict == meta and sorted(meta) == [0x00020003, 0x00020010]
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4"
    written = pydicom.dcmread(io.BytesIO(data)).file_meta
    assert written.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert written.ImplementationClassUID
    # the changes save_as makes are made: ambiguous VRs set, raw elements converted
    assert ds["PixelData"].VR == "OW" and ds["SmallestImagePixelValue"].VR == "SS"
    assert not isinstance(ds._dict[0x00280006], RawDataElement)
    # and written again, the same bytes (by either)
    assert _encode.dicom_file_bytes(ds) == data == _pydicom_bytes(ds)


def test_unsigned_pixels_and_no_character_set():
    ds = _dataset(charset=None)
    ds.BitsAllocated = 8
    ds.PixelRepresentation = 0
    ds.LargestImagePixelValue = 255
    ds.PixelData = b"\x01\x02\x03"
    ds.PatientName = "Doe^John"
    before = copy.deepcopy(ds)
    data = _encode.lean_file_bytes(ds)
    assert data is not None and data == _pydicom_bytes(before)
    assert ds["PixelData"].VR == "OB" and ds["LargestImagePixelValue"].VR == "US"


class _OwnReading(Dataset):
    def __getitem__(self, key):
        return super().__getitem__(key)


def _implicit_raw_in_an_item() -> Dataset:
    ds = _dataset()
    item = Dataset()
    item.add(RawDataElement(pydicom.tag.Tag(0x00080100), None, 4, b"T-1 ", 0, True, True))
    ds.ConceptNameCodeSequence = [item]
    return ds


def _too_long_for_lo() -> Dataset:
    ds = _dataset()
    ds.add_new(0x00081030, "LO", "x" * 70000)  # pydicom writes it as UN, with a warning
    return ds


def _lut_descriptor() -> Dataset:
    ds = _dataset()
    ds.PixelRepresentation = 1
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.LUTData = list(range(256))
    ds.ModalityLUTSequence = [item]
    return ds


def _buffered_pixels() -> Dataset:
    ds = _dataset()
    ds.BitsAllocated = 8
    ds.add_new(0x7FE00010, "OB", io.BufferedReader(io.BytesIO(b"\x00\x01\x02\x03")))
    return ds


def _implicit_syntax() -> Dataset:
    ds = _dataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.PatientName = "Doe^Jane"
    return ds


def _read_from_a_file() -> Dataset:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def _own_class() -> Dataset:
    ds = _OwnReading()
    ds.update(_dataset())
    ds.file_meta = _dataset().file_meta
    return ds


def _ambiguous_without_context() -> Dataset:
    ds = _dataset()
    ds.add_new(0x54001010, "OB or OW", b"\x00\x01")  # Waveform Data without its bits allocated
    return ds


@pytest.mark.parametrize(
    "make, reason",
    [
        (_implicit_syntax, "transfer syntax"),
        (_read_from_a_file, "read from a file"),
        (_own_class, "class"),
        (_implicit_raw_in_an_item, "raw element"),
        (_too_long_for_lo, "too long"),
        (_lut_descriptor, "ambiguous VR"),
        (_buffered_pixels, "buffered"),
        (_ambiguous_without_context, "AttributeError"),
    ],
)
def test_what_the_lean_path_leaves_to_pydicom(make, reason):
    """Each of these makes the whole file pydicom's: the fallback is taken (for the reason
    named), and the bytes are pydicom's (or pydicom's error is raised)."""
    ds, twin, probe = make(), make(), make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data, why = _encode.lean_attempt(probe)
        assert data is None and reason in why, why
        try:
            expected = _pydicom_bytes(twin)
        except Exception as exc:  # noqa: BLE001 - pydicom's own refusal
            with pytest.raises(type(exc)):
                _encode.dicom_file_bytes(ds)
            return
        got = _encode.dicom_file_bytes(ds)
    assert got == expected
