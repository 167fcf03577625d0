"""Helpers shared by the writers: arrays, label descriptions, software identity, DICOM sources."""

from __future__ import annotations

import copy
import datetime
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

from medxai._version import __version__
from medxai.errors import InputError
from medxai.io.types import DicomSource
from medxai.io.writers._atomic import write_bytes_atomic
from medxai.io.writers._encode import dicom_file_bytes
from medxai.palette import LABEL_PALETTE

__all__ = [
    "SOFTWARE_NAME",
    "SOFTWARE_VERSION",
    "NOT_FOR_DIAGNOSIS",
    "PALETTE",
    "LabelSpec",
    "as_numpy",
    "as_label_array",
    "normalise_labels",
    "label_colors_map",
    "rgb_triplet",
    "source_proxy",
    "frame_geometry",
    "patient_orientation_letters",
    "has_frame_of_reference",
    "now",
    "series_number_for",
    "first_path",
    "source_grid",
    "save_dicom",
    "new_uid",
    "derived_uids",
    "shared_source_headers",
]

SOFTWARE_NAME = "medxai"
SOFTWARE_VERSION = __version__
NOT_FOR_DIAGNOSIS = "AI result, not for diagnostic use"
#: Colours of labels 1, 2, ... that come without one.
PALETTE = list(LABEL_PALETTE)  # the one palette, medxai.palette

# Type 2 attributes highdicom reads from the source with plain attribute access.
_TYPE2_DEFAULTS = {
    "PatientID": "",
    "PatientName": "",
    "PatientBirthDate": "",
    "PatientSex": "",
    "AccessionNumber": "",
    "StudyID": "",
    "StudyDate": "",
    "StudyTime": "",
    "ReferringPhysicianName": "",
}
_REQUIRED = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Rows",
    "Columns",
)


def now() -> datetime.datetime:
    """The current local time (one place, so that tests could pin it)."""
    return datetime.datetime.now()


class _DerivedUids:
    """The UIDs of one :func:`derived_uids` block: the n-th UID of a role is a hash of the seed,
    the role and n. Each role counts on its own, so a role whose number of UIDs depends on the
    content (an SR's outline tracking UIDs) cannot shift the UIDs of the others."""

    def __init__(self, seed: str) -> None:
        self.seed = seed
        self.counts: dict[str, int] = {}

    def next(self, role: str) -> str:
        from pydicom.uid import generate_uid

        n = self.counts[role] = self.counts.get(role, 0) + 1
        return str(generate_uid(entropy_srcs=["medxai derived UID", self.seed, role, str(n)]))


_UID_SCOPE: ContextVar[_DerivedUids | None] = ContextVar("medxai_uid_scope", default=None)


def new_uid(role: str = "") -> UID:
    """The UID of a new object (SOP instance, series, frame of reference, tracking UID) a writer
    makes: a random UID (highdicom's root), or inside :func:`derived_uids` the next UID of
    ``role`` derived from its seed. UIDs whose number depends on the content (one per outline)
    take a role of their own, so that the object's own UIDs do not move with that number."""
    import highdicom as hd

    scope = _UID_SCOPE.get()
    return hd.UID() if scope is None else hd.UID(scope.next(role))


@contextmanager
def derived_uids(seed: str | None) -> Iterator[None]:
    """Inside this block (in this thread), :func:`new_uid` derives the n-th UID from ``seed``
    and n instead of drawing it at random: the writers called in the same order with the same
    seed make the same UIDs, so a result made again (after a crash) is the same instance to a
    receiver. ``seed`` must name everything the result depends on (source instances, model,
    settings); None or empty: random UIDs as outside the block."""
    if not seed:
        yield
        return
    token = _UID_SCOPE.set(_DerivedUids(seed))
    try:
        yield
    finally:
        _UID_SCOPE.reset(token)


class _HeaderCache:
    """The prepared full source headers of one :func:`shared_source_headers` block, by the
    identity of the source dataset (the dataset is kept alive with its entry)."""

    def __init__(self) -> None:
        self.proxies: dict[int, tuple[Dataset, Dataset]] = {}


_HEADER_SCOPE: ContextVar[_HeaderCache | None] = ContextVar("medxai_header_scope", default=None)


@contextmanager
def shared_source_headers() -> Iterator[None]:
    """Inside this block (in this thread), :func:`source_proxy` prepares each source header
    once (copy, type 2 defaults, character set and date repairs) and hands every writer its own
    copy of the prepared header (:func:`_own_copy`): the SEG, the Parametric Maps and the SR of
    one result read the source's header once. The source datasets must not change inside the
    block."""
    token = _HEADER_SCOPE.set(_HeaderCache())
    try:
        yield
    finally:
        _HEADER_SCOPE.reset(token)


def series_number_for(series_number: int | None, first: Dataset, offset: int) -> int:
    """The series number of a derived series: ``series_number`` when given, else the source's
    series number plus ``offset`` (``offset`` alone when that is not a valid number)."""
    if series_number is not None:
        return int(series_number)
    try:
        base = int(first.get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        base = 0
    number = base + offset
    return number if 0 < number < 2**31 else offset


def as_numpy(array: Any) -> np.ndarray:
    """A numpy view of ``array`` (numpy, torch tensor or MONAI ``MetaTensor``)."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def as_label_array(labels: Any, *, what: str = "labels") -> np.ndarray:
    """Validate a label map ``(I, J[, K])`` (a leading channel of size 1 is dropped) -> uint8.

    Raises:
        InputError: wrong number of dimensions, non-integer values or values outside 0..255.
    """
    arr = as_numpy(labels)
    if arr.ndim in (3, 4) and arr.shape[0] == 1:
        # (1, I, J[, K]): a channel-first label map
        arr = arr[0]
    if arr.ndim not in (2, 3):
        raise InputError(
            f"{what} must be a label map of shape (I, J) or (I, J, K); found shape {arr.shape}",
            hint="pass the argmax of the prediction without the channel axis",
        )
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        as_float = arr.astype(np.float64)
        if not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
            raise InputError(
                f"{what} must hold whole label values; found {arr.dtype} with "
                "fractional or non-finite values"
            )
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise InputError(f"{what} must hold label values 0..255; found {arr.min()}..{arr.max()}")
    return arr.astype(np.uint8)


def rgb_triplet(color: Any, *, default: tuple[int, int, int] = (255, 0, 0)) -> tuple[int, int, int]:
    """An RGB colour 0..255 from ``[r, g, b]`` (0..255 ints or 0..1 floats) or ``"#rrggbb"``."""
    if color is None:
        return default
    if isinstance(color, str):
        text = color.strip().lstrip("#")
        if len(text) == 6:
            try:
                return (int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16))
            except ValueError:
                pass
        raise InputError(f"colour {color!r} is not '#rrggbb' nor [r, g, b]")
    raw = list(color)
    try:
        values = [float(c) for c in raw]
    except (TypeError, ValueError) as exc:
        raise InputError(f"colour {color!r} is not '#rrggbb' nor [r, g, b]") from exc
    if len(values) != 3:
        raise InputError(f"colour {color!r} must have three components (r, g, b)")
    if all(isinstance(c, (float, np.floating)) for c in raw) and all(
        0.0 <= v <= 1.0 for v in values
    ):
        values = [v * 255.0 for v in values]  # floats 0..1
    return tuple(int(np.clip(round(v), 0, 255)) for v in values)  # type: ignore[return-value]


@dataclass(frozen=True)
class LabelSpec:
    """One non-background label: its value in the mask, name, RGB colour and optional codes."""

    value: int
    name: str
    color: tuple[int, int, int]
    category: Any = None
    type: Any = None


def normalise_labels(label_info: Sequence[Mapping[str, Any]] | None) -> list[LabelSpec]:
    """The non-zero labels of ``label_info`` (``[{"value", "name", "color"}, ...]``), by value.

    Raises:
        InputError: a value outside 1..255, or twice.
    """
    specs: dict[int, LabelSpec] = {}
    for entry in label_info or []:
        try:
            value = int(entry["value"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"label description {entry!r} has no integer 'value'") from exc
        if value == 0:
            continue
        if not 0 < value < 256:
            raise InputError(f"label value {value} is outside 1..255 ({entry!r})")
        if value in specs:
            raise InputError(f"label value {value} is described twice in label_info")
        name = str(entry.get("name") or f"label_{value}")
        default = PALETTE[(value - 1) % len(PALETTE)]
        specs[value] = LabelSpec(
            value,
            name,
            rgb_triplet(entry.get("color"), default=default),
            entry.get("category"),
            entry.get("type"),
        )
    return [specs[v] for v in sorted(specs)]


def label_colors_map(label_colors: Any) -> dict[int, tuple[int, int, int]]:
    """``{value: (r, g, b)}`` from a mapping value -> colour or a ``label_info`` list."""
    if label_colors is None:
        return {}
    if isinstance(label_colors, Mapping):
        return {
            int(k): rgb_triplet(v, default=PALETTE[(int(k) - 1) % len(PALETTE)])
            for k, v in label_colors.items()
            if int(k) != 0
        }
    return {spec.value: spec.color for spec in normalise_labels(label_colors)}


# ---------------------------------------------------------------------------------------------
# DICOM sources
# ---------------------------------------------------------------------------------------------

#: What highdicom reads from the 2nd, 3rd, ... image of a series (the 1st gets a full copy).
_LIGHT_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "Modality",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "PatientOrientation",
    "Laterality",
    "ImageLaterality",
    "SpecificCharacterSet",
)


def source_proxy(ds: Dataset, *, what: str = "source", light: bool = False) -> Dataset:
    """A copy of a source header that highdicom can use, the caller's dataset left untouched.

    The full copy (``light=False``; for the first image of a series, whose patient, study and
    equipment are copied) gets empty values for the type 2 attributes highdicom reads with plain
    attribute access (``AccessionNumber``, ``PatientSex``, ..., absent from many real files),
    a SpecificCharacterSet highdicom accepts and repaired old-style dates and times. The light
    copy (for the other images of a series) holds only what references and geometry need, so that
    a series of hundreds of slices is not deep-copied. Inside :func:`shared_source_headers` a
    full copy is prepared once per source dataset and each call gets its own copy of it
    (:func:`_own_copy`).

    Raises:
        InputError: an attribute without which no derived object can reference the source.
    """
    if not light:
        cache = _HEADER_SCOPE.get()
        if cache is not None:
            hit = cache.proxies.get(id(ds))
            if hit is None or hit[0] is not ds:
                hit = (ds, _full_proxy(ds, what))
                cache.proxies[id(ds)] = hit
            return _own_copy(hit[1])
        return _full_proxy(ds, what)
    proxy = Dataset()
    for kw in _LIGHT_KEYWORDS:
        if kw in ds:
            proxy[kw] = ds[kw]
    proxy.file_meta = getattr(ds, "file_meta", FileMetaDataset())
    _referable(proxy, ds, what)
    return proxy


#: Element values that cannot change in place (str covers UID, int IS, float DSfloat).
_IMMUTABLE_VALUES = (str, int, float, bytes, type(None))


def _own_copy(ds: Dataset) -> Dataset:
    """A copy of ``ds`` that is as independent of it as a deep copy, made faster.

    Every data element of the copy is a new element object, so that setting a value on the copy
    (pydicom's ``copy.X = v`` changes the existing element in place; highdicom's copies of
    patient and study attributes share the element objects with the source it is given) never
    reaches ``ds``. A value that cannot change in place (a string, a number, bytes, None) is
    shared by the two elements; every other value (multi-values, sequences, person names) and
    every element still encoded as read is deep-copied, as are the dataset's other attributes
    (file meta information, encodings). A deep copy of a photo's full header took 0.38 ms, four
    times per photo; this copy 0.15 ms. An element of another type than pydicom's DataElement
    (or a DataElement without the ``_value`` and ``__dict__`` this reads) is deep-copied.
    """
    cls = ds.__class__
    out = cls.__new__(cls)
    memo: dict[int, Any] = {id(ds): out}
    for key, value in ds.__dict__.items():
        if key == "_dict":
            value = {tag: _own_element(elem, memo) for tag, elem in value.items()}
        else:
            value = copy.deepcopy(value, memo)
        object.__setattr__(out, key, value)
    return out


def _own_element(elem: Any, memo: dict[int, Any]) -> Any:
    """A new element object equal to ``elem`` (:func:`_own_copy`)."""
    state = getattr(elem, "__dict__", None)
    if type(elem) is DataElement and state is not None and "_value" in state:
        if (
            elem.VR != "SQ"
            and not elem.is_buffered
            and isinstance(state["_value"], _IMMUTABLE_VALUES)
        ):
            new = DataElement.__new__(DataElement)
            new.__dict__.update(state)
            return new
    return copy.deepcopy(elem, memo)


def _full_proxy(ds: Dataset, what: str) -> Dataset:
    """:func:`source_proxy`'s full copy."""
    proxy = copy.deepcopy(ds)
    _referable(proxy, ds, what)
    for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if kw in proxy:
            delattr(proxy, kw)
    for kw, value in _TYPE2_DEFAULTS.items():
        if kw not in proxy:
            setattr(proxy, kw, value)
    if "Modality" not in proxy or not proxy.Modality:
        proxy.Modality = "OT"
    _fix_character_set(proxy)
    _fix_dates_and_times(proxy)
    return proxy


def _referable(proxy: Dataset, ds: Dataset, what: str) -> None:
    """Fill SOPClassUID / SOPInstanceUID from the file meta where empty; raise when what a
    reference needs is missing."""
    # Some exports (e.g. anonymisers) empty SOPClassUID / SOPInstanceUID but keep them in the
    # file meta information; reference what the file says it is.
    meta = getattr(ds, "file_meta", None)
    for kw, meta_kw in (
        ("SOPClassUID", "MediaStorageSOPClassUID"),
        ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
    ):
        if not proxy.get(kw) and meta is not None and meta.get(meta_kw):
            setattr(proxy, kw, meta.get(meta_kw))
    missing = [kw for kw in _REQUIRED if proxy.get(kw) in (None, "")]
    if missing:
        raise InputError(
            f"the DICOM {what} has no (or an empty) {', '.join(missing)}; a derived DICOM object "
            "must reference them",
            path=getattr(ds, "filename", None) or None,
            hint="anonymisers sometimes blank the UIDs: export the series again with its UIDs, "
            "or use the NIfTI output",
        )


_DA = re.compile(r"^\d{8}$")
_TM = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")


#: Dates and times highdicom parses or copies into derived objects (patient, study, series).
_DATE_TIME_KEYWORDS = (
    "StudyDate",
    "StudyTime",
    "PatientBirthDate",
    "PatientBirthTime",
    "SeriesDate",
    "SeriesTime",
    "ContentDate",
    "ContentTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "InstanceCreationDate",
    "InstanceCreationTime",
)


def _fix_dates_and_times(ds: Dataset) -> None:
    """Repair old ACR-NEMA style dates/times (``2001.01.31``, ``11:20:00``) that highdicom rejects;
    a value that still does not conform is emptied (type 2 attributes) or removed."""
    for kw in _DATE_TIME_KEYWORDS:
        if kw not in ds:
            continue
        elem = ds[kw]
        if elem.VR not in ("DA", "TM") or elem.VM != 1 or elem.value in (None, ""):
            continue
        text = str(elem.value).strip()
        if elem.VR == "DA":
            text, ok = text.replace(".", "").replace("-", ""), _DA
        else:
            text, ok = text.replace(":", ""), _TM
        if ok.match(text):
            if text != str(elem.value):
                elem.value = text
        elif elem.keyword in _TYPE2_DEFAULTS:
            elem.value = ""
        else:
            del ds[elem.tag]


def _fix_character_set(ds: Dataset) -> None:
    """Make SpecificCharacterSet one highdicom accepts (its strings are already decoded).

    Empty means the default repertoire (the attribute is removed); a value highdicom rejects is
    replaced by UTF-8 (``ISO_IR 192``), which can encode every decoded string.
    """
    if "SpecificCharacterSet" not in ds:
        return
    value = ds.SpecificCharacterSet
    values = [v for v in ([value] if isinstance(value, str) else list(value or [])) if v]
    if not values:
        del ds.SpecificCharacterSet
        return
    try:
        from highdicom.valuerep import _check_specific_character_set

        _check_specific_character_set(values if len(values) > 1 else values[0])
    except (ValueError, TypeError):
        ds.SpecificCharacterSet = "ISO_IR 192"


def first_path(source: DicomSource) -> Any:
    """The first file of a source (for error messages), or None."""
    return source.paths[0] if source.paths else None


def source_grid(source: DicomSource) -> tuple[int, int, int]:
    """(columns, rows, slices/frames) of a source: the shape a map on its grid has (MONAI
    ``(I, J, K)``); ``K`` counts the series' files or the multi-frame object's frames used."""
    first = source.first
    if source.is_multiframe:
        k = len(source.frame_numbers or [])
    else:
        k = len(source.datasets)
    return int(first.Columns), int(first.Rows), k


def save_dicom(ds: Dataset, path: Any) -> Any:
    """Write a dataset as a DICOM file (with file meta information), atomically: the bytes
    ``ds.save_as(..., enforce_file_format=True)`` writes (:func:`dicom_file_bytes`)."""
    return write_bytes_atomic(path, dicom_file_bytes(ds))


def has_frame_of_reference(ds: Dataset) -> bool:
    return bool(ds.get("FrameOfReferenceUID"))


def _fg_value(ds: Dataset, frame_index: int | None, group: str, keyword: str) -> Any:
    """Value of ``keyword`` in functional group ``group`` for a frame (per-frame, then shared:
    :func:`medxai.io.dicom.frame_item`)."""
    from medxai.io.dicom import frame_item

    item = frame_item(ds, frame_index or 0, group)
    return None if item is None else item.get(keyword)


def usable_spacing(spacing: Any) -> bool:
    """Whether a PixelSpacing-like value is two positive numbers (exports hold ``0\\0``,
    which dciodvfy rejects when copied into a derived object)."""
    try:
        return spacing is not None and len(spacing) == 2 and all(float(v) > 0 for v in spacing)
    except (TypeError, ValueError):
        return False


def frame_geometry(source: DicomSource, k: int) -> tuple[Dataset, int | None, dict[str, Any]]:
    """The source dataset, 1-based frame number (multi-frame) and plane geometry of slice ``k``.

    The geometry dict holds ``ImagePositionPatient``, ``ImageOrientationPatient`` and
    ``PixelSpacing`` (each only when the source has it; from the functional groups for enhanced
    multi-frame objects) and ``FrameOfReferenceUID`` when present.
    """
    if source.is_multiframe:
        ds = source.datasets[0]
        frame = int(source.frame_numbers[k])  # type: ignore[index]
    else:
        ds = source.datasets[k if len(source.datasets) > 1 else 0]
        frame = None
    geometry: dict[str, Any] = {}
    findex = None if frame is None else frame - 1
    ipp = ds.get("ImagePositionPatient")
    if ipp is None:
        ipp = _fg_value(ds, findex, "PlanePositionSequence", "ImagePositionPatient")
    iop = ds.get("ImageOrientationPatient")
    if iop is None:
        iop = _fg_value(ds, findex, "PlaneOrientationSequence", "ImageOrientationPatient")
    spacing = ds.get("PixelSpacing")
    if spacing is None:
        spacing = _fg_value(ds, findex, "PixelMeasuresSequence", "PixelSpacing")
    # The source's own DS values are kept (not re-formatted floats), so copies are exact.
    if ipp is not None and len(ipp) == 3:
        geometry["ImagePositionPatient"] = list(ipp)
    if iop is not None and len(iop) == 6:
        geometry["ImageOrientationPatient"] = list(iop)
    if usable_spacing(spacing):
        geometry["PixelSpacing"] = list(spacing)
    if has_frame_of_reference(ds):
        geometry["FrameOfReferenceUID"] = str(ds.FrameOfReferenceUID)
    return ds, frame, geometry


def patient_orientation_letters(iop: Sequence[float], threshold: float = 1e-3) -> list[str]:
    """PatientOrientation (0020,0020) for ImageOrientationPatient: e.g. ``['L', 'P']``.

    Each value names the patient directions of the row (increasing column index) and column
    (increasing row index) axes, main direction first (DICOM PS3.3 C.7.6.1.1.1), LPS.
    """
    out = []
    for vec in (iop[:3], iop[3:6]):
        letters = []
        for axis in np.argsort(-np.abs(np.asarray(vec, dtype=float))):
            c = float(vec[axis])
            if abs(c) < threshold:
                continue
            letters.append(("L", "P", "H")[axis] if c > 0 else ("R", "A", "F")[axis])
        out.append("".join(letters))
    return out
