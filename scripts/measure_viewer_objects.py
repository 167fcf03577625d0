"""Which readers decode medxai's DICOM objects correctly (issue 26: the SEG default and the
Parametric Map encoding). Not a test: a measurement, printed as a table.

For the hippocampus MR crop series (35 columns x 51 rows x 32 slices: 1785-pixel frames, so a
BINARY frame is 1785 bits and frames after the first do not start on a byte boundary), a photo
(33 x 45, 1485-bit frames) and a DX radiograph, it writes the SEG (binary and labelmap) and the
Parametric Map (float32 and uint16) of a synthetic label map / map, then decodes each object with

- pydicom (``pixel_array``, frames mapped back through the per-frame functional groups),
- highdicom (``segread`` + ``get_pixels_by_source_instance`` / ``imread`` + the mapping),
- dcmqi (``segimage2itkimage`` / ``paramap2itkimage``),
- dciodvfy (errors only),
- Orthanc (upload, then ``/instances/{id}/preview``: does its own renderer draw it),

and compares with what was written (exact for SEG, within half a step for uint16 PM).

    PYTHONPATH=$PWD python scripts/measure_viewer_objects.py [--orthanc]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medxai.io.writers import create_photo_study, write_dicom_pm, write_dicom_seg  # noqa: E402
from tests.helpers_dicom import find_tool, load_series, load_single  # noqa: E402

DATA = ROOT.parent.parent / "shared" / "data"
LABELS = [{"value": 1, "name": "anterior"}, {"value": 2, "name": "posterior"}]


def _inputs(tmp: Path):
    crop = DATA / "hippocampus" / "dicom_study1" / "13_HCropVolume"
    source, volume = load_series(sorted(crop.glob("*.dcm")))
    i, j, k = np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij")
    mr = np.zeros(volume.shape, np.uint8)
    mr[((i - 17) / 9.0) ** 2 + ((j - 20) / 12.0) ** 2 + ((k - 12) / 6.0) ** 2 <= 1] = 1
    mr[((i - 15) / 6.0) ** 2 + ((j - 38) / 8.0) ** 2 + ((k - 20) / 7.0) ** 2 <= 1] = 2
    yield "MR crop 35x51x32", source, mr
    picture = (np.random.default_rng(1).random((3, 33, 45)) * 255).astype(np.uint8)
    photo_src = create_photo_study(picture, tmp / "photo.dcm")
    photo = np.zeros((33, 45), np.uint8)
    photo[5:20, 10:30] = 1
    photo[22:30, 5:15] = 2
    yield "photo 33x45", photo_src, photo
    dx_src, dx_img = load_single(DATA / "dicom" / "highdicom_test_files" / "dx_image.dcm")
    dx = np.zeros(dx_img.shape[1:], np.uint8)
    dx[dx.shape[0] // 4: dx.shape[0] // 2, dx.shape[1] // 4: dx.shape[1] // 2] = 1
    dx[dx.shape[0] // 2 + 5: dx.shape[0] // 2 + 40, 10:50] = 2
    yield f"DX {dx.shape[0]}x{dx.shape[1]}", dx_src, dx


def _source_index(source) -> dict[str, int]:
    return {str(ds.SOPInstanceUID): k for k, ds in enumerate(source.datasets)}


def _pydicom_seg(path: Path, source, shape) -> np.ndarray:
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.reshape(-1, int(ds.Rows), int(ds.Columns))
    out = np.zeros((shape[0], shape[1], shape[2] if len(shape) == 3 else 1), np.uint8)
    index = _source_index(source)
    labelmap = ds.SegmentationType == "LABELMAP"
    for n, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        k = index[str(ref.ReferencedSOPInstanceUID)]
        if labelmap:
            out[:, :, k] = frames[n].T
        else:
            number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            out[:, :, k][frames[n].T > 0] = number
    return out.reshape(shape)


def _highdicom_seg(path: Path, source, shape) -> np.ndarray:
    seg = hd.seg.segread(path)
    uids = [str(ds.SOPInstanceUID) for ds in source.datasets]
    pixels = seg.get_pixels_by_source_instance(uids, combine_segments=True,
                                               skip_overlap_checks=True)
    return np.transpose(pixels, (2, 1, 0)).reshape(shape).astype(np.uint8)


def _dcmqi_seg(path: Path, source, shape, out: Path) -> np.ndarray | str:
    import SimpleITK as sitk

    tool = find_tool("segimage2itkimage")
    if tool is None:
        return "not installed"
    out.mkdir()
    run = subprocess.run([tool, "--inputDICOM", str(path), "--outputDirectory", str(out),
                          "--outputType", "nrrd", "--mergeSegments"],
                         capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        return f"exit {run.returncode}: {(run.stderr or run.stdout).strip().splitlines()[-1:]}"
    files = sorted(out.glob("*.nrrd"))
    if not files:
        return "no output"
    img = sitk.ReadImage(str(files[0]))
    arr = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0)).astype(np.uint8)
    if len(shape) == 2 or arr.shape == tuple(shape):
        return arr.reshape(shape)
    # dcmqi writes the slices the SEG has frames for: place them by position along the normal
    normal = np.cross(*np.reshape([float(v) for v in source.first.ImageOrientationPatient], (2, 3)))
    positions = [float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient]))
                 for ds in source.datasets]
    k0 = int(np.argmin(np.abs(np.asarray(positions) - float(np.dot(normal, img.GetOrigin())))))
    full = np.zeros(shape, np.uint8)
    full[:, :, k0:k0 + arr.shape[2]] = arr
    return full


def _dciodvfy(path: Path) -> str:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=300)
    errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
    return "clean" if not errors else f"{len(errors)} errors: {errors[0][:90]}"


def _verdict(decoded, expected) -> str:
    if isinstance(decoded, str):
        return decoded
    if decoded.shape != expected.shape:
        return f"shape {decoded.shape}"
    wrong = int((decoded != expected).sum())
    return "exact" if wrong == 0 else f"{wrong} pixels wrong"


def _pm_values(path: Path, source, expected: np.ndarray, out: Path) -> dict[str, str]:
    import SimpleITK as sitk

    ds = pydicom.dcmread(path)
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    slope, intercept = float(mapping.RealWorldValueSlope), float(mapping.RealWorldValueIntercept)
    step = slope if "PixelData" in ds else 0.0
    frames = ds.pixel_array.reshape(-1, int(ds.Rows), int(ds.Columns)).astype(np.float64)
    got = _by_source(ds, frames * slope + intercept, source).reshape(expected.shape)
    res = {"pydicom": _close(got, expected, step)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = hd.imread(str(path))
        vol = image.get_volume(apply_real_world_transform=True)
    # highdicom's volume: (slices, rows, columns) with an LPS affine; its slices are put back in
    # source order by their position along the source's normal
    arr = np.asarray(vol.array, dtype=np.float64)
    normal = np.cross(*np.reshape([float(v) for v in ds.SharedFunctionalGroupsSequence[0]
                                   .PlaneOrientationSequence[0].ImageOrientationPatient], (2, 3)))
    along = [float(np.dot(normal, vol.affine[:3, :3] @ [k, 0, 0] + vol.affine[:3, 3]))
             for k in range(arr.shape[0])]
    arr = np.transpose(arr[np.argsort(along)], (2, 1, 0)).reshape(expected.shape)
    res["highdicom"] = _close(arr, expected, step)
    tool = find_tool("paramap2itkimage")
    out.mkdir()
    run = subprocess.run([tool, "--inputDICOM", str(path), "--outputDirectory", str(out)],
                         capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        res["dcmqi"] = f"exit {run.returncode}"
    else:
        img = sitk.ReadImage(str(out / "pmap.nrrd"))
        a = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0)).reshape(expected.shape)
        res["dcmqi"] = _close(a.astype(np.float64), expected, step)
    return res


def _by_source(ds, frames: np.ndarray, source) -> np.ndarray:
    """Stored frames ``(n, rows, columns)`` -> ``(I, J, K)`` in source order."""
    index = _source_index(source)
    out = np.zeros((int(ds.Columns), int(ds.Rows), len(source.datasets)))
    for n, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        out[:, :, index[str(ref.ReferencedSOPInstanceUID)]] = frames[n].T
    return out


def _close(got: np.ndarray, expected: np.ndarray, step: float) -> str:
    err = float(np.abs(got - expected.astype(np.float64)).max())
    if err == 0 or err <= step / 2 + 1e-12:
        return "exact" if err == 0 else "within half a step"
    flipped = [float(np.abs(np.flip(got, a) - expected).max()) for a in range(got.ndim)]
    return f"max error {err:.3g}" + (" (slices flipped)" if min(flipped) <= step / 2 + 1e-7 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orthanc", action="store_true", help="also ask Orthanc to render them")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as name, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tmp = Path(name)
        written = []
        for what, source, labels in _inputs(tmp):
            for seg_type in ("binary", "labelmap"):
                path = tmp / f"{what.split()[0]}_seg_{seg_type}.dcm"
                write_dicom_seg(labels, source, LABELS, "m", "1", path, seg_type=seg_type)
                row = {"input": what, "object": f"SEG {seg_type}", "dciodvfy": _dciodvfy(path)}
                row["pydicom"] = _verdict(_pydicom_seg(path, source, labels.shape), labels)
                try:
                    row["highdicom"] = _verdict(_highdicom_seg(path, source, labels.shape), labels)
                except Exception as exc:  # noqa: BLE001 - a measurement records any failure
                    row["highdicom"] = f"{type(exc).__name__}: {exc}"[:80]
                row["dcmqi"] = _verdict(_dcmqi_seg(path, source, labels.shape, tmp / path.stem), labels)
                results.append(row)
                written.append((row, path))
            values = np.random.default_rng(0).random(labels.shape) * 3 - 1
            values = values.astype(np.float32)
            for encoding in ("float32", "uint16"):
                path = tmp / f"{what.split()[0]}_pm_{encoding}.dcm"
                write_dicom_pm(values, source, path, model_name="m", model_version="1",
                               method="gradcam", encoding=encoding)
                row = {"input": what, "object": f"PM {encoding}", "dciodvfy": _dciodvfy(path)}
                row.update(_pm_values(path, source, values, tmp / path.stem))
                results.append(row)
                written.append((row, path))
        if args.orthanc:
            _orthanc(written, tmp)
    keys = ["input", "object", "dciodvfy", "pydicom", "highdicom", "dcmqi"]
    if args.orthanc:
        keys.append("orthanc preview")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in results:
        print("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |")
    print(json.dumps({"highdicom": hd.__version__, "pydicom": pydicom.__version__}))


def _orthanc(written, tmp: Path) -> None:
    import requests

    from tests.orthanc_server import Orthanc, free_port

    server = Orthanc(tmp / "orthanc", free_port()).start()
    try:
        for row, path in written:
            info = server.upload(path)
            r = requests.get(f"{server.url}/instances/{info['ID']}/preview", timeout=60)
            row["orthanc preview"] = "PNG" if r.ok else f"HTTP {r.status_code}"
    finally:
        server.stop()


if __name__ == "__main__":
    main()
