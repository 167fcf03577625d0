"""A PACS-like export built from real files, and a tiny model bundle, for the batch tests.

The export mixes what real exports hold: nested patient/study/series folders, several studies,
a CT series, multi-frame objects, a DICOMDIR with its media folders (pydicom's dicomdirtests),
non-image DICOM (RTSTRUCT, RTDOSE, SR), non-DICOM files, a truncated file, a damaged compressed
file, an empty file, a hidden file and duplicate copies. Pydicom's files are taken from its
installed ``test_files`` folder only (never downloaded). When ../shared/data is there, ISIC 2018
photos (as DICOM) and a few more real files are added. The generated and ISIC photos differ in
size and content, and the model labels dark pixels (a known answer), so that every photo gets a
non-empty label map and saliency map of its own: a result given to the wrong image shows.
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
    """Save a 2D RGB two-class U-Net bundle with a known answer (whole-image mode, 32x32).

    The network labels what is darker than :data:`DARK_THRESHOLD`: its weights are set by hand
    (see :func:`darkness_unet`), so every image gets a non-empty label map of its own and a
    saliency map (Grad-CAM at the default layer sees the darkness feature) that follows its
    content. The answer does not depend on ``seed`` (kept for callers).
    """
    from medxai.models.bundle import ModelBundle, save_bundle
    from medxai.models.networks import default_unet_args

    del seed
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
    net = darkness_unet(config)
    metadata = {"name": "batch-test-2d-rgb", "version": "0.0.1",
                "description": "hand-set network for medxai's batch tests: labels dark pixels"}
    return save_bundle(ModelBundle(config=config, metadata=metadata, network=net), path)


#: the mean of R, G, B (scaled to [0, 1]) below which :func:`darkness_unet` says "lesion"
DARK_THRESHOLD = 0.4


def darkness_unet(config: dict):
    """The MONAI U-Net of ``config`` (2D, 3 channels in, 2 out, ``num_res_units=1``) with weights
    set so that it computes, in eval mode:

    * first encoder block (``model.0``, stride 2): channel 0 is
      ``f = DARK_THRESHOLD - mean_3x3(mean_RGB)`` (its PReLU's slope is 1); its other channels
      are 0;
    * the deeper path gives 0 (all its convolutions are 0), so the skip connection ``model.1``
      (Grad-CAM's default layer) holds ``f`` and zeros;
    * the last transposed convolution upsamples ``f`` bilinearly (kernel ``[.5, 1, .5]`` on
      each axis) into the lesion logit, times :data:`GAIN` (PReLU slope 1 again; batch norms are
      at their initial identity statistics); the background logit is 0.

    So the lesion is where the picture, smoothed, is darker than the threshold, and Grad-CAM's
    map is ``relu(f)`` upsampled (its channel weight is positive): both follow the image.
    """
    import torch

    from medxai.models.bundle import network_from_config

    net = network_from_config(config)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.weight.zero_()
                if m.bias is not None:
                    m.bias.zero_()
        first = net.model[0].conv.unit0.conv
        first.weight[0].fill_(-1.0 / 27.0)  # minus the mean of 3 channels x 3x3 pixels
        first.bias[0] = DARK_THRESHOLD
        net.model[0].conv.unit0.adn.A.weight.fill_(1.0)  # PReLU slope 1: linear
        last = net.model[2][0].conv  # ConvTranspose2d(in 8 = 4 skip + 4 deep, out 2)
        k = torch.tensor([0.5, 1.0, 0.5])
        last.weight[0, 1] = GAIN * torch.outer(k, k)
        net.model[2][0].adn.A.weight.fill_(1.0)
    return net.eval()


#: scale of the lesion logit: probabilities go from about 0.2 (skin) to 0.99 (lesion core)
GAIN = 20.0


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


#: (width, height) of the export's generated photos, in turn: all different
PHOTO_SIZES = [(64, 48), (48, 64), (72, 40), (44, 44), (80, 56), (40, 60)]
#: (width, height) the ISIC photos are resized to (none of PHOTO_SIZES)
ISIC_SIZES = [(60, 52), (56, 72), (84, 60)]


def varied_photo(i: int) -> np.ndarray:
    """Generated photo ``i`` ``(H, W, 3)``: size ``PHOTO_SIZES[i % 6]``, cut from a larger photo
    at an offset of its own and mirrored for odd ``i``, so that the lesion (and the dark corners of
    the dermoscope's vignetting) sit elsewhere in each."""
    from medxai.samples import make_dermoscopy_photo

    w, h = PHOTO_SIZES[i % len(PHOTO_SIZES)]
    big, _mask = make_dermoscopy_photo(w + 24, h + 24, seed=100 + i)
    dx, dy = (7 * i) % 25, (11 * i + 3) % 25
    rgb = big[dy:dy + h, dx:dx + w]
    return np.ascontiguousarray(rgb[:, ::-1] if i % 2 else rgb)


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

    from medxai.samples import make_ct_volume, write_ct_series

    root.mkdir(parents=True, exist_ok=True)
    exp = PacsExport(root=root, shared=shared is not None)

    # study 1 (patient A): dermoscopy photos, two series, each photo of its own size and with
    # its lesion elsewhere (a mix-up between images changes a result's shape or content)
    study1 = _uid("study1")
    photos = [varied_photo(i) for i in range(n_photos)]
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
            rgb = np.asarray(Image.open(jpg).convert("RGB").resize(ISIC_SIZES[i]))
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
