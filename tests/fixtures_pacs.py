"""A PACS-like export built from real files, and a tiny model bundle, for the batch tests.

The export mixes what real exports hold: nested patient/study/series folders, several studies,
a CT series, multi-frame objects, a DICOMDIR with its media folders (pydicom's dicomdirtests),
non-image DICOM (RTSTRUCT, RTDOSE, SR), non-DICOM files, a truncated file, a damaged compressed
file, an empty file, a hidden file and duplicate copies. Pydicom's files are taken from its
installed ``test_files`` folder only (never downloaded). When ../shared/data is there, ISIC 2018
photos (as DICOM) and a few more real files are added.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

PYDICOM_FILES = Path(os.path.dirname(pydicom.data.__file__)) / "test_files"

#: pydicom test files the export uses: (name, folder in the export)
PYDICOM_USED = [
    ("CT_small.dcm", "PAT_B/ST_misc/CT"),
    ("MR_small.dcm", "PAT_B/ST_misc/MR"),
    ("MR_truncated.dcm", "PAT_B/ST_misc/MR"),
    ("SC_rgb_rle.dcm", "PAT_B/ST_sc/SC"),
    ("SC_rgb_jpeg_dcmtk.dcm", "PAT_B/ST_sc/SC"),
    ("SC_rgb_rle_2frame.dcm", "PAT_B/ST_sc/SC_multi"),
    ("examples_ybr_color.dcm", "PAT_C/US/cine"),
    ("examples_palette.dcm", "PAT_C/US/still"),
    ("rtstruct.dcm", "PAT_B/RT"),
    ("rtdose.dcm", "PAT_B/RT"),
    ("test-SR.dcm", "PAT_B/SR"),
]


def pydicom_test_file(name: str) -> Path | None:
    """A file of pydicom's installed test data, or None (never triggers a download)."""
    p = PYDICOM_FILES / name
    return p if p.is_file() else None


def make_test_bundle(path: Path, *, seed: int = 0,
                     modalities: tuple[str, ...] = ("XC", "OT", "US")) -> Path:
    """Save an untrained 2D RGB two-class U-Net bundle (whole-image mode, 32x32) to ``path``.

    Its predictions are meaningless but deterministic, which is all the batch tests need.
    """
    import torch

    from medxai.models.bundle import ModelBundle, network_from_config, save_bundle
    from medxai.models.networks import default_unet_args

    config = {
        "network_def": {"_target_": "monai.networks.nets.UNet",
                        **default_unet_args(2, 3, 2, width=4, depth=3, num_res_units=1)},
        "input": {"spatial_dims": 2, "channels": 3, "modalities": list(modalities)},
        "preprocessing": {"spatial_size": [32, 32],
                          "intensity": {"kind": "scale", "a_min": 0.0, "a_max": 255.0}},
        "inference": {"mode": "whole_image", "tta_flips": True},
        "labels": [{"value": 0, "name": "background", "color": [0, 0, 0]},
                   {"value": 1, "name": "lesion", "color": [255, 64, 64]}],
    }
    torch.manual_seed(seed)
    net = network_from_config(config)
    net.eval()
    metadata = {"name": "batch-test-2d-rgb", "version": "0.0.1",
                "description": "untrained network for medxai's batch tests"}
    return save_bundle(ModelBundle(config=config, metadata=metadata, network=net), path)


def _set_uids(ds: pydicom.Dataset, study: str, series: str, sop: str) -> None:
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=["medxai-batch-test", *map(str, parts)])


def write_photo_dicom(rgb: np.ndarray, path: Path, *, study: str, series: str, sop: str,
                      series_number: int, instance: int, study_date: str = "20260101") -> Path:
    """An RGB photo ``(H, W, 3)`` as a dermoscopy-like Secondary Capture with the given UIDs."""
    from medxai.samples import write_dermoscopy_dicom

    write_dermoscopy_dicom(rgb, path)
    ds = pydicom.dcmread(path)
    _set_uids(ds, study, series, sop)
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance
    ds.StudyDate = study_date
    ds.save_as(path, enforce_file_format=True)
    return path


@dataclass
class PacsExport:
    """The export and what the tests expect of it (relative POSIX paths)."""

    root: Path
    fit_done: list[str] = field(default_factory=list)       # files whose series must be done
    fail_series: list[str] = field(default_factory=list)    # files whose series must fail
    skip_series: list[str] = field(default_factory=list)    # files whose series must be skipped
    failed_files: list[str] = field(default_factory=list)   # damaged files (state failed)
    skipped_files: dict[str, str] = field(default_factory=dict)  # path -> expected kind
    shared: bool = False


def build_pacs_export(root: Path, shared: Path | None = None, *, n_photos: int = 6) -> PacsExport:
    """Write the export under ``root`` (see the module docstring) and say what to expect."""
    from PIL import Image

    from medxai.samples import make_ct_volume, make_dermoscopy_photo, write_ct_series

    root.mkdir(parents=True, exist_ok=True)
    exp = PacsExport(root=root, shared=shared is not None)

    # study 1 (patient A): dermoscopy photos, two series, 64x48
    study1 = _uid("study1")
    photos = []
    for i in range(n_photos):
        rgb, _mask = make_dermoscopy_photo(64, 48, seed=100 + i)
        photos.append(rgb)
    series_sizes = [n_photos - 1, 1]
    k = 0
    for s, size in enumerate(series_sizes, start=1):
        series = _uid("study1", s)
        for j in range(size):
            rel = f"PAT_A/ST_1/SER_{s:02d}/IM{j + 1:04d}.dcm"
            write_photo_dicom(photos[k], root / rel, study=study1, series=series,
                              sop=_uid("study1", s, j), series_number=s, instance=j + 1)
            exp.fit_done.append(rel)
            k += 1
    # a non-DICOM thumbnail next to them, a duplicate copy of one photo elsewhere
    Image.fromarray(photos[0]).save(root / "PAT_A/ST_1/SER_02/thumb.jpg", quality=80)
    exp.skipped_files["PAT_A/ST_1/SER_02/thumb.jpg"] = "not-dicom"
    (root / "PAT_A/ST_1_copy").mkdir(parents=True)
    shutil.copy2(root / "PAT_A/ST_1/SER_01/IM0001.dcm", root / "PAT_A/ST_1_copy/IM0001.dcm")
    exp.skipped_files["PAT_A/ST_1_copy/IM0001.dcm"] = "duplicate"

    # study 2 (patient A): an oblique CT series (volume, greyscale: does not fit a 2D RGB model)
    vol, _lesion = make_ct_volume((24, 20, 5))
    ct_files = write_ct_series(vol, root / "PAT_A/ST_2/CT")
    exp.skip_series += [p.relative_to(root).as_posix() for p in ct_files]

    # pydicom's real files
    for name, folder in PYDICOM_USED:
        src = pydicom_test_file(name)
        if src is None:
            continue
        (root / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, root / folder / name)
        rel = f"{folder}/{name}"
        if name == "MR_truncated.dcm":
            exp.failed_files.append(rel)
        elif name in ("rtstruct.dcm", "rtdose.dcm", "test-SR.dcm"):
            exp.skipped_files[rel] = "non-image"
        elif name in ("SC_rgb_rle.dcm", "SC_rgb_jpeg_dcmtk.dcm", "examples_palette.dcm"):
            exp.fit_done.append(rel)
        else:
            exp.skip_series.append(rel)
    # a damaged compressed image: RLE pixel data cut short (only decoding can tell)
    src = pydicom_test_file("SC_rgb_rle.dcm")
    if src is not None:
        ds = pydicom.dcmread(src)
        _set_uids(ds, ds.StudyInstanceUID, ds.SeriesInstanceUID, _uid("bad-rle"))
        bad = root / "PAT_B/ST_sc/broken/bad_rle.dcm"
        bad.parent.mkdir(parents=True)
        ds.save_as(bad, enforce_file_format=True)
        data = bad.read_bytes()
        start = data.rindex(b"\xe0\x7f\x10\x00")  # Pixel Data: keep its first fragment only
        bad.write_bytes(data[: start + 80])
        exp.fail_series.append(bad.relative_to(root).as_posix())
    # a truncated uncompressed photo (the header scan finds it), an empty file
    trunc = root / "PAT_B/incoming/truncated_photo.dcm"
    write_photo_dicom(photos[1], trunc, study=_uid("study-trunc"), series=_uid("series-trunc"),
                      sop=_uid("sop-trunc"), series_number=9, instance=1)
    trunc.write_bytes(trunc.read_bytes()[:-1000])
    exp.failed_files.append("PAT_B/incoming/truncated_photo.dcm")
    (root / "PAT_B/incoming/empty.dcm").write_bytes(b"")
    exp.skipped_files["PAT_B/incoming/empty.dcm"] = "empty"
    # non-DICOM and hidden files
    (root / "README.txt").write_text("Export of 2026-01-01. Not a DICOM file.\n")
    exp.skipped_files["README.txt"] = "not-dicom"
    (root / "PAT_B/notes.json").write_text('{"note": "not DICOM"}\n')
    exp.skipped_files["PAT_B/notes.json"] = "not-dicom"
    (root / "PAT_B/.DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    exp.skipped_files["PAT_B/.DS_Store"] = "hidden"

    # media with a DICOMDIR (pydicom's dicomdirtests: 3 patients of greyscale CT/MR/CR)
    ddir = PYDICOM_FILES / "dicomdirtests"
    if (ddir / "DICOMDIR").is_file():
        shutil.copytree(ddir, root / "MEDIA")
        exp.skipped_files["MEDIA/DICOMDIR"] = "dicomdir"
        # a file the DICOMDIR lists went missing in the copy
        (root / "MEDIA/77654033/CR1/6154").unlink()

    # real data from ../shared/data
    if shared is not None:
        isic = sorted((shared / "isic2018" / "val" / "images").glob("*.jpg"))[:3]
        study3 = _uid("study-isic")
        for i, jpg in enumerate(isic):
            rgb = np.asarray(Image.open(jpg).convert("RGB").resize((64, 48)))
            rel = f"PAT_D/ISIC/SER_{i + 1:02d}/{jpg.stem}.dcm"
            write_photo_dicom(rgb, root / rel, study=study3, series=_uid("isic", i),
                              sop=_uid("isic", i, 0), series_number=i + 1, instance=1,
                              study_date="20180101")
            exp.fit_done.append(rel)
        extra = shared / "dicom" / "notZaki_DICOMSamples"
        for name in ("MR_Explicit_Little_MultiFrame.dcm", "CT_JPEG70.dcm"):
            if (extra / name).is_file():
                (root / "PAT_E").mkdir(exist_ok=True)
                shutil.copy2(extra / name, root / "PAT_E" / name)
                exp.skip_series.append(f"PAT_E/{name}")
    return exp


def all_files(root: Path) -> list[str]:
    """Every regular file under ``root``, relative, sorted (hidden ones included)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
