"""medxai listen against a real Orthanc (the PACS): Orthanc C-STOREs studies to the node, the node
segments them and sends the SEG back by C-STORE, or by STOW-RS to Orthanc's DICOMweb plugin; the
test checks through Orthanc's REST API that the SEG is in the source study and references the
source instances. A CT series through the skin-lesion model is recorded as "does not fit".
"""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import ROOT, shared_path
from tests.orthanc_server import Orthanc, free_port, orthanc_exe, seg_sources

DERMOSCOPY = ROOT / "sample_data" / "dermoscopy.dcm"


@pytest.fixture(scope="module")
def lesion_model():
    from medxai.models.registry import load_model

    return load_model(None)


def restamp(src: Path, dest: Path) -> Path:
    """A copy of a real instance as a new study (new Study/Series/SOP Instance UIDs)."""
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest, enforce_file_format=True)
    return dest


def real_ct_series(dest: Path) -> list[Path]:
    """The real 20-slice CT series (JPEG 2000 lossless) with its blanked UIDs filled in, as a
    PACS would hold it: SOP Class/Instance UID from the file meta header, one new study and
    series UID (and Frame of Reference) for all slices. Pixel data are untouched."""
    src = shared_path("dicom", "totalsegmentator_tests", "tests", "reference_files",
                      "example_ct_dicom")
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame
        out.append(dest / f"{f.name}.dcm")
        ds.save_as(out[-1], enforce_file_format=True)
    return out


def wait_until(cond, timeout_s: float, poll_s: float = 0.5):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(poll_s)
    return cond()


def make_node(tmp_path: Path, port: int, model, **kw):
    from medxai.node import DicomNode, NodeConfig

    cfg = NodeConfig(workdir=tmp_path / "work", port=port, host="127.0.0.1", allow=["ORTHANC"],
                     idle_s=1.0, model=model, retry_base_s=0.5, retry_max_s=2.0,
                     min_free_bytes=0, **kw)
    return DicomNode(cfg)


def _study_row(node, study_uid: str):
    rows = [s for s in node.store.status()["study_list"] if s["study_instance_uid"] == study_uid]
    return rows[0] if rows else None


def test_orthanc_routes_studies_and_gets_seg_back_by_cstore(tmp_path: Path, lesion_model):
    orthanc_exe()
    ct_files = real_ct_series(tmp_path / "ct")
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", node_port).start()
    try:
        derm = orthanc.upload(DERMOSCOPY)
        ct = [orthanc.upload(f) for f in ct_files]
        assert len({c["ParentStudy"] for c in ct}) == 1
        src = pydicom.dcmread(DERMOSCOPY, stop_before_pixels=True)
        ct_uid = str(pydicom.dcmread(ct_files[0], stop_before_pixels=True).StudyInstanceUID)
        node = make_node(tmp_path, node_port, lesion_model,
                         send_to=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
                         formats=("dicom-seg", "dicom-pm", "dicom-sr", "json"),
                         explain="gradcam")
        node.start()
        try:
            orthanc.store_to_medxai([derm["ParentStudy"], ct[0]["ParentStudy"]])
            segs = orthanc.wait_for_segs(derm["ParentStudy"], 1, timeout_s=600)
            assert len(segs) == 1, "no SEG came back to Orthanc"
            seg = segs[0]
            assert seg["StudyInstanceUID"] == str(src.StudyInstanceUID)
            assert seg_sources(seg) == {str(src.SOPInstanceUID)}
            assert seg["Modality"] == "SEG"
            # the TID 1500 SR comes back into the same study too
            srs = wait_until(lambda: [t for t in orthanc.study_instances(derm["ParentStudy"])
                                      if t.get("Modality") == "SR"], 60)
            assert len(srs) == 1 and srs[0]["StudyInstanceUID"] == str(src.StudyInstanceUID)
            # and the saliency and the uncertainty (the model runs with TTA) as Parametric Maps
            # (SOP class 1.2.840.10008.5.1.4.1.1.30)
            pms = wait_until(lambda: [t for t in orthanc.study_instances(derm["ParentStudy"])
                                      if t.get("SOPClassUID") == "1.2.840.10008.5.1.4.1.1.30"],
                             60)
            pms = wait_until(lambda: len(p := [t for t in orthanc.study_instances(
                derm["ParentStudy"]) if t.get("SOPClassUID") == "1.2.840.10008.5.1.4.1.1.30"])
                == 2 and p, 60)
            assert pms and len(pms) == 2
            assert {p["StudyInstanceUID"] for p in pms} == {str(src.StudyInstanceUID)}
            # the CT study went through the same selection as `medxai batch`: recorded, no crash
            row = wait_until(lambda: (r := _study_row(node, ct_uid)) and
                             r["state"] == "processed" and r, 300)
            assert row and row["state"] == "processed", row
            assert row["n_instances"] == 20
            assert "does not fit the model" in (row["reason"] or ""), row
            assert row["summary"]["results"] == 0
            assert orthanc.segs_of(ct[0]["ParentStudy"]) == []
            st = node.store.status()
            assert st["outbox"]["sent"] == 4 and st["outbox"]["pending"] == 0  # SEG, 2 PM, SR
            assert st["instances_received"] == 21
            # the same study routed again, now with the node's own 4 results in it: the node
            # has them all (a `duplicate` event each, emitted before the C-STORE answer, so
            # they are there when Orthanc's synchronous job ends); the study is not re-opened,
            # so nothing new is made or sent
            derm_row = _study_row(node, str(src.StudyInstanceUID))
            own = {r["sop_instance_uid"] for r in node.store.query(
                "SELECT sop_instance_uid FROM outbox")}
            assert len(own) == 4
            orthanc.store_to_medxai([derm["ParentStudy"]])
            dups = [e for e in node.store.events(500) if e["event"] == "duplicate"]
            assert sorted((e["sop_instance_uid"], e["own_result"]) for e in dups) == sorted(
                [(str(src.SOPInstanceUID), False)] + [(uid, True) for uid in own])
            assert {e["calling_ae"] for e in dups} == {"ORTHANC"}
            assert _study_row(node, str(src.StudyInstanceUID)) == derm_row
            assert node.store.status()["instances_received"] == 21
            assert node.store.status()["outbox"]["sent"] == 4
            assert len(orthanc.segs_of(derm["ParentStudy"])) == 1
        finally:
            node.stop()
    finally:
        orthanc.stop()


def test_orthanc_gets_seg_by_stow_rs(tmp_path: Path, lesion_model):
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", node_port, dicomweb=True).start()
    try:
        f = restamp(DERMOSCOPY, tmp_path / "in" / "derm.dcm")
        src = pydicom.dcmread(f, stop_before_pixels=True)
        up = orthanc.upload(f)
        node = make_node(tmp_path, node_port, lesion_model,
                         stow=f"{orthanc.url}/dicom-web")
        node.start()
        try:
            orthanc.store_to_medxai([up["ParentStudy"]])
            segs = orthanc.wait_for_segs(up["ParentStudy"], 1, timeout_s=600)
            assert len(segs) == 1, node.store.status()["events"][-5:]
            assert segs[0]["StudyInstanceUID"] == str(src.StudyInstanceUID)
            assert seg_sources(segs[0]) == {str(src.SOPInstanceUID)}
            sent = [e for e in node.store.events(100) if e["event"] == "sent"]
            assert sent and sent[0]["destination"].startswith("http://127.0.0.1")
        finally:
            node.stop()
    finally:
        orthanc.stop()


def test_pacs_doc_shows_the_tests_orthanc_configuration():
    """docs/pacs.md shows the exact configuration these tests start Orthanc with."""
    import json
    import re

    from tests.orthanc_server import orthanc_config

    text = (ROOT / "docs" / "pacs.md").read_text()
    blocks = [json.loads(b) for b in re.findall(r"```json\n(\{\n.*?\n\})\n```", text, re.S)]
    expected = orthanc_config("/var/lib/orthanc/db", 8042, 4242, 11112,
                              plugin="/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
    assert expected in blocks
