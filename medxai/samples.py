"""Synthetic sample data that medxai generates itself (no patient data, no downloads).

- a dermoscopy-like photo: skin-toned background, vignetting, hairs and an irregular dark lesion,
  as JPEG and as DICOM Secondary Capture with a clearly fake patient;
- a CT-like volume (body, lungs, spine, a lesion) as NIfTI and as a DICOM series with an oblique,
  non-axial orientation and shuffled file names, so that geometry and sorting bugs show.

``python sample_data/make_samples.py`` writes them to ``sample_data/``.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from medxai._version import __version__

__all__ = ["make_dermoscopy_photo", "make_ct_volume", "write_samples", "FAKE_PATIENT"]

FAKE_PATIENT = {
    "PatientName": "MEDXAI^SYNTHETIC^SAMPLE",
    "PatientID": "MEDXAI-SAMPLE-0001",
    "PatientBirthDate": "19700101",
    "PatientSex": "O",
}
_UID_ROOT = "1.2.826.0.1.3680043.10.1476."  # medxai samples: deterministic UIDs below this


def _uid(suffix: str) -> str:
    return _UID_ROOT + suffix


def make_dermoscopy_photo(
    width: int = 640, height: int = 480, seed: int = 7
) -> tuple[np.ndarray, np.ndarray]:
    """An RGB photo ``(H, W, 3)`` uint8 and its lesion mask ``(H, W)`` uint8 (0/1).

    Row-major picture order (as Pillow and DICOM store pixels), not medxai's ``(C, W, H)``.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    cx, cy = width * 0.55, height * 0.45
    # skin with low-frequency shading and fine texture
    skin = np.array([226.0, 178.0, 150.0])
    shade = 1.0 + 0.06 * np.sin(xx / width * 3.1 + 0.4) * np.cos(yy / height * 2.3)
    img = skin[None, None, :] * shade[..., None]
    img += rng.normal(0, 4.0, size=img.shape)
    # irregular lesion: radius modulated by harmonics
    ang = np.arctan2(yy - cy, xx - cx)
    r = np.hypot((xx - cx) / 1.15, yy - cy)
    base = min(width, height) * 0.22
    radius = base * (
        1 + 0.12 * np.sin(3 * ang + 0.5) + 0.08 * np.cos(5 * ang + 1.1) + 0.05 * np.sin(8 * ang)
    )
    mask = (r < radius).astype(np.uint8)
    depth = np.clip((radius - r) / (0.35 * base), 0, 1)
    lesion = np.array([110.0, 62.0, 45.0])
    core = np.array([70.0, 38.0, 30.0])
    colour = lesion[None, None, :] * (1 - depth[..., None]) + core[None, None, :] * depth[..., None]
    blotch = 1 + 0.15 * np.sin(xx / 9.0) * np.cos(yy / 11.0)
    edge = np.clip((radius - r) / 6.0, 0, 1)[..., None]  # soft border
    img = img * (1 - edge) + colour * blotch[..., None] * edge
    # hairs: a few dark curved lines
    for _ in range(6):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        a = rng.uniform(0, np.pi)
        t = np.linspace(-0.7, 0.7, 400) * max(width, height)
        hx = x0 + t * np.cos(a) + 15 * np.sin(t / 60)
        hy = y0 + t * np.sin(a)
        ok = (hx >= 0) & (hx < width - 1) & (hy >= 0) & (hy < height - 1)
        for dx in (0, 1):
            img[hy[ok].astype(int), hx[ok].astype(int) + dx] = [60, 45, 40]
    # dermoscope vignetting: dark circular border
    rr = np.hypot((xx - width / 2) / (width / 2), (yy - height / 2) / (height / 2))
    img *= np.clip(1.25 - 0.5 * rr**2, 0.05, 1)[..., None]
    return np.clip(img, 0, 255).astype(np.uint8), mask


def make_ct_volume(
    shape: tuple[int, int, int] = (64, 56, 24), seed: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume ``(I, J, K)`` int16 HU and a lesion label ``(I, J, K)`` uint8.

    Axes are medxai's: ``i`` along columns, ``j`` along rows, ``k`` across slices.
    """
    rng = np.random.default_rng(seed)
    ni, nj, nk = shape
    i, j, k = np.meshgrid(np.arange(ni), np.arange(nj), np.arange(nk), indexing="ij")
    ci, cj = (ni - 1) / 2, (nj - 1) / 2
    vol = np.full(shape, -1000.0)
    body = ((i - ci) / (0.45 * ni)) ** 2 + ((j - cj) / (0.40 * nj)) ** 2 < 1
    vol[body] = 40
    for side in (-1, 1):
        lung = ((i - ci - side * 0.2 * ni) / (0.14 * ni)) ** 2 + ((j - cj) / (0.25 * nj)) ** 2 < 1
        vol[lung & body] = -820
    spine = ((i - ci) / 4.0) ** 2 + ((j - cj - 0.28 * nj) / 4.0) ** 2 < 1
    vol[spine] = 700
    # lesion in the right lung, off-centre along k so slice order matters
    lesion = ((i - ci - 0.2 * ni) ** 2 + (j - cj + 2) ** 2) / 16.0 + ((k - nk * 0.7) / 3.0) ** 2 < 1
    vol[lesion] = 55
    vol += rng.normal(0, 12, size=shape)
    return np.clip(np.round(vol), -1024, 3071).astype(np.int16), lesion.astype(np.uint8)


# geometry of the sample CT: oblique (rotated 20 degrees about z, tilted 10 about x)
def _ct_geometry(
    shape: tuple[int, int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float], np.ndarray]:
    az, ax = np.radians(20.0), np.radians(10.0)
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rot = rz @ rx
    row_dir, col_dir = rot[:, 0], rot[:, 1]
    normal = np.cross(row_dir, col_dir)
    spacing = (0.9, 0.8)  # PixelSpacing: row spacing (along j), column spacing (along i)
    thickness = 2.5
    origin = np.array([-30.0, -25.0, 100.0])
    return row_dir, col_dir, normal * thickness, spacing, origin


def _base_dataset(sop_class: str, sop_uid: str, series_uid: str, study_uid: str, modality: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    for k, v in FAKE_PATIENT.items():
        setattr(ds, k, v)
    ds.PatientComments = "SYNTHETIC SAMPLE made by medxai: not a patient"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "SAMPLE"
    ds.Modality = modality
    ds.Manufacturer = "medxai (synthetic sample)"
    ds.SoftwareVersions = __version__
    return ds


def write_dermoscopy_dicom(rgb: np.ndarray, path: Path) -> Path:
    """Write an RGB photo ``(H, W, 3)`` as a DICOM Secondary Capture with a fake patient."""
    ds = _base_dataset("1.2.840.10008.5.1.4.1.1.7", _uid("1.3.1"), _uid("1.2.1"), _uid("1.1"), "XC")
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SeriesDescription = "Synthetic dermoscopy sample"
    ds.ConversionType = "DI"
    ds.PatientOrientation = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Laterality = ""
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def write_ct_series(vol: np.ndarray, folder: Path) -> list[Path]:
    """Write a ``(I, J, K)`` HU volume as an oblique CT series, files named in shuffled order."""
    row_dir, col_dir, step, (dr, dc), origin = _ct_geometry(vol.shape)
    folder.mkdir(parents=True, exist_ok=True)
    nk = vol.shape[2]
    names = np.random.default_rng(11).permutation(nk)
    paths = []
    for k in range(nk):
        sop = _uid(f"2.3.{k + 1}")
        ds = _base_dataset("1.2.840.10008.5.1.4.1.1.2", sop, _uid("2.2.1"), _uid("2.1"), "CT")
        ds.SeriesNumber = 2
        # instance numbers run opposite to position: sorting by them would flip the volume
        ds.InstanceNumber = nk - k
        ds.SeriesDescription = "Synthetic oblique CT sample"
        ds.FrameOfReferenceUID = _uid("2.4")
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin + k * step]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in list(row_dir) + list(col_dir)]
        ds.PixelSpacing = [f"{dr:g}", f"{dc:g}"]
        ds.SliceThickness = f"{np.linalg.norm(step):g}"
        ds.PatientPosition = "HFS"
        ds.Laterality = ""
        ds.KVP = "120"
        ds.AcquisitionNumber = 1
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(vol.shape[1]), int(vol.shape[0])
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        stored = (vol[:, :, k].T.astype(np.int32) + 1024).clip(0, 4095).astype(np.uint16)
        ds.PixelData = np.ascontiguousarray(stored).tobytes()
        p = folder / f"IM{names[k]:04d}.dcm"
        ds.save_as(str(p), enforce_file_format=True)
        paths.append(p)
    return paths


def ct_affine_ras(shape: tuple[int, int, int]) -> np.ndarray:
    """The RAS affine of the sample CT (what the reader must find)."""
    from medxai.io.geometry import dicom_affine_lps, lps_to_ras_affine

    row_dir, col_dir, step, spacing, origin = _ct_geometry(shape)
    return lps_to_ras_affine(dicom_affine_lps(list(row_dir) + list(col_dir), origin, spacing, step))


def write_samples(out: str | Path) -> dict[str, Path]:
    """Generate every sample into ``out``; returns name -> path."""
    import nibabel as nib
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rgb, mask = make_dermoscopy_photo()
    paths = {
        "dermoscopy_jpeg": out / "dermoscopy.jpg",
        "dermoscopy_mask": out / "dermoscopy_mask.png",
        "dermoscopy_dicom": out / "dermoscopy.dcm",
        "ct_nifti": out / "ct_oblique.nii.gz",
        "ct_label": out / "ct_oblique_lesion.nii.gz",
        "ct_series": out / "ct_oblique_series",
    }
    Image.fromarray(rgb).save(paths["dermoscopy_jpeg"], quality=92)
    Image.fromarray(mask * 255).save(paths["dermoscopy_mask"])
    write_dermoscopy_dicom(rgb, paths["dermoscopy_dicom"])
    vol, lesion = make_ct_volume()
    affine = ct_affine_ras(vol.shape)
    for key, data in (("ct_nifti", vol), ("ct_label", lesion)):
        img = nib.Nifti1Image(data, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        nib.save(img, str(paths[key]))
    write_ct_series(vol, paths["ct_series"])
    (out / "README.md").write_text(
        "# medxai sample data (synthetic)\n\n"
        "Generated by `python sample_data/make_samples.py` (medxai.samples); no patient data.\n\n"
        "| file | what |\n|---|---|\n"
        "| dermoscopy.jpg | 640x480 dermoscopy-like photo with an irregular dark lesion |\n"
        "| dermoscopy_mask.png | its lesion mask (0/255) |\n"
        "| dermoscopy.dcm | the same photo as DICOM Secondary Capture, fake patient "
        "MEDXAI^SYNTHETIC^SAMPLE |\n"
        "| ct_oblique.nii.gz | 64x56x24 CT-like volume (HU), oblique orientation |\n"
        "| ct_oblique_lesion.nii.gz | its lesion label |\n"
        "| ct_oblique_series/ | the same volume as a DICOM CT series: oblique, file names "
        "shuffled, InstanceNumber opposite to position |\n"
        f"\nMade {datetime.date(2026, 1, 1).isoformat()}-dated, deterministic (fixed seeds and UIDs).\n"
    )
    return paths
