"""One reader for every input form: pictures, DICOM (file, multi-frame, series folder,
DICOMDIR), NIfTI, NRRD/MHA/MHD.

The form is detected from the file's content (magic bytes), not its name. Everything comes back
as a MONAI ``MetaTensor`` in the conventions of :mod:`medxai.io.types`: channel-first
``(C, I, J[, K])``, RAS affine, plain-value meta, plus the DICOM headers for writing derived
objects (:class:`~medxai.io.types.DicomSource`).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from medxai.errors import (
    CorruptInputError,
    InputError,
    MedxaiError,
    SeriesError,
    UnsupportedInputError,
)
from medxai.io import dicom as dcm
from medxai.io.detect import foreign_file_error, sniff_file
from medxai.io.dicom.derived import describe_derived, what_to_give_instead
from medxai.io.dicom.display import (
    display_image,
    is_display_candidate,
    radiograph_spacing,
)
from medxai.io.dicom.volumes import Volume, split_volumes, volume_attributes
from medxai.io.geometry import axis_codes, lps_to_ras_affine, spacing_from_affine
from medxai.io.types import DicomSource, LoadedImage

__all__ = [
    "FORMS",
    "detect_form",
    "list_volumes",
    "load_dicom_files",
    "load_image",
    "read_image",
]

#: Forms :func:`detect_form` can report.
FORMS = ("picture", "dicom", "dicomdir", "dicom-folder", "nifti", "itk")


def detect_form(path: str | Path) -> str:
    """Say what ``path`` is, from its content: one of :data:`FORMS`.

    Raises:
        InputError: the path does not exist or is empty.
        UnsupportedInputError: the content is of no form medxai reads.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("does not exist", path=path, hint="check the path")
    if path.is_dir():
        if any((path / n).is_file() for n in ("DICOMDIR", "dicomdir")):
            return "dicomdir"
        return "dicom-folder"
    form = sniff_file(path)  # the one content check (medxai.io.detect, torch-free)
    if form is not None:
        return form
    raise foreign_file_error(path)  # what it is, where its first bytes tell


def read_image(path: str | Path) -> MetaTensor:
    """Read any supported image as a channel-first ``MetaTensor`` with a RAS affine.

    See :mod:`medxai.io.types` for axis order and meta keys. For the DICOM headers too, use
    :func:`load_image`.
    """
    return load_image(path).image


def load_image(
    path: str | Path, *, display: bool | None = None, volume: int | None = None
) -> LoadedImage:
    """Read ``path`` (file or folder) into a :class:`~medxai.io.types.LoadedImage`.

    Args:
        path: a picture, DICOM file, series folder, DICOMDIR, NIfTI, NRRD/MHA file.
        display: for greyscale DICOM, whether the pixels are read as displayed (Modality LUT,
            VOI LUT or window, MONOCHROME1 inverted, 8-bit ``0..255``: see
            :func:`medxai.io.dicom.display.display_image`) instead of as modality values
            (Hounsfield units, ...). ``None`` (default): displayed for projection radiographs
            (DX, CR, MG, IO, PX, RG; one frame, greyscale), modality values otherwise. The meta key
            ``intensity`` says which (``"display"`` or ``"modality"``).
        volume: for a DICOM series or enhanced multi-frame object holding several volumes
            (echoes, b-values, ...: :func:`list_volumes`), the 1-based index of the one to read;
            meta ``volume`` then says which it is (index, count, label, key). Without it such an
            input is refused with the list of its volumes. Ignored for one-volume inputs.

    Raises:
        MedxaiError: (a subclass of it) for every input that cannot be read, with the reason.
    """
    path = Path(path)
    form = detect_form(path)
    try:
        if form == "picture":
            return _load_picture(path)
        if form == "nifti":
            return _load_nifti(path)
        if form == "itk":
            return _load_itk(path)
        if form == "dicom":
            return _load_dicom_file(path, display, volume)
        if form == "dicomdir":
            ddir = (
                path
                if path.is_file()
                else next(p for p in (path / "DICOMDIR", path / "dicomdir") if p.is_file())
            )
            files = dcm.dicomdir_files(ddir)
            if not files:
                raise SeriesError("DICOMDIR references no existing files", path=ddir)
            return _load_dicom_folder(
                path if path.is_dir() else path.parent,
                files,
                "dicomdir",
                shown=path,
                display=display,
                volume=volume,
            )
        return _load_dicom_folder(path, None, "dicom-series", display=display, volume=volume)
    except MedxaiError:
        raise
    except MemoryError as exc:
        raise InputError("is too large to read into memory", path=path) from exc
    except (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        OSError,
        EOFError,
        RuntimeError,
        struct.error,
        NotImplementedError,
        ZeroDivisionError,
    ) as exc:
        raise CorruptInputError(
            f"could not be read as {form} ({type(exc).__name__}: {exc})",
            path=path,
            hint="the file may be damaged or use a variant medxai does not handle",
        ) from exc


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _make(
    array: np.ndarray,
    affine_ras: np.ndarray,
    path: Path,
    form: str,
    meta: dict[str, Any],
    dicom: DicomSource | None = None,
) -> LoadedImage:
    """Wrap a channel-first array and its RAS affine into a LoadedImage with full meta."""
    # no copy for C order: DICOM arrays arrive transposed (a strided view), which torch and
    # MONAI handle; copying 100s of MB into C order here costs more than the decode
    if any(st < 0 for st in array.strides):
        array = np.ascontiguousarray(array)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype == np.uint16:
        array = array.astype(np.int32)  # torch has limited uint16 support
    elif array.dtype == np.uint32:
        array = array.astype(np.int64)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    spatial = tuple(int(s) for s in array.shape[1:])
    nd = len(spatial)
    affine = np.asarray(affine_ras, dtype=np.float64)
    full = {
        "filename_or_obj": str(path),
        "medxai_form": form,
        "modality": "",
        "photometric_interpretation": "",
        "original_shape": list(spatial),
        "spatial_shape": np.asarray(spatial),
        "original_channel_dim": 0,
        "space": "RAS",
        "spacing": [round(v, 6) for v in spacing_from_affine(affine, min(nd, 3))],
        "axis_codes": axis_codes(affine),
        "has_patient_geometry": False,
        "sop_class_uid": "",
        "study_instance_uid": "",
        "series_instance_uid": "",
        "frame_of_reference_uid": "",
        "series_description": "",
        "num_files": 1,
        "geometry_warnings": [],
        "intensity": "modality",
    }
    full.update(meta)
    tensor = MetaTensor(torch.from_numpy(array), affine=torch.as_tensor(affine), meta=full)
    tensor.meta["original_affine"] = affine.copy()
    return LoadedImage(image=tensor, dicom=dicom, path=path)


def _load_picture(path: Path) -> LoadedImage:
    from medxai.io.photo import read_photo

    arr, affine, info = read_photo(path)
    pi = "RGB" if arr.shape[0] == 3 else "MONOCHROME2"
    return _make(
        arr,
        affine,
        path,
        "picture",
        {
            "photometric_interpretation": pi,
            "picture_format": info["format"],
            "intensity": "display",
        },
    )


def _load_nifti(path: Path) -> LoadedImage:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        # detect_form found a NIfTI header: nibabel gives a NIfTI-1/2 image or pair
        assert isinstance(img, nib.Nifti1Pair)
        arr = np.asanyarray(img.dataobj)
    except (nib.filebasedimages.ImageFileError, EOFError, OSError, ValueError) as exc:
        raise CorruptInputError(
            f"NIfTI cannot be read ({exc})",
            path=path,
            hint="the file may be truncated; export it again",
        ) from exc
    if arr.dtype.names:  # RGB24 / RGBA32 structured dtype
        arr = np.stack([arr[n] for n in arr.dtype.names[:3]], axis=0)
    else:
        while arr.ndim > 4 and arr.shape[3] == 1:  # (I, J, K, 1, C) vector images
            arr = arr.reshape(arr.shape[:3] + arr.shape[4:])
        if arr.ndim == 2 or arr.ndim == 3:
            arr = arr[None]
        elif arr.ndim == 4:
            arr = np.moveaxis(arr, -1, 0)
        else:
            raise UnsupportedInputError(
                f"NIfTI with {arr.ndim} dimensions {arr.shape}",
                path=path,
                hint="medxai reads 2D, 3D and 4D (channels) NIfTI",
            )
    affine = np.asarray(img.affine, dtype=np.float64)
    codes = img.header.get_sform(coded=True)[1], img.header.get_qform(coded=True)[1]
    return _make(
        arr,
        affine,
        path,
        "nifti",
        {
            "has_patient_geometry": bool(codes[0] or codes[1]),
            "photometric_interpretation": "RGB"
            if arr.shape[0] == 3 and arr.dtype == np.uint8
            else "MONOCHROME2",
        },
    )


def _load_itk(path: Path) -> LoadedImage:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise CorruptInputError(
            f"cannot be read by ITK ({str(exc).strip().splitlines()[-1]})", path=path
        ) from exc
    arr = sitk.GetArrayFromImage(img)  # (K, J, I[, C]) or (J, I[, C])
    dim = img.GetDimension()
    ncomp = img.GetNumberOfComponentsPerPixel()
    if ncomp == 1:
        arr = arr[..., None]
    arr = np.moveaxis(arr, -1, 0)  # (C, [K,] J, I)
    arr = np.ascontiguousarray(arr.transpose((0,) + tuple(range(arr.ndim - 1, 0, -1))))
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    lps = np.eye(4)
    lps[:dim, :dim] = direction * np.asarray(img.GetSpacing())[None, :]
    lps[:dim, 3] = img.GetOrigin()
    return _make(
        arr,
        lps_to_ras_affine(lps),
        path,
        "itk",
        {
            "has_patient_geometry": dim == 3,
            "photometric_interpretation": "RGB" if ncomp == 3 else "MONOCHROME2",
        },
    )


# ---------------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------------


def _dicom_meta(
    ds: Any, form: str, n_files: int, has_geometry: bool, warnings: list[str]
) -> dict[str, Any]:
    return {
        "modality": str(ds.get("Modality", "") or ""),
        "photometric_interpretation": str(ds.get("PhotometricInterpretation", "") or ""),
        "sop_class_uid": str(ds.get("SOPClassUID", "") or ""),
        "study_instance_uid": str(ds.get("StudyInstanceUID", "") or ""),
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "") or ""),
        "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "") or ""),
        "series_description": str(ds.get("SeriesDescription", "") or ""),
        "num_files": n_files,
        "has_patient_geometry": has_geometry,
        "geometry_warnings": list(warnings),
    }


def _repair_identity(datasets: list[Any], warnings: list[str]) -> None:
    """Fill identifying UIDs that anonymisers blanked, so derived objects can reference them.

    SOP Class/Instance UIDs come from the file meta (the same values by definition). A missing
    Study or Series Instance UID gets a deterministic UID derived from the instances' UIDs (the
    same on every run), and a warning says so.
    """
    from pydicom.uid import generate_uid

    for ds in datasets:
        meta = getattr(ds, "file_meta", None)
        if not str(ds.get("SOPClassUID", "") or "") and meta is not None:
            ds.SOPClassUID = meta.get("MediaStorageSOPClassUID", "")
        if not str(ds.get("SOPInstanceUID", "") or ""):
            uid = str(meta.get("MediaStorageSOPInstanceUID", "") or "") if meta is not None else ""
            ds.SOPInstanceUID = uid or generate_uid(
                entropy_srcs=[str(ds.get("ImagePositionPatient")), str(ds.get("InstanceNumber"))]
            )
    instances = sorted(str(ds.SOPInstanceUID) for ds in datasets)
    for kw, what in (("StudyInstanceUID", "study"), ("SeriesInstanceUID", "series")):
        if not all(str(ds.get(kw, "") or "") for ds in datasets):
            uid = generate_uid(entropy_srcs=[what] + instances)
            for ds in datasets:
                if not str(ds.get(kw, "") or ""):
                    setattr(ds, kw, uid)
            warnings.append(
                f"the source has no {kw} (anonymised?); medxai assigned {uid} so "
                "that derived objects can be written"
            )


def _strip_pixels(ds: Any) -> Any:
    for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if kw in ds:
            delattr(ds, kw)
    return ds


def _frames_to_array(frames: np.ndarray, volume: bool) -> np.ndarray:
    """``(F, rows, cols, S)`` -> ``(S, cols, rows, F)`` (or ``(S, cols, rows)`` for 2D)."""
    arr = frames.transpose(3, 2, 1, 0)
    return arr if volume else arr[..., 0]


def _plane_geometry(ds: Any, nframes: int) -> tuple[list[Any], list[Any], Any, Any] | None:
    """Per-frame positions, orientations, pixel spacing and thickness, if the object has them."""
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        positions, orients = [], []
        spacing = thick = None
        for f in range(nframes):
            pp = dcm.frame_item(ds, f, "PlanePositionSequence")
            po = dcm.frame_item(ds, f, "PlaneOrientationSequence")
            pm = dcm.frame_item(ds, f, "PixelMeasuresSequence")
            if pp is None or po is None or "ImagePositionPatient" not in pp:
                return None
            positions.append([float(v) for v in pp.ImagePositionPatient])
            orients.append([float(v) for v in po.ImageOrientationPatient])
            if pm is not None and spacing is None:
                spacing = pm.get("PixelSpacing")
                thick = pm.get("SliceThickness")
        return positions, orients, spacing, thick
    if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
        pos0 = [float(v) for v in ds.ImagePositionPatient]
        iop = [float(v) for v in ds.ImageOrientationPatient]
        if nframes == 1:
            return [pos0], [iop], ds.get("PixelSpacing"), ds.get("SliceThickness")
        step = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
        if step is None:
            return None
        normal = dcm.slice_normal(iop)
        positions = [list(np.asarray(pos0) + normal * float(step) * f) for f in range(nframes)]
        return positions, [iop] * nframes, ds.get("PixelSpacing"), ds.get("SliceThickness")
    return None


def _load_dicom_file(
    path: Path, display: bool | None = None, volume: int | None = None
) -> LoadedImage:
    ds = dcm.read_header(path)
    meta_sop = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", "") or "")
    sop = str(ds.get("SOPClassUID", "") or "") or meta_sop  # DICOMDIRs have it in the meta only
    if sop == "1.2.840.10008.1.3.10":
        listed = dcm.dicomdir_files(path)
        if not listed:
            n = _dicomdir_records(ds)
            raise SeriesError(
                f"is a DICOMDIR listing {n} file(s), none of which is under {path.parent}"
                if n
                else "is a DICOMDIR that lists no files",
                path=path,
                hint="copy the whole medium: the DICOMDIR together with the folders it lists",
            )
        return _load_dicom_folder(
            path.parent,
            listed,
            "dicomdir",
            shown=path,
            display=display,
            volume=volume,
        )
    if sop in dcm.NON_IMAGE_SOP_CLASSES:
        raise UnsupportedInputError(
            f"is a DICOM {dcm.NON_IMAGE_SOP_CLASSES[sop]} object{_derived_summary(ds)}, not an "
            "image medxai segments",
            path=path,
            hint=what_to_give_instead(ds),
        )
    if "PixelData" not in ds:
        raise _no_pixel_data(ds, path, sop)
    if "MOSAIC" in [str(v).upper() for v in (ds.get("ImageType") or [])]:
        return _load_siemens_mosaic(ds, path)
    as_displayed = is_display_candidate(ds) if display is None else bool(display)
    shown: dict[str, Any] = {}
    if as_displayed:
        frames, shown = _display_frames(ds, path)
    else:
        frames = dcm.decode_frames(ds, path)
    nframes = frames.shape[0]
    geom = _plane_geometry(ds, nframes)
    warnings: list[str] = []
    frame_numbers: list[int] | None = list(range(1, nframes + 1)) if nframes > 1 else None
    spacing = dcm._pixel_spacing(ds)
    xray = radiograph_spacing(ds)
    if geom is not None and spacing is None and geom[2] is not None and len(geom[2]) == 2:
        spacing = (float(geom[2][0]), float(geom[2][1]))
    chosen: dict[str, Any] | None = None
    if geom is not None and spacing is not None:
        positions, orients, _sp, thick = geom
        members = list(range(nframes))
        vols = _frame_volumes(ds, positions)
        if len(vols) > 1:
            pick = _choose_volume(vols, volume, path, "multi-frame object")
            members = list(pick.members)
            positions = [positions[i] for i in members]
            orients = [orients[i] for i in members]
            chosen = pick.to_dict(len(vols))
        ok = {tuple(round(v, 4) for v in o) for o in orients}
        if len(ok) > 1:
            raise SeriesError(
                f"frames have {len(ok)} different orientations (e.g. a localiser with several "
                "planes); they do not form one volume",
                path=path,
                hint="split the object into one stack per orientation",
            )
        stack = dcm.sort_slices(
            positions,
            orients[0],
            spacing,
            float(thick) if thick not in (None, "") else None,
            what="multi-frame object",
        )
        order = [members[i] for i in stack.order]  # indices of the object's frames
        frames = frames[order]
        if frame_numbers is not None:
            frame_numbers = [frame_numbers[i] for i in order]
        slopes, inters = zip(*(dcm._rescale(ds, i if nframes > 1 else None) for i in order))
        affine_lps = stack.affine_lps
        warnings = stack.warnings
        is_volume, has_geom = True, True
    else:
        if nframes > 1 and frame_numbers is not None:
            warnings.append("no patient geometry: frames kept in stored order, 1 unit apart")
        slopes, inters = zip(
            *(dcm._rescale(ds, i if nframes > 1 else None) for i in range(nframes))
        )
        affine_lps = dcm.lps_identity(spacing)
        is_volume, has_geom = nframes > 1, False
    values = frames if as_displayed else dcm.apply_modality_lut(frames, slopes, inters)
    arr = _frames_to_array(values, is_volume)
    form = "dicom-multiframe" if nframes > 1 else "dicom"
    if xray is None and not has_geom and as_displayed:
        warnings.append("no usable Pixel Spacing or Imager Pixel Spacing: sizes are in pixels")
    _repair_identity([ds], warnings)
    meta = _dicom_meta(ds, form, 1, has_geom, warnings)
    if chosen is not None:
        meta["volume"] = chosen
    if as_displayed:
        meta.update(intensity="display", display=shown)
    if xray is not None and not has_geom:
        meta["pixel_spacing_source"] = xray.source
        if xray.magnification is not None:
            meta["estimated_radiographic_magnification_factor"] = xray.magnification
        if xray.patient_plane_spacing is not None:
            meta["patient_plane_spacing"] = list(xray.patient_plane_spacing)
    source = DicomSource(datasets=[_strip_pixels(ds)], paths=[path], frame_numbers=frame_numbers)
    return _make(arr, lps_to_ras_affine(affine_lps), path, form, meta, source)


def _dicomdir_records(ds: Any) -> int:
    return sum(1 for r in ds.get("DirectoryRecordSequence") or [] if r.get("ReferencedFileID"))


def _no_pixel_data(ds: Any, path: Path, sop: str) -> UnsupportedInputError:
    """The refusal of a DICOM file without Pixel Data, naming what it is: an empty or unreadable
    data set, a header-only image object, or an object that holds no image."""
    from pydicom.uid import UID

    name = UID(sop).name if sop else ""
    what = f"a DICOM {name} object" if name and name != sop else "DICOM"
    modality = str(ds.get("Modality", "") or "") or "unknown modality"
    if len(ds) == 0:
        return UnsupportedInputError(
            f"is DICOM ({name or 'no SOP class'} in its file meta) but its data set holds no "
            f"element pydicom can read ({path.stat().st_size} bytes)",
            path=path,
            hint="the file is damaged or cut short; export it again from the source",
        )
    if "Image Storage" in name:
        return UnsupportedInputError(
            f"is {what} ({modality}) but holds no pixel data: a header without its image",
            path=path,
            hint="the pixel data was removed or never written; export the complete image",
        )
    return UnsupportedInputError(
        f"is {what} ({modality}) but holds no pixel data",
        path=path,
        hint="it holds no image; give medxai an image object (CT, MR, CR/DX, US, a picture, ...)",
    )


def _derived_summary(ds: Any) -> str:
    """A few words on what a derived object holds, for refusals: ' (2 segments, 3 frames)'."""
    info = describe_derived(ds)
    if not info:
        return ""
    if info["kind"] == "SEG":
        labels = ", ".join(s["label"] or str(s["number"]) for s in info["segments"][:5])
        return f" ({len(info['segments'])} segment(s): {labels}; {info['frames']} frame(s))"
    if info["kind"] == "RTSTRUCT":
        return (
            f" ({len(info['rois'])} ROI(s): " + ", ".join(r["name"] for r in info["rois"][:5]) + ")"
        )
    if info["kind"] == "PM":
        return f" (a {info['quantity'] or 'parametric'} map, {info['frames']} frame(s))"
    if info["kind"] == "SR":
        return f" ({info['title'] or 'a report'}, {len(info['measurements'])} measurement(s))"
    return ""


def _display_frames(ds: Any, path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Every frame as displayed (8-bit), ``(frames, rows, cols, 1)``, and what was applied."""
    stored = dcm.decode_stored(ds, path)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    if nframes == 1:
        stored = stored[None]
    out = np.empty(stored.shape[:3] + (1,), dtype=np.uint8)
    applied: dict[str, Any] = {}
    for f in range(stored.shape[0]):
        shown = display_image(ds, path, stored=stored[f])
        out[f, ..., 0] = shown.to_uint8()
        applied = shown.applied
    return out, applied


def _load_siemens_mosaic(ds: Any, path: Path) -> LoadedImage:
    """A Siemens mosaic (all slices of a volume tiled in one frame), unpacked with the slice
    geometry of its CSA header (nibabel's MosaicWrapper). ``k`` follows the acquisition's slice
    order along the CSA slice normal."""
    import warnings

    from nibabel.nicom import dicomwrappers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper = dicomwrappers.wrapper_from_data(ds)
        if not isinstance(wrapper, dicomwrappers.MosaicWrapper):
            raise UnsupportedInputError(
                "is marked MOSAIC but its Siemens CSA header cannot be read",
                path=path,
                hint="convert it with dcm2niix first",
            )
        data = np.asarray(wrapper.get_data(), dtype=np.float64)  # (rows, cols, k), rescaled
        affine_rc = np.asarray(wrapper.affine, dtype=np.float64)  # LPS, (row, col, k) indices
    arr = data.transpose(1, 0, 2)[None]
    affine_lps = affine_rc[:, [1, 0, 2, 3]]
    if np.all(np.equal(np.mod(arr, 1), 0)):
        arr = dcm._shrink_int(arr.astype(np.int64))
    else:
        arr = arr.astype(np.float32)
    notes: list[str] = []
    _repair_identity([ds], notes)
    meta = _dicom_meta(ds, "dicom-mosaic", 1, True, notes)
    source = DicomSource(datasets=[_strip_pixels(ds)], paths=[path])
    return _make(arr, lps_to_ras_affine(affine_lps), path, "dicom-mosaic", meta, source)


def load_dicom_files(
    folder: str | Path,
    files: list[Path],
    *,
    display: bool | None = None,
    volume: int | None = None,
) -> LoadedImage:
    """Read the one image series formed by ``files`` (slices of one series), named ``folder``.

    For callers that grouped the files themselves (``medxai batch``); otherwise as
    :func:`load_image` on a series folder.
    """
    return _load_dicom_folder(
        Path(folder), [Path(f) for f in files], "dicom-series", display=display, volume=volume
    )


def _frame_volumes(ds: Any, positions: list[Any]) -> list[Volume]:
    """The volumes of an enhanced multi-frame object whose frames share positions."""
    if len(positions) < 2 or "PerFrameFunctionalGroupsSequence" not in ds:
        return split_volumes(positions, [{} for _ in positions])
    return split_volumes(positions, [volume_attributes(ds, f) for f in range(len(positions))])


def _choose_volume(vols: list[Volume], volume: int | None, where: Path, what: str) -> Volume:
    """The volume asked for, or the refusal that lists them."""
    listing = ", ".join(f"{v.index}: {v.label}" for v in vols[:12])
    if len(vols) > 12:
        listing += f", ... ({len(vols)} in all)"
    key = ", ".join(sorted({k for v in vols for k in v.key}))
    if volume is None:
        raise SeriesError(
            f"this {what} holds {len(vols)} volumes at the same slice positions, told apart by "
            f"{key} ({listing})",
            path=where,
            hint="choose one with `medxai segment --volume N` (default: all, each into its own "
            "result folder) or load_image(path, volume=N); `medxai info` lists them",
        )
    if not 1 <= int(volume) <= len(vols):
        raise SeriesError(
            f"holds {len(vols)} volumes ({listing}); there is no volume {volume}",
            path=where,
            hint=f"choose 1..{len(vols)}",
        )
    return vols[int(volume) - 1]


def list_volumes(path: str | Path) -> list[Volume]:
    """The volumes a DICOM input holds (header-only): one :class:`~medxai.io.dicom.volumes.
    Volume` with label ``""`` for ordinary inputs and for pictures, NIfTI and NRRD files;
    several for a series folder or enhanced multi-frame object holding several volumes (split
    as :mod:`medxai.io.dicom.volumes` says). Pass ``Volume.index`` to :func:`load_image`.

    Raises:
        MedxaiError: as :func:`load_image` for an unusable input.
    """
    path = Path(path)
    form = detect_form(path)
    one = [Volume(1, "", {}, ())]
    if form == "dicom":
        ds = dcm.read_header(path)
        if str(ds.get("SOPClassUID", "")) == "1.2.840.10008.1.3.10":
            return _folder_volumes(path.parent, dcm.dicomdir_files(path))
        nframes = int(ds.get("NumberOfFrames", 1) or 1)
        geom = _plane_geometry(ds, nframes) if nframes > 1 else None
        return _frame_volumes(ds, geom[0]) if geom is not None else one
    if form == "dicomdir":
        ddir = next(p for p in (path / "DICOMDIR", path / "dicomdir") if p.is_file())
        return _folder_volumes(path, dcm.dicomdir_files(ddir))
    if form == "dicom-folder":
        return _folder_volumes(path, None)
    return one


def _folder_volumes(folder: Path, files: list[Path] | None) -> list[Volume]:
    unique, _dups = _series_items(folder, files)
    if len(unique) == 1:
        return list_volumes(unique[0][0])
    return _file_volumes(unique)


def _file_volumes(items: list[tuple[Path, Any]]) -> list[Volume]:
    positions = [
        [float(v) for v in ds.ImagePositionPatient] if "ImagePositionPatient" in ds else None
        for _, ds in items
    ]
    return split_volumes(positions, [volume_attributes(ds) for _, ds in items])


def _load_dicom_folder(
    folder: Path,
    files: list[Path] | None,
    form: str,
    shown: Path | None = None,
    display: bool | None = None,
    volume: int | None = None,
) -> LoadedImage:
    """Read the one image series under ``folder`` (or among ``files``); errors name ``shown``."""
    try:
        return _load_series(folder, files, form, display, volume)
    except MedxaiError as exc:
        if shown is None or exc.path == str(shown):
            raise
        raise type(exc)(exc.detail, path=shown, hint=exc.hint) from exc


def _series_items(
    folder: Path, files: list[Path] | None
) -> tuple[list[tuple[Path, Any]], list[str]]:
    """The image files of the one series under ``folder`` (or among ``files``), read
    header-first, exact duplicates (same SOP Instance UID) dropped, and warnings on those."""
    scan = dcm.scan_folder(folder, files)
    if not scan.datasets:
        reasons = "; ".join(f"{p.name}: {r}" for p, r in scan.skipped[:5]) or "the folder is empty"
        raise SeriesError(
            f"holds no readable DICOM image ({len(scan.skipped)} file(s) passed over: {reasons})",
            path=folder,
            hint="point medxai at a folder holding one DICOM image series",
        )
    groups = dcm.group_series(scan.datasets)
    if len(groups) > 1:
        raise SeriesError(
            f"holds {len(groups)} image series (or stacks of different size/orientation); medxai "
            f"reads one at a time:\n{dcm.describe_groups(groups)}",
            path=folder,
            hint="give the folder of one series, or use `medxai batch` for whole exports",
        )
    items = next(iter(groups.values()))
    return _drop_duplicates(items)


def _drop_duplicates(items: list[tuple[Path, Any]]) -> tuple[list[tuple[Path, Any]], list[str]]:
    """Exact duplicates (same SOP Instance UID in two files) dropped, with a warning each."""
    seen: dict[str, Path] = {}
    unique = []
    dup_warnings = []
    for p, ds in items:
        uid = str(ds.get("SOPInstanceUID", "")) or str(p)
        if uid in seen:
            dup_warnings.append(
                f"duplicate instance {uid} in {p.name} and {seen[uid].name}; one copy used"
            )
            continue
        seen[uid] = p
        unique.append((p, ds))
    return unique, dup_warnings


def _load_series(
    folder: Path,
    files: list[Path] | None,
    form: str,
    display: bool | None = None,
    volume: int | None = None,
) -> LoadedImage:
    unique, dup_warnings = _series_items(folder, files)
    chosen: dict[str, Any] | None = None
    if len(unique) > 1:
        vols = _file_volumes(unique)
        if len(vols) > 1:
            pick = _choose_volume(vols, volume, folder, "series")
            unique = [unique[i] for i in pick.members]
            chosen = pick.to_dict(len(vols))
    if len(unique) == 1:
        loaded = _load_dicom_file(unique[0][0], display, volume if chosen is None else None)
        loaded.image.meta["geometry_warnings"] = (
            dup_warnings + loaded.image.meta["geometry_warnings"]
        )
        if chosen is not None:
            loaded.image.meta["volume"] = chosen
        loaded.path = folder
        return loaded
    first = unique[0][1]
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for _, ds in unique):
        raise SeriesError(
            f"holds {len(unique)} multi-frame objects of one series; medxai reads "
            "one multi-frame object at a time",
            path=folder,
            hint="give the path of one of the files",
        )
    missing_geo = [
        p
        for p, ds in unique
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds
    ]
    spacing = dcm._pixel_spacing(first)
    if missing_geo or spacing is None:
        raise SeriesError(
            f"holds {len(unique)} images of one series without patient positions (e.g. "
            f"{(missing_geo or [unique[0][0]])[0].name}), so they cannot be stacked into a volume",
            path=folder,
            hint="give one file at a time",
        )
    positions = [[float(v) for v in ds.ImagePositionPatient] for _, ds in unique]
    orientation = [float(v) for v in first.ImageOrientationPatient]
    thick = first.get("SliceThickness")
    stack = dcm.sort_slices(
        positions, orientation, spacing, float(thick) if thick not in (None, "") else None
    )
    ordered = [unique[i] for i in stack.order]
    rows, cols = int(first.Rows), int(first.Columns)
    spp = int(first.get("SamplesPerPixel", 1) or 1)
    frames = None
    slopes, inters = [], []
    for k, (p, ds) in enumerate(ordered):
        f = dcm.decode_frames(ds, p)
        if frames is None:
            frames = np.empty((len(ordered), rows, cols, f.shape[-1]), dtype=f.dtype)
        if f.shape[1:3] != (rows, cols) or f.shape[-1] != frames.shape[-1]:
            raise SeriesError(
                f"slice {p.name} is {f.shape[2]}x{f.shape[1]}, the series {cols}x{rows}",
                path=folder,
            )
        if f.dtype != frames.dtype:
            frames = frames.astype(np.promote_types(frames.dtype, f.dtype))
        frames[k] = f[0]
        s, i = dcm._rescale(ds)
        slopes.append(s)
        inters.append(i)
        _strip_pixels(ds)
    assert frames is not None and spp >= 1
    values = dcm.apply_modality_lut(frames, slopes, inters)
    arr = _frames_to_array(values, True)
    warnings = dup_warnings + stack.warnings
    _repair_identity([ds for _, ds in ordered], warnings)
    meta = _dicom_meta(first, form, len(ordered), True, warnings)
    if chosen is not None:
        meta["volume"] = chosen
    source = DicomSource(datasets=[ds for _, ds in ordered], paths=[p for p, _ in ordered])
    return _make(arr, lps_to_ras_affine(stack.affine_lps), folder, form, meta, source)
