"""The DICOM node's receiving side with independent senders: dcmtk's echoscu/storescu and
pynetdicom; access control, durable storage under hashed names, malformed data sets, limits, a
dropped association mid-series; and the outbox surviving a restart."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import ROOT, require_tool
from tests.orthanc_server import free_port

DERMOSCOPY = ROOT / "sample_data" / "dermoscopy.dcm"
CT_SERIES = ROOT / "sample_data" / "ct_oblique_series"


@pytest.fixture(scope="module")
def lesion_model():
    from medxai.models.registry import load_model

    return load_model(None)


@pytest.fixture
def node_factory(tmp_path: Path, lesion_model):
    from medxai.node import DicomNode, NodeConfig

    nodes = []

    def make(**kw):
        args = {"workdir": tmp_path / "work", "port": free_port(), "host": "127.0.0.1",
                "allow": ["ORTHANC", "STORESCU"], "idle_s": 3600.0, "model": lesion_model,
                "min_free_bytes": 0}
        args.update(kw)
        node = DicomNode(NodeConfig(**args))
        node.start()
        nodes.append(node)
        return node

    yield make
    for n in nodes:
        if n._server is not None or n._threads:
            n.stop(timeout_s=30)


def _scu(port: int, calling: str = "ORTHANC"):
    from pynetdicom import AE, StoragePresentationContexts

    ae = AE(ae_title=calling)
    ae.requested_contexts = StoragePresentationContexts[:120]
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDXAI")
    assert assoc.is_established
    return assoc


def _events(node, name: str) -> list[dict]:
    return [e for e in node.store.events(500) if e["event"] == name]


def test_echoscu_and_unknown_ae_refused(node_factory):
    exe = require_tool("echoscu")
    node = node_factory()
    ok = subprocess.run(check=False, args=[exe, "-aet", "STORESCU", "-aec", "MEDXAI", "127.0.0.1",
                         str(node.port)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(check=False, args=[exe, "-aet", "INTRUDER", "-aec", "MEDXAI", "127.0.0.1",
                          str(node.port)], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
    assert "reject" in (bad.stdout + bad.stderr).lower()
    rejected = _events(node, "association_rejected")
    assert [e["calling_ae"] for e in rejected] == ["INTRUDER"]
    assert _events(node, "echo")[0]["calling_ae"] == "STORESCU"


def test_storescu_instances_stored_durably_under_hashed_names(node_factory, tmp_path: Path):
    exe = require_tool("storescu")
    node = node_factory()
    files = [DERMOSCOPY] + sorted(CT_SERIES.iterdir())
    r = subprocess.run(check=False, args=[exe, "-aet", "STORESCU", "-aec", "MEDXAI", "127.0.0.1", str(node.port),
                        *map(str, files)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    st = node.store.status()
    assert st["instances_received"] == len(files)
    assert st["studies"]["receiving"] == 2
    rows = node.store.query("SELECT * FROM instances")
    by_uid = {r["sop_instance_uid"]: r for r in rows}
    for f in files:
        src = pydicom.dcmread(f)
        row = by_uid[str(src.SOPInstanceUID)]
        stored = node.store.workdir / row["path"]
        # names are hashes: nothing from the header is in the path
        assert str(src.SOPInstanceUID) not in row["path"]
        assert str(src.StudyInstanceUID) not in row["path"]
        assert stored.parent.parent.parent == node.store.workdir / "studies"
        back = pydicom.dcmread(stored)
        assert back.SOPInstanceUID == src.SOPInstanceUID
        assert back.PixelData == src.PixelData
    assert not list((node.store.workdir / "tmp").iterdir())


def test_malformed_dataset_refused_association_goes_on(node_factory, tmp_path: Path):
    from pynetdicom import _config

    node = node_factory()
    data = DERMOSCOPY.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) - 200_000])
    bad_uid = tmp_path / "bad_uid.dcm"
    ds = pydicom.dcmread(DERMOSCOPY)
    ds.StudyInstanceUID = "../../../../etc"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(bad_uid)
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are
    try:
        assoc = _scu(node.port)
        s1 = assoc.send_c_store(truncated)
        s2 = assoc.send_c_store(bad_uid)
        s3 = assoc.send_c_store(DERMOSCOPY)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
    assert s1.Status == 0xC000 and "truncated" in str(s1.get("ErrorComment", "")).lower()
    assert s2.Status == 0xC000
    assert s3.Status == 0x0000
    st = node.store.status()
    assert st["instances_received"] == 1
    assert st["refused"] == 2
    assert not (node.store.workdir.parent / "etc").exists()
    reasons = [e["reason"] for e in _events(node, "store_refused")]
    assert "truncated" in reasons[0] and "Study Instance UID" in reasons[1]


def test_limits_out_of_resources(node_factory, tmp_path: Path):
    node = node_factory(max_instance_bytes=100_000)
    assoc = _scu(node.port)
    big = assoc.send_c_store(DERMOSCOPY)  # 0.9 MB
    small = assoc.send_c_store(min(CT_SERIES.iterdir()))
    assoc.release()
    assert big.Status == 0xA700 and small.Status == 0x0000
    node.stop()
    node = node_factory(workdir=tmp_path / "work2", min_free_bytes=1 << 60, max_associations=1)
    assoc = _scu(node.port)
    assert assoc.send_c_store(DERMOSCOPY).Status == 0xA700
    # one association at a time: a second one is rejected while the first is open
    from pynetdicom import AE

    ae = AE(ae_title="ORTHANC")
    ae.add_requested_context("1.2.840.10008.1.1")
    second = ae.associate("127.0.0.1", node.port, ae_title="MEDXAI")
    assert second.is_rejected
    assoc.release()
    assert node.store.status()["instances_received"] == 0


def test_dropped_association_mid_series_then_rest(node_factory):
    """What arrived before the abort is kept; the study completes (once) when the rest arrives;
    the CT volume through the skin-lesion model is recorded as not fitting, not a crash."""
    node = node_factory(idle_s=10.0)
    files = sorted(CT_SERIES.iterdir())
    assoc = _scu(node.port)
    for f in files[:5]:
        assert assoc.send_c_store(f).Status == 0x0000
    assoc.abort()
    st = node.store.status()
    assert st["instances_received"] == 5 and st["studies"]["receiving"] == 1
    assoc = _scu(node.port)
    for f in files[5:]:
        assert assoc.send_c_store(f).Status == 0x0000
    assoc.release()
    end = time.monotonic() + 300
    while time.monotonic() < end and node.store.status()["studies"]["processed"] < 1:
        time.sleep(0.5)
    st = node.store.status()
    assert st["studies"]["processed"] == 1, st
    study = st["study_list"][0]
    assert study["n_instances"] == len(files)
    assert "does not fit the model" in study["reason"]
    # (on a slow machine the first part may be processed on its own first; the last run has
    # every instance)
    assert _events(node, "processing")[-1]["instances"] == len(files)
    from medxai.batch import Manifest

    with Manifest(node.store.study_dir(study["key"]) / "results" / "manifest.sqlite") as man:
        series = man.series()
    assert [s["n_files"] for s in series] == [len(files)]
    assert series[0]["state"] == "skipped"


def test_outbox_survives_restart(tmp_path: Path):
    from medxai.node import NodeStore

    store = NodeStore(tmp_path / "w")
    f = store.workdir / "studies" / "st_x" / "results" / "seg.dcm"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"x")
    assert store.enqueue("st_x", [(f, "1.2.3", "1.2.840.10008.5.1.4.1.1.66.4")], "dimse:A@h:1") == 1
    assert store.enqueue("st_x", [(f, "1.2.3", "1.2.840.10008.5.1.4.1.1.66.4")], "dimse:A@h:1") == 0
    (row,) = store.due()
    store.mark_retry([row["id"]], "connection refused", base_s=0.2, max_s=1.0, max_attempts=None)
    assert store.due() == []
    store.close()
    store = NodeStore(tmp_path / "w")
    time.sleep(0.25)
    (row,) = store.due()
    assert row["attempts"] == 1 and row["last_error"] == "connection refused"
    store.mark_sent([row["id"]])
    assert store.status()["outbox"] == {"pending": 0, "sent": 1, "failed": 0}
    store.close()


def test_destination_parsing():
    from medxai.errors import InputError
    from medxai.node import parse_destination

    d = parse_destination("ORTHANC@pacs.example.org:4242")
    assert (d.kind, d.ae_title, d.host, d.port) == ("dimse", "ORTHANC", "pacs.example.org", 4242)
    assert parse_destination(d.key) == d
    s = parse_destination("http://127.0.0.1:8042/dicom-web/")
    assert s.kind == "stow" and s.url == "http://127.0.0.1:8042/dicom-web"
    for bad in ("ORTHANC", "ORTHANC@host", "A@h:99999", "TOOLONGAETITLE12345@h:1"):
        with pytest.raises(InputError):
            parse_destination(bad)


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 made now (openssl CLI)."""
    exe = require_tool("openssl")
    cert, key = folder / "node.pem", folder / "node.key"
    r = subprocess.run(check=False, args=[
        exe, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
        str(cert), "-days", "1", "-subj", "/CN=medxai-test",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return cert, key


def test_tls_with_client_certificates(node_factory, tmp_path: Path):
    from medxai.node import TlsConfig, parse_destination, send_files

    cert, key = _self_signed(tmp_path)
    node = node_factory(tls=TlsConfig(str(cert), str(key), str(cert)))
    dest = parse_destination(f"MEDXAI@127.0.0.1:{node.port}")
    ok = send_files([DERMOSCOPY], dest, calling_ae="ORTHANC",
                    tls=TlsConfig(str(cert), str(key), str(cert)))
    assert ok.sent == [str(DERMOSCOPY)], ok
    # without TLS, and with TLS but no client certificate: nothing gets in
    plain = send_files([DERMOSCOPY], dest, calling_ae="ORTHANC", timeout_s=10)
    assert plain.sent == [] and plain.error
    anon = send_files([DERMOSCOPY], dest, calling_ae="ORTHANC", tls=TlsConfig(ca=str(cert)),
                      timeout_s=10)
    assert anon.sent == [] and anon.error
    assert node.store.status()["instances_received"] == 1


def test_send_command(node_factory, tmp_path: Path):
    import json

    from click.testing import CliRunner

    from medxai.cli.main import cli

    node = node_factory()
    files = sorted(CT_SERIES.iterdir())[:3]
    r = CliRunner().invoke(cli, ["send", *map(str, files), "--to",
                                 f"MEDXAI@127.0.0.1:{node.port}", "--ae-title", "ORTHANC",
                                 "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)["sent"]) == 3
    assert node.store.status()["instances_received"] == 3
    r = CliRunner().invoke(cli, ["send", str(files[0]), "--to",
                                 f"MEDXAI@127.0.0.1:{node.port}", "--ae-title", "NOBODY"])
    assert r.exit_code == 1
    r = CliRunner().invoke(cli, ["send", str(files[0])])
    assert r.exit_code == 2


# -- results made again keep their UIDs -----------------------------------------------------------


def test_derived_uids_repeat_per_seed_and_stay_in_their_block():
    import threading

    from medxai.io.writers._common import derived_uids, new_uid
    from medxai.node.store import is_valid_uid

    with derived_uids("seed a"):
        a = [new_uid() for _ in range(3)]
    with derived_uids("seed a"):
        again = [new_uid() for _ in range(3)]
    with derived_uids("seed b"):
        b = [new_uid() for _ in range(3)]
    assert a == again
    assert len(set(a) | set(b)) == 6
    assert all(is_valid_uid(u) for u in a + b)
    # outside a block (and with no seed), and in another thread during a block: random
    outside = [new_uid(), new_uid()]
    with derived_uids(None):
        outside.append(new_uid())
    in_thread: list[str] = []
    with derived_uids("seed a"):
        t = threading.Thread(target=lambda: in_thread.append(new_uid()))
        t.start()
        t.join()
    assert len(set(outside + in_thread) | set(a)) == len(outside) + 1 + len(a)
    assert all(u.startswith("1.2.826.0.1.3680043.10.511.3.") for u in outside + in_thread)


def test_result_uid_seed_names_sources_model_and_settings(lesion_model, tmp_path: Path):
    """Two results share their UIDs only when source, model and result settings agree: the
    device and the window batch size do not count; formats, SEG type and saliency do; a picture
    (no DICOM source) gets none."""
    import dataclasses

    from medxai.io.readers import load_image
    from medxai.pipeline import SegmentOptions, result_uid_seed

    loaded = load_image(DERMOSCOPY)
    fmts = ["dicom-seg", "dicom-sr"]
    base = SegmentOptions(formats=fmts, derived_uids=True)
    seed = result_uid_seed(loaded, lesion_model, base, fmts)
    assert seed and str(loaded.dicom.first.SOPInstanceUID) in seed
    same = SegmentOptions(formats=fmts, derived_uids=True, device="cpu", sw_batch_size=8,
                          overwrite=True)
    assert result_uid_seed(loaded, lesion_model, same, fmts) == seed
    others = [
        result_uid_seed(loaded, lesion_model, dataclasses.replace(base, seg_type="labelmap"),
                        fmts),
        result_uid_seed(loaded, lesion_model, dataclasses.replace(base, explain="none"), fmts),
        result_uid_seed(loaded, lesion_model, dataclasses.replace(base, tta="none"), fmts),
        result_uid_seed(loaded, lesion_model, base, [*fmts, "dicom-pm"]),
    ]
    for key, value in (("version", "9.9"), ("weights_sha256", "0" * 64)):
        other_model = dataclasses.replace(lesion_model,
                                          metadata={**lesion_model.metadata, key: value})
        others.append(result_uid_seed(loaded, other_model, base, fmts))
    # the same name, version and weights with another threshold in the config
    inference = {**lesion_model.config.get("inference", {}), "threshold": 0.7}
    edited = dataclasses.replace(lesion_model,
                                 config={**lesion_model.config, "inference": inference})
    others.append(result_uid_seed(loaded, edited, base, fmts))
    restamped = tmp_path / "other.dcm"
    ds = pydicom.dcmread(DERMOSCOPY)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(restamped, enforce_file_format=True)
    others.append(result_uid_seed(load_image(restamped), lesion_model, base, fmts))
    assert len({seed, *others}) == len(others) + 1
    photo = load_image(ROOT / "sample_data" / "dermoscopy.jpg")
    assert result_uid_seed(photo, lesion_model, base, fmts) is None
