"""``medxai info``: what medxai sees in a file or folder, as a plain dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medxai.io import dicom as dcm
from medxai.io.dicom.derived import describe_derived, what_to_give_instead
from medxai.io.readers import detect_form, list_volumes, load_image

__all__ = ["describe"]


def _series_summary(key: dcm.SeriesKey, items: list[tuple[Path, Any]]) -> dict[str, Any]:
    ds = items[0][1]
    return {
        "series_instance_uid": key.series_uid,
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
        "modality": str(ds.get("Modality", "")),
        "series_description": str(ds.get("SeriesDescription", "")).strip(),
        "sop_class_uid": str(ds.get("SOPClassUID", "")),
        "files": len(items),
        "rows": key.rows,
        "columns": key.columns,
        "example": str(items[0][0]),
    }


def describe(path: str | Path) -> dict[str, Any]:
    """Summarise ``path``: form, modality, SOP class, shape, spacing, orientation, UIDs.

    A folder (or DICOMDIR) holding several series is described series by series (without
    reading pixels) instead of failing. A derived object (SEG, RTSTRUCT, Parametric Map, SR, RT
    dose/plan) is described from its header (``form == "dicom-derived"``, key ``derived``: see
    :func:`medxai.io.dicom.derived.describe_derived`). A series or enhanced object holding
    several volumes (echoes, b-values, ...) gets key ``volumes`` (index, label, the attributes
    that tell it apart, slices: :func:`medxai.io.readers.list_volumes`) and is described by its
    first volume. Everything else is read with :func:`load_image`, so an unreadable input raises
    the same :class:`~medxai.errors.MedxaiError` it would there.
    """
    path = Path(path)
    form = detect_form(path)
    if form in ("dicom-folder", "dicomdir"):
        files = None
        if form == "dicomdir":
            ddir = (
                path
                if path.is_file()
                else next(p for p in (path / "DICOMDIR", path / "dicomdir") if p.is_file())
            )
            files = dcm.dicomdir_files(ddir)
        scan = dcm.scan_folder(path if path.is_dir() else path.parent, files)
        groups = dcm.group_series(scan.datasets)
        if len(groups) != 1:
            return {
                "path": str(path),
                "form": form,
                "series": [_series_summary(k, v) for k, v in groups.items()],
                "skipped_files": len(scan.skipped),
                "note": f"{len(groups)} series: `medxai segment` takes one series folder; "
                "`medxai batch` takes the whole folder",
            }
    if form == "dicom":
        ds = dcm.read_header(path)
        derived = describe_derived(ds)
        if derived is not None:
            return {
                "path": str(path),
                "form": "dicom-derived",
                "study_instance_uid": str(ds.get("StudyInstanceUID", "") or ""),
                "series_instance_uid": str(ds.get("SeriesInstanceUID", "") or ""),
                "sop_class_uid": str(ds.get("SOPClassUID", "") or ""),
                "derived": derived,
                "note": what_to_give_instead(ds),
            }
    volumes = list_volumes(path) if form.startswith("dicom") else []
    loaded = load_image(path, volume=1 if len(volumes) > 1 else None)
    img = loaded.image
    meta = img.meta
    out = {
        "path": str(path),
        "form": meta["medxai_form"],
        "modality": meta["modality"],
        "sop_class_uid": meta["sop_class_uid"],
        "photometric_interpretation": meta["photometric_interpretation"],
        "channels": int(img.shape[0]),
        "shape": [int(s) for s in img.shape[1:]],
        "dtype": str(img.dtype).replace("torch.", ""),
        "spacing": meta["spacing"],
        "orientation": meta["axis_codes"],
        "has_patient_geometry": bool(meta["has_patient_geometry"]),
        "affine": [[round(float(v), 6) for v in row] for row in img.affine.tolist()],
        "study_instance_uid": meta["study_instance_uid"],
        "series_instance_uid": meta["series_instance_uid"],
        "frame_of_reference_uid": meta["frame_of_reference_uid"],
        "series_description": meta["series_description"],
        "files": meta["num_files"],
        "warnings": list(meta["geometry_warnings"]),
        "value_range": [float(img.min()), float(img.max())],
        "intensity": meta.get("intensity", "modality"),
    }
    if len(volumes) > 1:
        out["volumes"] = [v.to_dict() for v in volumes]
        out["note"] = (
            f"{len(volumes)} volumes (described: volume 1, {volumes[0].label}); `medxai segment` "
            "does each into <name>_<label>, or the one chosen with --volume N"
        )
    if "display" in meta:
        out["display"] = meta["display"]
    if "pixel_spacing_source" in meta:
        out["pixel_spacing_source"] = meta["pixel_spacing_source"]
    return out
