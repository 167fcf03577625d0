"""Several volumes in one series or one enhanced multi-frame object: which attribute tells them
apart, and which slices (or frames) belong to which volume.

A series (or an enhanced object) holds several volumes when slices share a position: echoes,
magnitude and phase, temporal positions, b-values and diffusion directions, acquisitions, cardiac
phases. They are split as dcm2niix splits them, by the first attributes, in this order, that give
every part unique slice positions:

==============  ================================================================  =========
class           attributes (single-frame files; enhanced per-frame macros)        label
==============  ================================================================  =========
echo            EchoNumbers, EchoTime; MR Echo: EffectiveEchoTime                 ``echo2``
image type      ImageType; MR Image Frame Type: ComplexImageComponent, FrameType  ``ph``
temporal        TemporalPositionIdentifier; Frame Content: TemporalPositionIndex  ``t3``
b-value         DiffusionBValue (and the Siemens, GE, Philips private b-value)    ``b1000``
direction       DiffusionGradientOrientation (and the Siemens private one)        ``dir4``
acquisition     AcquisitionNumber                                                 ``acq2``
trigger         TriggerTime; Cardiac Synchronization: NominalCardiacTriggerDelay  ``trig2``
stack           Frame Content: StackID                                            ``stack2``
==============  ================================================================  =========

An attribute is used only when splitting by it leaves at most as many parts as the most-shared
slice position has slices (so a trigger time that differs per slice never cuts one volume into
slices). dcm2niix writes echoes and image types as separate files and temporal positions and
diffusion volumes as the 4th dimension of one file; medxai segments 3D volumes, so each of those
is a volume of its own here.

Everything here reads headers only; the batch scanner and the reader share it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

__all__ = ["SPLIT_CLASSES", "Volume", "split_volumes", "volume_attributes"]

#: Split classes in the order they are tried, each with its attributes (the first that varies
#: among the slices is used) and the label prefix.
SPLIT_CLASSES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("echo", ("EchoNumbers", "EffectiveEchoTime", "EchoTime"), "echo"),
    ("image_type", ("ComplexImageComponent", "FrameType", "ImageType"), "type"),
    ("temporal", ("TemporalPositionIndex", "TemporalPositionIdentifier"), "t"),
    ("b_value", ("DiffusionBValue",), "b"),
    ("direction", ("DiffusionGradientOrientation",), "dir"),
    ("acquisition", ("AcquisitionNumber",), "acq"),
    ("trigger", ("TriggerTime", "NominalCardiacTriggerDelayTime"), "trig"),
    ("stack", ("StackID",), "stack"),
)

# private b-value / gradient direction elements: (group, creator, element offset)
_PRIVATE_B = (
    (0x0019, "SIEMENS MR HEADER", 0x0C),
    (0x0043, "GEMS_PARM_01", 0x39),
    (0x2001, "Philips Imaging DD 001", 0x03),
)
_PRIVATE_DIR = ((0x0019, "SIEMENS MR HEADER", 0x0E),)
_PHASE_WORDS = {"P": "ph", "PHASE": "ph", "M": "mag", "MAGNITUDE": "mag", "R": "real"}
_PHASE_WORDS.update({"REAL": "real", "I": "imag", "IMAGINARY": "imag"})


def _text(value: Any) -> str:
    """A header value as a short, stable string: numbers as ``%g``, vectors joined by ``\\``."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(_text(v) for v in value)
    try:
        return f"{round(float(value), 4):g}"
    except (TypeError, ValueError):
        return str(value).strip()


def _private(ds: Dataset, where: tuple[tuple[int, str, int], ...]) -> Any:
    for group, creator, offset in where:
        try:
            elem = ds.private_block(group, creator)[offset]
        except KeyError:
            continue
        value = elem.value
        if group == 0x0043 and value:  # GE: b-value (+ 1e9 flags) is the first of four
            try:
                return int(float(value[0] if not isinstance(value, (str, bytes)) else value)) % (
                    10**9
                )
            except (TypeError, ValueError, IndexError):
                continue
        return value
    return None


def volume_attributes(ds: Dataset, frame: int | None = None) -> dict[str, str]:
    """The attributes of :data:`SPLIT_CLASSES` of a single-frame data set (``frame=None``) or of
    0-based ``frame`` of an enhanced multi-frame object, as strings (empty when absent)."""
    if frame is None:
        out = {
            kw: _text(ds.get(kw))
            for kw in (
                "EchoNumbers",
                "EchoTime",
                "ImageType",
                "TemporalPositionIdentifier",
                "AcquisitionNumber",
                "TriggerTime",
            )
        }
        out["DiffusionBValue"] = _text(
            ds.get("DiffusionBValue") if "DiffusionBValue" in ds else _private(ds, _PRIVATE_B)
        )
        out["DiffusionGradientOrientation"] = _text(
            ds.get("DiffusionGradientOrientation")
            if "DiffusionGradientOrientation" in ds
            else _private(ds, _PRIVATE_DIR)
        )
        return out
    from medxai.io.dicom import frame_item

    def get(macro: str, kw: str) -> str:
        item = frame_item(ds, frame, macro)
        return _text(item.get(kw)) if item is not None else ""

    diff = frame_item(ds, frame, "MRDiffusionSequence")
    direction = ""
    if diff is not None and diff.get("DiffusionGradientDirectionSequence"):
        direction = _text(
            diff.DiffusionGradientDirectionSequence[0].get("DiffusionGradientOrientation")
        )
    return {
        "EffectiveEchoTime": get("MREchoSequence", "EffectiveEchoTime"),
        "ComplexImageComponent": get("MRImageFrameTypeSequence", "ComplexImageComponent"),
        "FrameType": get("MRImageFrameTypeSequence", "FrameType"),
        "TemporalPositionIndex": get("FrameContentSequence", "TemporalPositionIndex"),
        "StackID": get("FrameContentSequence", "StackID"),
        "DiffusionBValue": _text(diff.get("DiffusionBValue")) if diff is not None else "",
        "DiffusionGradientOrientation": direction,
        "NominalCardiacTriggerDelayTime": get(
            "CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime"
        ),
    }


@dataclass(frozen=True)
class Volume:
    """One volume of a multi-volume series or object.

    Attributes:
        index: 1-based, in the order of the distinguishing values (echo 1 before echo 2).
        label: what tells it apart, for file names: ``echo2``, ``b1000_dir3``, ``ph`` (empty
            when the input holds one volume).
        key: the distinguishing attributes and their values, e.g. ``{"EchoNumbers": "2"}``.
        members: indices of its slices (files or frames) in the sequence given to
            :func:`split_volumes`.
    """

    index: int
    label: str
    key: dict[str, str] = field(default_factory=dict)
    members: tuple[int, ...] = ()

    def to_dict(self, count: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "label": self.label,
            "key": dict(self.key),
            "slices": len(self.members),
        }
        if count is not None:
            out["count"] = count
        return out


def _pos_key(position: Sequence[float] | None, i: int) -> tuple[Any, ...]:
    if position is None:
        return ("none", i)  # no position: never shares one
    return tuple(round(float(v), 3) for v in position)


def _unique_positions(members: Sequence[int], keys: Sequence[tuple[Any, ...]]) -> bool:
    return len({keys[i] for i in members}) == len(members)


def _partition(
    n: int, attributes: Sequence[Mapping[str, str]], keywords: Sequence[str]
) -> dict[tuple[str, ...], list[int]]:
    parts: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i in range(n):
        parts[tuple(str(attributes[i].get(kw, "") or "") for kw in keywords)].append(i)
    return parts


def _sort_value(v: str) -> tuple[int, float, str]:
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


def _ordered_values(cls: str, values: Sequence[str]) -> list[str]:
    """The distinct values of one split class in volume order: numbers ascending (echo time,
    b-value, temporal index), directions and other text in order of first appearance."""
    distinct = list(dict.fromkeys(values))
    if cls == "direction" or any(_sort_value(v)[0] for v in distinct if v):
        return [v for v in distinct if v == ""] + [v for v in distinct if v != ""]
    return sorted(distinct, key=_sort_value)


def _class_labels(cls: str, kw: str, prefix: str, ranked: Sequence[str]) -> dict[str, str]:
    """value -> label part for one split class (an empty value gets no part)."""
    present = [v for v in ranked if v != ""]
    out = {v: "" for v in ranked if v == ""}
    if cls == "image_type":
        words = {}
        for v in present:
            tokens = [t.upper() for t in re.split(r"[\\_ ]", v) if t]
            found = {_PHASE_WORDS[t] for t in tokens if t in _PHASE_WORDS}
            words[v] = found.pop() if len(found) == 1 else ""
        if all(words.values()) and len(set(words.values())) == len(present):
            return {**out, **words}
    if cls in ("temporal", "b_value", "acquisition", "stack") or kw == "EchoNumbers":
        safe = {v: re.sub(r"[^A-Za-z0-9.]+", "", v) for v in present}
        if all(safe.values()) and len(set(safe.values())) == len(present):
            return {**out, **{v: f"{prefix}{s}" for v, s in safe.items()}}
    return {**out, **{v: f"{prefix}{n + 1}" for n, v in enumerate(present)}}


def split_volumes(
    positions: Sequence[Sequence[float] | None], attributes: Sequence[Mapping[str, str]]
) -> list[Volume]:
    """Split slices (files or frames) into volumes (see the module docstring).

    Args:
        positions: ImagePositionPatient of each slice (``None`` when it has none).
        attributes: :func:`volume_attributes` of each slice, in the same order.

    Returns:
        One :class:`Volume` (label ``""``, all slices) when no two slices share a position or
        nothing tells the sharing slices apart (the caller reports the duplicates); otherwise
        the volumes in the order of their distinguishing values.
    """
    n = len(positions)
    keys = [_pos_key(p, i) for i, p in enumerate(positions)]
    everything = Volume(1, "", {}, tuple(range(n)))
    if _unique_positions(range(n), keys):
        return [everything]
    per_position: dict[tuple[Any, ...], int] = defaultdict(int)
    for k in keys:
        per_position[k] += 1
    most = max(per_position.values())
    chosen: list[tuple[str, str, str]] = []  # (class, keyword, prefix)
    for cls, keywords, prefix in SPLIT_CLASSES:
        kw = next(
            (k for k in keywords if len({str(a.get(k, "") or "") for a in attributes}) > 1), None
        )
        if kw is None:
            continue
        trial = chosen + [(cls, kw, prefix)]
        parts = _partition(n, attributes, [t[1] for t in trial])
        if len(parts) > most:
            continue  # it varies within a volume (per slice), it does not tell volumes apart
        chosen = trial
        if all(_unique_positions(m, keys) for m in parts.values()):
            break
    else:
        return [everything]
    parts = _partition(n, attributes, [t[1] for t in chosen])
    order = [_ordered_values(cls, [k[c] for k in parts]) for c, (cls, _kw, _p) in enumerate(chosen)]
    labels = [
        _class_labels(cls, kw, prefix, order[c]) for c, (cls, kw, prefix) in enumerate(chosen)
    ]
    ordered = sorted(parts, key=lambda k: tuple(order[c].index(v) for c, v in enumerate(k)))
    return [
        Volume(
            index=i + 1,
            label="_".join(part for c, v in enumerate(k) if (part := labels[c][v])),
            key={chosen[c][1]: v for c, v in enumerate(k)},
            members=tuple(parts[k]),
        )
        for i, k in enumerate(ordered)
    ]
