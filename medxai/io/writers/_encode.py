"""DICOM files byte for byte as pydicom's ``save_as(..., enforce_file_format=True)`` writes
them, without its per-element cost, for the Explicit VR Little Endian datasets the writers
build in memory.

pydicom writes every element through one general path (a buffer per element, the tag made
again, the character set converted again, the value's type found out at each step): about
15 µs an element, and the SEG, the two Parametric Maps and the SR of one photo hold about a
thousand. :func:`dicom_file_bytes` writes the same bytes in one buffer, each value by the rule
of pydicom's writer for its VR (``pydicom.filewriter``: padding, multi-value joins, DS/IS
strings, dates and times, text in the dataset's character set by pydicom's own
``encode_string`` and ``PersonName.encode``, sequences and items with their lengths or
delimiters), the ambiguous VRs set by pydicom's own correction with the same ancestors, raw
elements converted where pydicom converts them (by pydicom) and written as they are where it
does not, and the file meta group completed by pydicom's own statements on a copy.

Whatever this module does not write the way pydicom does (another transfer syntax, a dataset
read from a file and not changed, a raw element of another encoding, a raw sequence or
ambiguous raw element, a LUT descriptor, an undefined length other than a sequence's, a
buffered value, a value type or VR outside the rules below, a value too long for its VR, a
dataset class that changes how elements are read, ...) makes the *whole* file pydicom's own:
:func:`lean_file_bytes` returns None and :func:`dicom_file_bytes` calls ``save_as``. Never
half of each.
"""

from __future__ import annotations

import copy
import io
import struct
from collections.abc import Callable
from io import BufferedIOBase
from typing import Any

import numpy as np
from pydicom.charset import convert_encodings, default_encoding, encode_string
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filewriter import correct_ambiguous_vr_element
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import AMBIGUOUS_VR, EXPLICIT_VR_LENGTH_32, PersonName

__all__ = ["dicom_file_bytes", "lean_file_bytes", "lean_attempt"]


class _Fallback(Exception):
    """The dataset holds something this module does not write exactly as pydicom does."""


_SHORT = struct.Struct("<HH2sH")  # tag, VR, 2-byte length
_LONG = struct.Struct("<HH2sHL")  # tag, VR, reserved, 4-byte length
_UL = struct.Struct("<L")
_AT = struct.Struct("<HH")
_ITEM = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"  # (FFFE,E000), length to be filled in
_ITEM_END = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"  # (FFFE,E00D)
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD)
_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_AMBIGUOUS = frozenset(str(vr) for vr in AMBIGUOUS_VR)
#: LUT Descriptors (US or SS whose first value is always US) and LUT Data (US or OW by the
#: descriptor): pydicom corrects them in an order this module does not repeat.
_LUT_TAGS = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002, 0x00283006})
#: Python encodings whose ``str.encode`` is what pydicom's ``encode_string`` gives when it
#: succeeds with the first encoding (no escape sequences, no custom encoder).
_PLAIN_ENCODINGS = frozenset({"iso8859", "latin_1", "UTF8"})
_PIXEL_DATA = 0x7FE00010
_CHARACTER_SET = BaseTag(0x00080005)
#: Dataset methods pydicom's writer goes through; a class that overrides one is written by
#: pydicom.
_READ_METHODS = (
    "keys",
    "get",
    "get_item",
    "elements",
    "__getitem__",
    "__getattr__",
    "__contains__",
    "original_encoding",
    "original_character_set",
    "_character_set",
)
_PLAIN_CLASSES: dict[type, bool] = {}


def dicom_file_bytes(ds: Dataset) -> bytes:
    """The DICOM file of ``ds``: exactly what ``ds.save_as(buffer, enforce_file_format=True)``
    writes (the lean encoder where it applies, else that call itself)."""
    data = lean_file_bytes(ds)
    if data is None:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
    return data


def lean_file_bytes(ds: Dataset) -> bytes | None:
    """The DICOM file of ``ds`` by the lean encoder, or None where pydicom must write it.

    Changes to ``ds`` are the ones ``save_as`` makes too (ambiguous VRs set, raw elements
    converted, the Pixel Data's length marked as defined)."""
    data, _ = lean_attempt(ds)
    return data


def lean_attempt(ds: Dataset) -> tuple[bytes | None, str]:
    """(the lean file or None, why pydicom must write it: empty where the lean path did)."""
    try:
        if not _plain(ds):
            return None, "a dataset class of its own"
        if not _converting(ds):
            return None, "read from a file in this encoding"  # pydicom's partial corrections
        head = _preamble(ds) + _file_meta(ds)
        if _PIXEL_DATA in ds._dict:
            ds[_PIXEL_DATA].is_undefined_length = False  # as save_as: not compressed
        writer = _Writer()
        writer.out += head
        writer.dataset(ds, convert_encodings(default_encoding))
        return bytes(writer.out), ""
    except _Fallback as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - any surprise: pydicom writes it (or says why not)
        return None, f"{type(exc).__name__}: {exc}"


def _plain(ds: Any) -> bool:
    """Whether ``ds`` is a Dataset whose class reads elements as pydicom's Dataset does."""
    cls = type(ds)
    known = _PLAIN_CLASSES.get(cls)
    if known is None:
        known = issubclass(cls, Dataset) and not any(
            name in vars(base)
            for base in cls.__mro__[: cls.__mro__.index(Dataset)]
            for name in _READ_METHODS
        )
        _PLAIN_CLASSES[cls] = known
    return known


def _converting(ds: Dataset) -> bool:
    """Whether pydicom's ``write_dataset`` corrects and converts ``ds`` before writing it (a
    dataset made in memory, or one whose encoding or character set changed)."""
    return ds.original_encoding != (False, True) or ds.original_character_set != ds._character_set


def _preamble(ds: Dataset) -> bytes:
    """The 128-byte preamble (``ds.preamble`` or zeros) and the ``DICM`` prefix."""
    preamble = getattr(ds, "preamble", None)
    if not preamble:
        return b"\x00" * 128 + b"DICM"
    if not isinstance(preamble, bytes) or len(preamble) != 128:
        raise _Fallback("preamble")
    return preamble + b"DICM"


def _file_meta(ds: Dataset) -> bytes:
    """The file meta group as ``save_as`` completes and writes it: on a copy of
    ``ds.file_meta``, the Media Storage UIDs from the dataset, pydicom's own
    ``validate_file_meta`` and the group length, written first."""
    meta = _meta_copy(getattr(ds, "file_meta", None))
    syntax = meta.get("TransferSyntaxUID", None)
    if not isinstance(syntax, UID) or syntax != ExplicitVRLittleEndian:
        raise _Fallback("transfer syntax")
    # dcmwrite's own statements, on the copy
    meta_class = meta.get("MediaStorageSOPClassUID", None)
    ds_class = ds.get("SOPClassUID", None)
    if meta_class is None or (ds_class and ds_class != meta_class):
        meta.MediaStorageSOPClassUID = ds_class
    meta_instance = meta.get("MediaStorageSOPInstanceUID", None)
    ds_instance = ds.get("SOPInstanceUID", None)
    if meta_instance is None or (ds_instance and ds_instance != meta_instance):
        meta.MediaStorageSOPInstanceUID = ds_instance
    validate_file_meta(meta, enforce_standard=True)
    if "FileMetaInformationGroupLength" not in meta:
        meta.FileMetaInformationGroupLength = 0
    writer = _Writer(meta=True)
    writer.dataset(meta, convert_encodings(default_encoding))
    out = writer.out
    if out[:8] != b"\x02\x00\x00\x00UL\x04\x00":
        raise _Fallback("file meta group length")
    _UL.pack_into(out, 8, len(out) - 12)
    return bytes(out)


#: The file meta elements ``save_as`` may set (on its deep copy of the file meta).
_META_SET = tuple(
    BaseTag(t) for t in (0x00020000, 0x00020001, 0x00020002, 0x00020003, 0x00020012, 0x00020013)
)


def _meta_copy(meta: Any) -> FileMetaDataset:
    """A copy of the file meta that the preparation can change and convert: its own element
    dictionary, and its own copy of each element that may be set (pydicom deep-copies it)."""
    if not isinstance(meta, FileMetaDataset) or not _plain(meta):
        raise _Fallback("file meta")
    copied = copy.copy(meta)
    copied._dict = dict(meta._dict)
    for tag in _META_SET:
        elem = copied._dict.get(tag)
        if type(elem) is DataElement:
            copied._dict[tag] = copy.copy(elem)
    return copied


class _Writer:
    """One encoding: the bytes so far and the datasets being written (nearest first, as
    pydicom's ambiguous VR correction takes them)."""

    __slots__ = ("out", "ancestors", "meta")

    def __init__(self, *, meta: bool = False) -> None:
        self.out = bytearray()
        self.ancestors: list[Dataset] = []
        self.meta = meta  # the file meta group (group 2 only, its group length written)

    def dataset(self, ds: Dataset, parent_encodings: list[str]) -> None:
        """pydicom's ``write_dataset``: the elements in tag order, group lengths left out."""
        if not _plain(ds):
            raise _Fallback("dataset class")
        encodings = _encodings(ds, parent_encodings)
        elements = ds._dict
        self.ancestors.insert(0, ds)
        for tag in sorted(elements, key=int):  # plain ints: BaseTag compares in Python
            if (tag >> 16 != 2) if self.meta else (tag >> 16 < 8):
                raise _Fallback("an element of groups 0 to 7 in the dataset, or not 2 in the meta")
            if tag & 0xFFFF or self.meta:
                stored = elements[tag]
                elem = stored if type(stored) is DataElement else self.raw(ds, tag, stored)
                if elem is not None:
                    self.element(ds, elem, encodings)
        del self.ancestors[0]

    def raw(self, ds: Dataset, tag: int, elem: Any) -> DataElement | None:
        """A raw element: converted where pydicom converts it (returned, to be written), else
        written as it is (None). Raw sequences, ambiguous or unknown VRs, other encodings and
        deferred values are pydicom's."""
        if type(elem) is not RawDataElement or elem.is_implicit_VR or not elem.is_little_endian:
            raise _Fallback("raw element")
        vr = elem.VR
        if vr is None or vr == "SQ" or vr in _AMBIGUOUS or not isinstance(elem.value, bytes):
            raise _Fallback("raw element")
        if elem.length == 0xFFFFFFFF:
            raise _Fallback("raw element of undefined length")
        if _converting(ds):
            converted = ds[tag]  # pydicom's own conversion, as its writer makes it
            if type(converted) is not DataElement or converted.VR in _AMBIGUOUS:
                raise _Fallback("converted raw element")
            if converted.VR == "SQ":
                raise _Fallback("converted raw element")
            return converted
        self.put(tag, vr, elem.value)
        return None

    def element(self, ds: Dataset | None, elem: DataElement, encodings: list[str]) -> None:
        """pydicom's ``write_data_element`` of a (converted) element."""
        vr = elem.VR
        if vr in _AMBIGUOUS:
            elem = self.resolved(ds, elem)
            vr = elem.VR
        if vr == "SQ":
            self.sequence(elem, encodings)
            return
        if elem.is_undefined_length:
            raise _Fallback("undefined length")
        value = elem.value
        if isinstance(value, str) and vr in _STRING_PADDING:  # the usual case, first
            data = _one_string(value, vr, encodings) if value else b""
        elif _is_empty(value):
            data = b""
        elif vr == "PN":
            data = _person_names(elem, encodings)
        else:
            data = _VALUES[vr](value, elem.tag, encodings)
        self.put(elem.tag, vr, data)

    def resolved(self, ds: Dataset | None, elem: DataElement) -> DataElement:
        """An ambiguous VR corrected by pydicom's own rule, with the same ancestors."""
        if ds is None or elem.tag in _LUT_TAGS:
            raise _Fallback("ambiguous VR")
        corrected = correct_ambiguous_vr_element(elem, ds, True, self.ancestors)
        if type(corrected) is not DataElement or corrected.VR in _AMBIGUOUS:
            raise _Fallback("unresolved ambiguous VR")
        return corrected

    def put(self, tag: int, vr: str, data: bytes) -> None:
        """An element's header (explicit VR, little endian) and value."""
        if vr in _LONG_VRS:
            self.out += _LONG.pack(tag >> 16, tag & 0xFFFF, _VR_BYTES[vr], 0, len(data))
        elif len(data) <= 0xFFFF:
            self.out += _SHORT.pack(tag >> 16, tag & 0xFFFF, _VR_BYTES[vr], len(data))
        else:
            raise _Fallback("value too long for its VR")  # pydicom writes it as UN
        self.out += data

    def sequence(self, elem: DataElement, encodings: list[str]) -> None:
        """A sequence: defined length (filled in) or undefined length and its delimiter."""
        out = self.out
        tag, undefined = elem.tag, elem.is_undefined_length
        out += _LONG.pack(tag >> 16, tag & 0xFFFF, b"SQ", 0, 0xFFFFFFFF if undefined else 0)
        start = len(out)
        for item in elem.value or ():
            if not isinstance(item, Dataset):
                raise _Fallback("sequence item")
            self.item(item, encodings)
        if undefined:
            out += _SEQUENCE_END
        else:
            _UL.pack_into(out, start - 4, len(out) - start)

    def item(self, item: Dataset, encodings: list[str]) -> None:
        """pydicom's ``write_sequence_item``: the item's length, or its delimiter."""
        out = self.out
        out += _ITEM
        start = len(out)
        self.dataset(item, encodings)
        if getattr(item, "is_undefined_length_sequence_item", False):
            out += _ITEM_END
        else:
            _UL.pack_into(out, start - 4, len(out) - start)


def _encodings(ds: Dataset, parent: list[str]) -> list[str]:
    """The Python encodings of the text of ``ds``: pydicom's ``convert_encodings`` of its
    Specific Character Set; else its parent's, already converted (converting them again, as
    pydicom does for every element, gives them back unchanged: tested)."""
    elem = ds._dict.get(_CHARACTER_SET)
    if elem is None:
        return parent
    if type(elem) is not DataElement:
        raise _Fallback("raw Specific Character Set")
    return convert_encodings(elem.value or [default_encoding])


def _one_string(value: str, vr: str, encodings: list[str]) -> bytes:
    """One non-empty text value: pydicom's ``write_string`` (padded, then ISO 8859) or, for
    the VRs of the character set, ``write_text`` (encoded, then padded)."""
    padding = _STRING_PADDING[vr]
    if padding:
        if len(value) % 2:
            value += padding
        return value.encode(default_encoding)
    data = _encode_text(value, encodings)
    return data + b" " if len(data) % 2 else data


def _is_empty(value: Any) -> bool:
    """pydicom's ``DataElement.is_empty`` for a value that is not a sequence (VM 0)."""
    if value is None:
        return True
    if isinstance(value, str | bytes | PersonName):
        return not value
    if isinstance(value, BufferedIOBase):
        raise _Fallback("buffered value")
    try:
        iter(value)
    except TypeError:
        return False
    return len(value) == 0


def _is_multi(value: Any) -> bool:
    """pydicom's ``_is_multi_value``."""
    return isinstance(value, MultiValue | list | tuple | np.ndarray)


def _string(value: Any, padding: str = " ") -> bytes:
    """pydicom's ``write_string``: backslash-joined, padded to even length, ISO 8859."""
    if _is_multi(value):
        value = "\\".join(value)
    if not isinstance(value, str):
        raise _Fallback("string value")
    if len(value) % 2:
        value += padding
    return value.encode(default_encoding)


def _uid(value: Any, tag: int, encodings: list[str]) -> bytes:
    return _string(value, "\0")


def _plain_string(value: Any, tag: int, encodings: list[str]) -> bytes:
    return _string(value)


def _format_date_time(value: Any, fmt: str, fraction: str) -> str:
    """pydicom's ``_format_DA`` / ``_format_TM`` / ``_format_DT`` of one date or time object:
    its original string where it has one, else ``strftime`` (with the microseconds where not
    zero, for TM and DT)."""
    if value is None:
        return ""
    if hasattr(value, "original_string"):
        return value.original_string
    if fraction and value.microsecond > 0:
        return value.strftime(fraction)
    return value.strftime(fmt)


def _date_time_writer(fmt: str, fraction: str) -> Callable[[Any, int, list[str]], bytes]:
    """pydicom's ``write_DA`` / ``write_TM`` / ``write_DT``."""

    def write(value: Any, tag: int, encodings: list[str]) -> bytes:
        if isinstance(value, str):
            return _string(value)
        if _is_multi(value):
            text = "\\".join(
                v if isinstance(v, str) else _format_date_time(v, fmt, fraction) for v in value
            )
        else:
            text = _format_date_time(value, fmt, fraction)
        if len(text) % 2:
            text += " "
        return text.encode(default_encoding)

    return write


def _number_string(value: Any, tag: int, encodings: list[str]) -> bytes:
    """pydicom's ``write_number_string`` (DS, IS): the original string where there is one."""
    if _is_multi(value):
        text = "\\".join(
            v.original_string if hasattr(v, "original_string") else str(v) for v in value
        )
    else:
        text = value.original_string if hasattr(value, "original_string") else str(value)
    if len(text) % 2:
        text += " "
    return bytes(text, default_encoding)


def _encode_text(value: str, encodings: list[str]) -> bytes:
    """pydicom's ``encode_string``: its first step (the first encoding, no escapes) done
    directly where that is all it does."""
    if encodings[0] in _PLAIN_ENCODINGS:
        try:
            return value.encode(encodings[0])
        except UnicodeError:
            pass
    return encode_string(value, encodings)


def _text(value: Any, tag: int, encodings: list[str]) -> bytes:
    """pydicom's ``write_text`` (SH, LO, ST, LT, UC, UT) in the dataset's encodings."""
    if _is_multi(value):
        if isinstance(value[0], str):
            data = b"\\".join([_encode_text(v, encodings) for v in value])
        else:
            data = b"\\".join(list(value))
    elif isinstance(value, str):
        data = _encode_text(value, encodings)
    elif isinstance(value, bytes):
        data = value
    else:
        raise _Fallback("text value")
    return data + b" " if len(data) % 2 else data


def _person_names(elem: DataElement, encodings: list[str]) -> bytes:
    """pydicom's ``write_PN``: each name by ``PersonName.encode``."""
    names = [elem.value] if elem.VM == 1 else elem.value
    if not all(isinstance(name, PersonName) for name in names):
        raise _Fallback("person name value")
    data = b"\\".join([name.encode(encodings) for name in names])
    return data + b" " if len(data) % 2 else data


def _numbers(code: str) -> Callable[[Any, int, list[str]], bytes]:
    """pydicom's ``write_numbers`` for one struct code."""
    one = struct.Struct("<" + code)

    def write(value: Any, tag: int, encodings: list[str]) -> bytes:
        if value is None or value == "":
            return b""
        if not hasattr(value, "append"):
            return one.pack(value)
        if code == "h" and tag in _LUT_TAGS:
            raise _Fallback("LUT descriptor")
        return struct.pack(f"<{len(value)}{code}", *value)

    return write


def _other(value: Any, tag: int, encodings: list[str]) -> bytes:
    """OB, OW, OD, OF, OL, OV: the bytes, padded with a zero byte to even length."""
    if not isinstance(value, bytes | bytearray):
        raise _Fallback("bytes value")
    return bytes(value) + b"\x00" if len(value) % 2 else bytes(value)


def _unknown(value: Any, tag: int, encodings: list[str]) -> bytes:
    """UN: the bytes as they are (pydicom does not pad them)."""
    if not isinstance(value, bytes | bytearray):
        raise _Fallback("bytes value")
    return bytes(value)


def _tags(value: Any, tag: int, encodings: list[str]) -> bytes:
    """pydicom's ``write_ATvalue``: one tag, or each of an iterable."""
    try:
        iter(value)
    except TypeError:
        tags = [Tag(value)]
    else:
        tags = [Tag(t) for t in value]
    return b"".join(_AT.pack(t >> 16, t & 0xFFFF) for t in tags)


_VALUES: dict[str, Callable[[Any, int, list[str]], bytes]] = {
    "AE": _plain_string,
    "AS": _plain_string,
    "CS": _plain_string,
    "UR": _plain_string,
    "UI": _uid,
    "DA": _date_time_writer("%Y%m%d", ""),
    "DT": _date_time_writer("%Y%m%d%H%M%S%z", "%Y%m%d%H%M%S.%f%z"),
    "TM": _date_time_writer("%H%M%S", "%H%M%S.%f"),
    "DS": _number_string,
    "IS": _number_string,
    "SH": _text,
    "LO": _text,
    "ST": _text,
    "LT": _text,
    "UC": _text,
    "UT": _text,
    "AT": _tags,
    "OB": _other,
    "OD": _other,
    "OF": _other,
    "OL": _other,
    "OW": _other,
    "OV": _other,
    "UN": _unknown,
    **{vr: _numbers(code) for vr, code in (("FD", "d"), ("FL", "f"), ("SL", "l"))},
    **{vr: _numbers(code) for vr, code in (("SS", "h"), ("SV", "q"), ("UL", "L"))},
    **{vr: _numbers(code) for vr, code in (("US", "H"), ("UV", "Q"))},
}
#: The VRs whose text value is one str: pydicom's padding before ISO 8859 (write_string,
#: DA/DT/TM given as text), or "" for the VRs of the character set (write_text).
_STRING_PADDING = {
    **dict.fromkeys(("AE", "AS", "CS", "UR", "DA", "DT", "TM"), " "),
    "UI": "\0",
    **dict.fromkeys(("SH", "LO", "ST", "LT", "UC", "UT"), ""),
}
_VR_BYTES = {vr: vr.encode("ascii") for vr in [*_VALUES, "PN", "SQ"]}
