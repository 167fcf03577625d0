"""Which inputs a model takes: the one fit check, shared by ``segment``, ``batch`` and the model
chooser.

A bundle's ``configs/inference.json`` ``input`` block states its fit rules:

- ``spatial_dims`` (2 or 3) and ``channels`` (1 grey, 3 RGB);
- ``modalities``: DICOM Modality codes the model was made for (empty: any);
- ``pictures``: whether plain pictures (PNG/JPEG/TIFF, which carry no modality) are accepted
  (default: true when ``modalities`` is empty or the model is 2D). Volumes without a modality
  (NIfTI, NRRD) are judged on the other rules;
- ``max_extent_mm`` / ``min_extent_mm``: bounds on the physical size of the field of view,
  compared orientation-free (the input's extents and the bounds both sorted, largest first), e.g.
  a hippocampus-centred crop model refuses a whole-brain series;
- ``spacing_mm``: ``[min, max]`` bounds on every voxel spacing;
- ``body_parts``: DICOM BodyPartExamined values the model is for (e.g. ``["CHEST"]``); an input
  that names another body part is refused, one that names none is accepted (many exports leave
  it empty), and the choice says so.

This module is torch-free: it works on :class:`InputFacts`, which the batch scan builds from DICOM
headers and the pipeline from a read image's metadata, so that one rule decides everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medxai.errors import ModelError, ModelMismatchError

__all__ = ["InputFacts", "FitRules", "ModelChoice", "facts_from_meta", "choose_model"]

_CHANNEL_WORDS = {1: "greyscale", 3: "RGB colour"}


def _channels_word(n: int) -> str:
    return _CHANNEL_WORDS.get(n, f"{n}-channel")


@dataclass(frozen=True)
class InputFacts:
    """What the fit rules look at in an input.

    Attributes:
        spatial_dims: 2 for a picture or a single slice, 3 for a volume.
        channels: colour channels (1 grey, 3 RGB).
        modality: DICOM Modality ('' for pictures and volumes without one).
        form: the reader's form (``picture``, ``dicom``, ``dicom-series``, ``nifti``, ...).
        shape: spatial shape in voxels, reader axis order.
        spacing: voxel spacing in mm per spatial axis, or None when unknown.
        body_part: DICOM BodyPartExamined, upper case ('' when absent).
    """

    spatial_dims: int
    channels: int
    modality: str = ""
    form: str = ""
    shape: tuple[int, ...] = ()
    spacing: tuple[float, ...] | None = None
    body_part: str = ""

    @property
    def is_picture(self) -> bool:
        return self.form == "picture"

    def describe(self) -> str:
        kind = "volume" if self.spatial_dims == 3 else ("picture" if self.is_picture else "image")
        size = "x".join(str(s) for s in self.shape)
        mod = f"{self.modality} " if self.modality else ""
        words = f"{_channels_word(self.channels)} {mod}{kind}"
        article = "an" if words[0] in "AEFHILMNORSX" or words[0] in "aeiou" else "a"
        return f"{article} {words} of {size}"


def facts_from_meta(
    shape: Sequence[int], meta: Mapping[str, Any], body_part: str = ""
) -> InputFacts:
    """Facts of a read image: ``shape`` is ``(C, *spatial)``; ``meta`` its MetaTensor meta;
    ``body_part`` the source's BodyPartExamined, when it is DICOM."""
    spatial = tuple(int(s) for s in shape[1:])
    dims = 3 if len(spatial) == 3 and spatial[2] > 1 else 2
    if dims == 2:
        spatial = spatial[:2]
    spacing = meta.get("spacing")
    sp = tuple(float(v) for v in list(spacing)[: len(spatial)]) if spacing is not None else None
    geometry = bool(meta.get("has_patient_geometry")) or bool(meta.get("pixel_spacing_source"))
    return InputFacts(
        spatial_dims=dims,
        channels=int(shape[0]),
        modality=str(meta.get("modality") or "").upper(),
        form=str(meta.get("medxai_form") or ""),
        shape=spatial,
        spacing=sp if (geometry or dims == 3) else None,
        body_part=str(body_part or "").strip().upper(),
    )


def _floats(value: Any, key: str, n: int | None = None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ModelError(f"input.{key} must be a list of numbers, got {value!r}") from None
    if n is not None and len(out) != n:
        raise ModelError(f"input.{key} must have {n} numbers, got {value!r}")
    return out


@dataclass(frozen=True)
class FitRules:
    """A model's fit rules (see the module docstring)."""

    spatial_dims: int
    channels: int
    modalities: tuple[str, ...] = ()
    pictures: bool = True
    max_extent_mm: tuple[float, ...] | None = None
    min_extent_mm: tuple[float, ...] | None = None
    spacing_mm: tuple[float, ...] | None = None
    body_parts: tuple[str, ...] = ()
    note: str = field(default="", compare=False)

    @classmethod
    def from_input_config(
        cls, block: Mapping[str, Any], spatial_dims: int, channels: int
    ) -> FitRules:
        """Parse a bundle's ``input`` block (dims and channels default to the network's)."""
        mods = tuple(str(m).upper() for m in (block.get("modalities") or []))
        dims = int(block.get("spatial_dims", spatial_dims))
        pictures = block.get("pictures")
        if pictures is None:
            pictures = not mods or dims == 2
        return cls(
            spatial_dims=dims,
            channels=int(block.get("channels", channels)),
            modalities=mods,
            pictures=bool(pictures),
            max_extent_mm=_floats(block.get("max_extent_mm"), "max_extent_mm", dims),
            min_extent_mm=_floats(block.get("min_extent_mm"), "min_extent_mm", dims),
            spacing_mm=_floats(block.get("spacing_mm"), "spacing_mm", 2),
            body_parts=tuple(str(b).upper() for b in (block.get("body_parts") or [])),
            note=str(block.get("fit_note", "")),
        )

    @classmethod
    def from_bundle_config(cls, config: Mapping[str, Any]) -> FitRules:
        """The rules of a medxai bundle's ``configs/inference.json`` (either form, see
        :mod:`medxai.models.bundle_form`; dims and channels default to its ``network_def``)."""
        from medxai.models.bundle_form import medxai_view

        config = medxai_view(config)
        net = config.get("network_def") or {}
        return cls.from_input_config(
            config.get("input") or {},
            int(net.get("spatial_dims", 2)),
            int(net.get("in_channels", 1)),
        )

    def problems(self, facts: InputFacts) -> list[str]:
        """Why ``facts`` do not fit these rules (empty: they fit), each a short phrase."""
        out: list[str] = []
        if self.spatial_dims == 2 and facts.spatial_dims != 2:
            out.append("it segments 2D images, this is a volume")
        elif self.spatial_dims == 3 and facts.spatial_dims != 3:
            out.append("it segments 3D volumes, this is a 2D image")
        if facts.channels != self.channels:
            out.append(
                f"it takes {_channels_word(self.channels)} input, this has "
                f"{facts.channels} channel(s)"
            )
        if facts.is_picture:
            if not self.pictures:
                out.append(
                    f"it is for DICOM {', '.join(self.modalities) or 'images'} and "
                    f"volumes, not pictures"
                )
        elif self.modalities and facts.modality and facts.modality not in self.modalities:
            out.append(f"it is for {', '.join(self.modalities)}, this is {facts.modality}")
        if self.body_parts and facts.body_part and facts.body_part not in self.body_parts:
            out.append(
                f"it is for {', '.join(self.body_parts)} images, this one's "
                f"BodyPartExamined is {facts.body_part}"
            )
        if not out and facts.spacing is not None and len(facts.spacing) == len(facts.shape):
            extent = [n * s for n, s in zip(facts.shape, facts.spacing)]
            size = "x".join(f"{e:.0f}" for e in extent)
            ext_sorted = sorted(extent, reverse=True)
            if self.max_extent_mm and any(
                e > m * 1.0001 for e, m in zip(ext_sorted, sorted(self.max_extent_mm, reverse=True))
            ):
                lim = "x".join(f"{m:.0f}" for m in self.max_extent_mm)
                out.append(
                    f"it expects a field of view of at most {lim} mm"
                    f"{' (' + self.note + ')' if self.note else ''}, this is {size} mm"
                )
            if self.min_extent_mm and any(
                e < m * 0.9999 for e, m in zip(ext_sorted, sorted(self.min_extent_mm, reverse=True))
            ):
                lim = "x".join(f"{m:.0f}" for m in self.min_extent_mm)
                out.append(f"it expects a field of view of at least {lim} mm, this is {size} mm")
            if self.spacing_mm:
                lo, hi = self.spacing_mm
                if any(not lo <= s <= hi for s in facts.spacing):
                    sp = "x".join(f"{s:g}" for s in facts.spacing)
                    out.append(
                        f"it expects voxel spacing between {lo:g} and {hi:g} mm, this is {sp} mm"
                    )
        return out

    def check(self, facts: InputFacts, model: str, source: str | None = None) -> None:
        """Raise :class:`ModelMismatchError` naming every problem when ``facts`` do not fit."""
        probs = self.problems(facts)
        if probs:
            raise ModelMismatchError(
                f"model {model!r} does not take this input: {'; '.join(probs)}",
                path=source,
                hint="choose a model made for this kind of image with --model "
                "(see `medxai models`), or leave --model out to pick one by the input",
            )


@dataclass(frozen=True)
class ModelChoice:
    """The model picked for an input, why, and why each other candidate refused."""

    name: str
    reason: str
    refused: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.name, "reason": self.reason, "refused": dict(self.refused)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelChoice:
        """The inverse of :meth:`to_dict` (choices travel to batch workers as dicts)."""
        return cls(str(d["chosen"]), str(d.get("reason", "")), dict(d.get("refused") or {}))


def choose_model(
    facts: InputFacts, candidates: Sequence[tuple[str, FitRules]], source: str | None = None
) -> ModelChoice:
    """The first candidate (in registry order) whose rules accept ``facts``.

    Raises:
        ModelMismatchError: none fits; the message lists every candidate and why it refused.
    """
    refused: dict[str, str] = {}
    for name, rules in candidates:
        probs = rules.problems(facts)
        if not probs:
            what = f" for {', '.join(rules.modalities)}" if rules.modalities else ""
            reason = (
                f"{facts.describe()} fits {name} (a {rules.spatial_dims}D "
                f"{_channels_word(rules.channels)} model{what})"
            )
            if rules.body_parts and not facts.body_part:
                reason += (
                    f"; the input names no body part, the model is for "
                    f"{', '.join(rules.body_parts)}"
                )
            return ModelChoice(name, reason, refused)
        refused[name] = "; ".join(probs)
    lines = "; ".join(f"{n}: {r}" for n, r in refused.items())
    raise ModelMismatchError(
        f"no bundled model takes {facts.describe()} ({lines})",
        path=source,
        hint="pass --model with a bundle made for this kind of image (a MONAI bundle folder "
        "works), or see `medxai models`",
    )
