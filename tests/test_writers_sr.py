"""TID 1500 Measurement Report writer: dcmqi's tid1500reader reads it, the volume is the label
count times the voxel volume, highdicom parses it, dciodvfy finds no error; every outline of a
segment on a slice is a TID 1410 group with a closed POLYLINE SCOORD on that image whose
vertices lie exactly on the label map's boundary (what OHIF 3.x needs to show it)."""

from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from medxai.errors import InputError
from medxai.io.writers import create_photo_study, write_dicom_seg
from medxai.io.writers.dicom_sr import segment_measurements, write_dicom_sr
from tests.conftest import shared_path
from tests.helpers_dicom import assert_dciodvfy_clean, find_tool, load_series, shared_file

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

LABELS = [{"value": 1, "name": "lesion"}, {"value": 2, "name": "liver"}]
MODEL = {"model_name": "test-unet", "model_version": "1.2.3", "weights_sha256": "cd" * 32}


def _tid1500(path: Path, out: Path) -> dict:
    tool = find_tool("tid1500reader")
    if tool is None:
        pytest.skip("dcmqi's tid1500reader is not installed (pip install dcmqi)")
    run = subprocess.run([tool, "--inputDICOM", str(path), "--outputMetadata", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(out.read_text())


def _items(group: dict) -> dict[tuple[str, str], float]:
    """(quantity code, derivation code or '') -> value of one dcmqi measurement group."""
    out = {}
    for item in group["measurementItems"]:
        derivation = item.get("derivationModifier", {}).get("CodeValue", "")
        out[(item["quantity"]["CodeValue"], derivation)] = float(item["value"])
    return out


def test_sr_of_ct_series_reports_volume_and_saliency(tmp_path):
    folder = shared_file("dcmqi_data", "data", "segmentations", "ct-3slice")
    source, volume = load_series(sorted(folder.glob("*.dcm")))
    labels = np.zeros(volume.shape, np.uint8)
    labels[100:300, 150:260, :] = 1
    labels[120:140, 170:200, 1] = 0  # a hole
    labels[350:420, 300:330, :2] = 2
    labels[450:460, 300:330, 0] = 2  # a second component on slice 0
    seg = write_dicom_seg(labels, source, LABELS, MODEL["model_name"], MODEL["model_version"],
                          tmp_path / "seg.dcm")
    saliency = np.random.default_rng(0).random(volume.shape)
    first = source.first
    slice_step = float(np.linalg.norm(np.subtract(
        [float(v) for v in source.datasets[1].ImagePositionPatient],
        [float(v) for v in source.datasets[0].ImagePositionPatient])))
    spacing = [float(first.PixelSpacing[1]), float(first.PixelSpacing[0]), slice_step]
    path = write_dicom_sr(labels, source, seg, LABELS, tmp_path / "sr.dcm", spacing=spacing,
                          saliency={1: saliency}, method="gradcam", quality_score=0.75, **MODEL)
    assert_dciodvfy_clean(path)
    ds = pydicom.dcmread(path)
    assert ds.StudyInstanceUID == first.StudyInstanceUID
    evidence = {item.ReferencedSOPInstanceUID
                for study in ds.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for item in series.ReferencedSOPSequence}
    seg_uid = pydicom.dcmread(seg).SOPInstanceUID
    assert evidence == {d.SOPInstanceUID for d in source.datasets} | {seg_uid}

    report = _tid1500(path, tmp_path / "sr.json")
    groups = {g["ReferencedSegment"]: g for g in report["Measurements"] if "ReferencedSegment" in g}
    assert set(groups) == {1, 2}
    # one planar group per outline: lesion 3 slices, liver 2 slices + its second component
    assert len(report["Measurements"]) == 2 + 3 + 3
    voxel = float(np.prod(spacing))
    lesion = _items(groups[1])
    assert lesion[("118565006", "")] == pytest.approx(int((labels == 1).sum()) * voxel, rel=1e-9)
    assert _items(groups[2])[("118565006", "")] == pytest.approx(int((labels == 2).sum()) * voxel,
                                                                  rel=1e-9)
    inside = saliency[labels == 1]
    assert lesion[("130403", "255586005")] == pytest.approx(inside.mean(), rel=1e-9)
    assert lesion[("130403", "56851009")] == pytest.approx(inside.max(), rel=1e-9)
    assert lesion[("saliency-energy-share", "")] == pytest.approx(inside.sum() / saliency.sum())
    assert lesion[("quality-score", "")] == 0.75
    assert groups[1]["Finding"]["CodeValue"] == "52988006"  # SCT Lesion
    assert groups[1]["measurementAlgorithmIdentification"]["AlgorithmName"] == "test-unet"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sr = hd.sr.srread(path)
    parsed = sr.content.get_volumetric_roi_measurement_groups()
    assert len(parsed) == 2
    assert len(sr.content.get_planar_roi_measurement_groups()) == 6
    (size,) = parsed[0].get_measurements(name=codes.SCT.Volume)
    assert size.value == pytest.approx(int((labels == 1).sum()) * voxel, rel=1e-9)


def test_sr_of_a_photo_reports_area_in_pixels(tmp_path):
    picture = (np.random.default_rng(1).random((3, 20, 16)) * 255).astype(np.uint8)
    source = create_photo_study(picture, tmp_path / "photo.dcm")
    labels = np.zeros((20, 16), np.uint8)
    labels[3:9, 4:10] = 1
    seg = write_dicom_seg(labels, source, LABELS[:1], "test-unet", "1.2.3", tmp_path / "seg.dcm")
    path = write_dicom_sr(labels, source, seg, LABELS[:1], tmp_path / "sr.dcm", **MODEL)
    assert_dciodvfy_clean(path)
    report = _tid1500(path, tmp_path / "sr.json")
    volumetric, planar = report["Measurements"]
    for group in (volumetric, planar):
        area = next(i for i in group["measurementItems"]
                    if i["quantity"]["CodeValue"] == "42798000")
        assert float(area["value"]) == 36 and area["units"]["CodeValue"] == "{pixels}"
    assert volumetric["TrackingUniqueIdentifier"] == planar["TrackingUniqueIdentifier"]
    (outline,) = _outlines(pydicom.dcmread(path), [pydicom.dcmread(source.paths[0])])
    assert outline["image"] == 0 and outline["frame"] is None
    _assert_on_boundary(outline["points"], labels == 1)
    with pytest.raises(InputError, match="segments"):
        write_dicom_sr(labels, source, seg, LABELS, tmp_path / "x.dcm", **MODEL)


def test_segment_measurements_of_an_empty_segment():
    stats = segment_measurements(np.zeros((4, 4, 2), np.uint8), 1, [1, 1, 2], np.ones((4, 4, 2)))
    assert stats == {"count": 0, "volume_mm3": 0.0, "saliency_mean": 0.0, "saliency_max": 0.0,
                     "energy_share": 0.0}


# ---------------------------------------------------------------------------------------------
# image coordinates
# ---------------------------------------------------------------------------------------------

def _content(item, code: str):
    return [c for c in item.get("ContentSequence", [])
            if "ConceptNameCodeSequence" in c and c.ConceptNameCodeSequence[0].CodeValue == code]


def _outlines(ds, sources) -> list[dict]:
    """Every TID 1410 group's Image Region: tracking UID, image index, frame, (n, 2) points,
    area (NUM Area) and the group's tracking identifier."""
    index = {d.SOPInstanceUID: k for k, d in enumerate(sources)}
    (imaging,) = _content(ds, "126010")
    out = []
    for group in _content(imaging, "125007"):
        if group.ContentTemplateSequence[0].TemplateIdentifier != "1410":
            continue
        (region,) = _content(group, "111030")
        assert region.ValueType == "SCOORD" and region.GraphicType == "POLYLINE"
        assert region.RelationshipType == "CONTAINS"
        (selected,) = region.ContentSequence
        assert selected.RelationshipType == "SELECTED FROM" and selected.ValueType == "IMAGE"
        ref = selected.ReferencedSOPSequence[0]
        (area,) = _content(group, "42798000")
        out.append({
            "uid": _content(group, "112040")[0].UID,
            "name": _content(group, "112039")[0].TextValue,
            "image": index[ref.ReferencedSOPInstanceUID],
            "frame": ref.get("ReferencedFrameNumber"),
            "points": np.asarray(region.GraphicData, dtype=float).reshape(-1, 2),
            "area": float(area.MeasuredValueSequence[0].NumericValue),
        })
    return out


def _assert_on_boundary(points: np.ndarray, mask: np.ndarray) -> None:
    """Closed, and each vertex (column, row; pixel centres at +0.5) the midpoint of a pixel of
    ``mask`` ``(I, J)`` and a 4-neighbour outside it (outside the image counts as outside)."""
    assert len(points) >= 4 and np.array_equal(points[0], points[-1])
    padded = np.pad(mask, 1)
    for x, y in points:
        i, j = x - 0.5 + 1, y - 0.5 + 1  # padded index
        if float(i).is_integer():
            a, b = (int(i), int(np.floor(j))), (int(i), int(np.ceil(j)))
        else:
            assert float(j).is_integer(), (x, y)
            a, b = (int(np.floor(i)), int(j)), (int(np.ceil(i)), int(j))
        assert a != b and padded[a] != padded[b], (x, y)


def test_sr_of_the_mr_crop_series_outlines_each_segment_on_each_slice(tmp_path):
    """The hippocampus crop series (35 columns x 51 rows x 32 slices): one SCOORD per segment
    per slice, on the slice's own image, every vertex on the label map's boundary."""
    folder = shared_path("hippocampus", "dicom_study1", "13_HCropVolume")
    source, volume = load_series(sorted(folder.glob("*.dcm")))
    assert volume.shape == (35, 51, 32)
    i, j, k = np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij")
    labels = np.zeros(volume.shape, np.uint8)
    labels[((i - 17) / 9.0) ** 2 + ((j - 20) / 12.0) ** 2 + ((k - 12) / 6.0) ** 2 <= 1] = 1
    labels[((i - 15) / 6.0) ** 2 + ((j - 38) / 8.0) ** 2 + ((k - 20) / 7.0) ** 2 <= 1] = 2
    seg = write_dicom_seg(labels, source, LABELS, "test-unet", "1.2.3", tmp_path / "seg.dcm")
    spacing = [1.0, 1.0, 1.0]
    path = write_dicom_sr(labels, source, seg, LABELS, tmp_path / "sr.dcm", spacing=spacing,
                          **MODEL)
    assert_dciodvfy_clean(path)
    report = _tid1500(path, tmp_path / "sr.json")
    volumetric = {g["ReferencedSegment"]: g for g in report["Measurements"]
                  if "ReferencedSegment" in g}
    assert {n: _items(g)[("118565006", "")] for n, g in volumetric.items()} == {
        1: float((labels == 1).sum()), 2: float((labels == 2).sum())}

    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in source.paths]
    ds = pydicom.dcmread(path)
    outlines = _outlines(ds, sources)
    # the Image Library (TID 1600) lists the source images (older OHIF 3.x releases need it)
    (library,) = _content(ds, "111028")
    (library_group,) = _content(library, "126200")
    assert [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            for item in library_group.ContentSequence] == [d.SOPInstanceUID for d in sources]
    for value in (1, 2):
        mine = [o for o in outlines if o["name"].startswith(f"segment {value} ")]
        slices = [o["image"] for o in mine]
        assert slices == sorted(set(slices))  # one SCOORD per slice
        assert slices == [s for s in range(32) if (labels[..., s] == value).any()]
        for o in mine:
            assert o["frame"] is None
            assert o["name"] == f"segment {value} {LABELS[value - 1]['name']} slice {o['image'] + 1}"
            assert o["area"] == float((labels[..., o["image"]] == value).sum())
            _assert_on_boundary(o["points"], labels[..., o["image"]] == value)
        # the volumetric group shares the tracking UID of the segment's largest outline
        largest = max(mine, key=lambda o: o["area"])
        assert volumetric[value]["TrackingUniqueIdentifier"] == largest["uid"]
    # what OHIF 3.x needs to load the report at all: the groups of every tracking UID (OHIF
    # merges them into one measurement) hold at least one SCOORD
    (imaging,) = _content(ds, "126010")
    with_scoord: dict[str, bool] = {}
    for group in _content(imaging, "125007"):
        uid = _content(group, "112040")[0].UID
        has = any(item.ValueType in ("SCOORD", "SCOORD3D") for item in group.ContentSequence)
        with_scoord[uid] = with_scoord.get(uid, False) or has
    assert with_scoord and all(with_scoord.values())


def test_an_empty_segment_gets_no_group(tmp_path):
    picture = (np.random.default_rng(2).random((3, 12, 10)) * 255).astype(np.uint8)
    source = create_photo_study(picture, tmp_path / "photo.dcm")
    labels = np.zeros((12, 10), np.uint8)
    labels[2:5, 2:4] = 2
    seg = write_dicom_seg(labels, source, LABELS, "test-unet", "1.2.3", tmp_path / "seg.dcm")
    path = write_dicom_sr(labels, source, seg, LABELS, tmp_path / "sr.dcm", **MODEL)
    assert_dciodvfy_clean(path)
    report = _tid1500(path, tmp_path / "sr.json")
    assert [g.get("ReferencedSegment") for g in report["Measurements"]] == [2, None]


def test_sr_of_an_enhanced_multiframe_object_references_frames(tmp_path):
    """One multi-frame MR object (23 x 38, 3 frames): each outline is SELECTED FROM the object
    and the frame its slice is, and lies on the label map's boundary there."""
    from tests.helpers_dicom import load_multiframe

    source, volume = load_multiframe(
        shared_file("dcmqi_data", "data", "segmentations", "23x38x3", "multiframe", "mf.dcm"))
    labels = np.zeros(volume.shape[1:], dtype=np.uint8)
    labels[3:9, 5:12, 0] = 1
    labels[10:20, 30:35, 2] = 2
    seg = write_dicom_seg(labels, source, LABELS, "test-unet", "1.2.3", tmp_path / "seg.dcm")
    path = write_dicom_sr(labels, source, seg, LABELS, tmp_path / "sr.dcm", **MODEL)
    assert_dciodvfy_clean(path)
    _tid1500(path, tmp_path / "sr.json")
    outlines = _outlines(pydicom.dcmread(path), [pydicom.dcmread(source.paths[0])])
    assert [(o["name"], o["image"], o["frame"]) for o in outlines] == [
        ("segment 1 lesion slice 1", 0, source.frame_numbers[0]),
        ("segment 2 liver slice 3", 0, source.frame_numbers[2]),
    ]
    for o, (value, k) in zip(outlines, [(1, 0), (2, 2)]):
        _assert_on_boundary(o["points"], labels[:, :, k] == value)


def test_derived_sr_uids_do_not_move_with_the_number_of_outlines(tmp_path):
    """A result made again with the same UID seed keeps its SR's SOP and series UIDs even when
    one more outline appears (a float difference on another device can add one): the outlines'
    tracking UIDs are derived apart from the object's own UIDs."""
    from medxai.io.readers import load_image
    from medxai.io.writers import derived_uids

    loaded = load_image(shared_path("hippocampus", "dicom_study1", "13_HCropVolume"))
    info = [{"value": 1, "name": "anterior"}]
    uids = []
    for extra in (False, True):
        lab = np.zeros(tuple(loaded.image.shape[1:]), np.uint8)
        lab[10:20, 10:20, 5:8] = 1
        if extra:
            lab[30:34, 5:9, 5] = 1  # one more outline on one slice
        seg, sr = tmp_path / f"seg{extra}.dcm", tmp_path / f"sr{extra}.dcm"
        with derived_uids("one seed"):
            write_dicom_seg(lab, loaded.dicom, info, "m", "1", seg)
        with derived_uids("one seed maps"):
            write_dicom_sr(lab, loaded.dicom, seg, info, sr, model_name="m", model_version="1")
        ds = pydicom.dcmread(sr)
        outlines = [
            i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"
        ][0].ContentSequence
        uids.append((ds.SOPInstanceUID, ds.SeriesInstanceUID, len(outlines)))
    assert uids[0][2] < uids[1][2]  # the second report has more groups
    assert uids[0][:2] == uids[1][:2]


# ---------------------------------------------------------------------------------------------
# the same report, less work (issue 27)
# ---------------------------------------------------------------------------------------------

def _normalised(path: Path) -> pydicom.Dataset:
    """The dataset without the dates and times of writing."""
    ds = pydicom.dcmread(path)

    def strip(d):
        for elem in list(d):
            if elem.VR in ("DA", "TM", "DT"):
                del d[elem.tag]
            elif elem.VR == "SQ":
                for child in elem.value:
                    strip(child)
    strip(ds)
    return ds


def test_sr_from_the_seg_in_memory_equals_the_sr_from_its_file(tmp_path):
    from medxai.io.writers import derived_uids, dicom_seg_dataset, save_dicom, shared_source_headers

    picture = (np.random.default_rng(2).random((3, 24, 20)) * 255).astype(np.uint8)
    source = create_photo_study(picture, tmp_path / "photo.dcm")
    labels = np.zeros((24, 20), np.uint8)
    labels[3:9, 4:10] = 1
    labels[15:20, 12:18] = 1  # a second outline
    labels[2:5, 14:18] = 2
    saliency = {1: np.random.default_rng(3).random((24, 20))}
    seg = dicom_seg_dataset(labels, source, LABELS, "test-unet", "1.2.3")
    save_dicom(seg, tmp_path / "seg.dcm")
    kw = dict(saliency=saliency, method="gradcam", quality_score=0.5, **MODEL)
    with derived_uids("one seed"), shared_source_headers():
        in_memory = write_dicom_sr(labels, source, seg, LABELS, tmp_path / "a.dcm", **kw)
    with derived_uids("one seed"):
        from_file = write_dicom_sr(labels, source, tmp_path / "seg.dcm", LABELS,
                                   tmp_path / "b.dcm", **kw)
    assert_dciodvfy_clean(in_memory)
    a, b = _normalised(in_memory), _normalised(from_file)
    assert a.SOPInstanceUID == b.SOPInstanceUID  # the same derived UIDs: nothing else differs
    assert a == b
    assert len(_outlines(pydicom.dcmread(in_memory), [pydicom.dcmread(source.paths[0])])) == 3


def test_measurements_sit_where_highdicoms_templates_put_them():
    from medxai.io.writers.dicom_sr import _insert_measurements

    measurements = [
        hd.sr.Measurement(name=codes.SCT.Area, value=v, unit=codes.UCUM.SquareMillimeter)
        for v in (1.0, 2.0)
    ]
    tracking = hd.sr.TrackingIdentifier(uid=hd.UID("1.2.3.4"), identifier="lesion")
    segment = hd.sr.ReferencedSegment(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4", sop_instance_uid="1.2.3.5",
        segment_number=1,
        source_images=[hd.sr.SourceImageForSegmentation("1.2.840.10008.5.1.4.1.1.7", "1.2.3.6")],
    )
    expected = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, referenced_segment=segment, measurements=measurements)
    ours = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, referenced_segment=segment)
    _insert_measurements(ours, measurements, references=len(segment))
    assert ours[0] == expected[0]
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array([[1, 1], [4, 1], [4, 4], [1, 1]], np.float32),
        source_image=hd.sr.SourceImageForRegion("1.2.840.10008.5.1.4.1.1.7", "1.2.3.6"),
    )
    expected = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, referenced_region=region, measurements=measurements[:1])
    ours = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, referenced_region=region)
    _insert_measurements(ours, measurements[:1], references=1)
    assert ours[0] == expected[0]


def test_the_sr_file_is_the_bytes_pydicom_writes(tmp_path, monkeypatch):
    """The report is encoded with its items marked as encoded and its outlines' Graphic Data
    as raw float32 (medxai.io.writers.dicom_sr._encoded): the file is byte for byte what
    pydicom's own save_as writes of the same report, every outline's points in it (a photo
    with a hole, a ring and one-pixel components, two labels), and the marks are taken off."""
    from medxai.io.writers import dicom_sr

    picture = (np.random.default_rng(4).random((3, 40, 36)) * 255).astype(np.uint8)
    source = create_photo_study(picture, tmp_path / "photo.dcm")
    labels = np.zeros((40, 36), np.uint8)
    labels[3:20, 4:30] = 1
    labels[8:12, 10:14] = 0  # a hole
    labels[25:35, 5:15] = 2
    labels[28:32, 8:12] = 0  # a ring
    labels[38, 30] = labels[36, 33] = 1
    seg = write_dicom_seg(labels, source, LABELS, "test-unet", "1.2.3", tmp_path / "seg.dcm")
    reports = []
    encoded = dicom_sr._encoded

    def keep(sr):
        reports.append(sr)
        return encoded(sr)

    monkeypatch.setattr(dicom_sr, "_encoded", keep)
    path = write_dicom_sr(labels, source, seg, LABELS, tmp_path / "sr.dcm", **MODEL)
    (sr,) = reports
    assert all(item.original_encoding == (None, None) for item in _all_items(sr))
    plain = tmp_path / "plain.dcm"
    sr.save_as(plain, enforce_file_format=True)  # converts the raw Graphic Data back
    assert path.read_bytes() == plain.read_bytes()
    assert_dciodvfy_clean(path)
    outlines = _outlines(pydicom.dcmread(path), [pydicom.dcmread(source.paths[0])])
    want = [o.points for v in (1, 2) for o in dicom_sr.segment_outlines(labels, v)]
    assert len(outlines) == len(want) == 4
    for o, points in zip(outlines, want, strict=True):
        np.testing.assert_array_equal(o["points"], points.astype(np.float32))
        _assert_on_boundary(o["points"], labels == int(o["name"].split()[1]))


def _all_items(ds):
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield item
                yield from _all_items(item)
