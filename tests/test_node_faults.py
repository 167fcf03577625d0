"""Faults with a real Orthanc and ``medxai listen`` as a separate process: SIGKILL while a study
is being processed, the destination down for a while, SIGKILL while results wait to be sent,
restarts on the same WORKDIR, and a clean SIGTERM at the end. Orthanc must end with exactly one
SEG per source image."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import ROOT
from tests.orthanc_server import Orthanc, free_port, orthanc_exe, seg_sources

DERMOSCOPY = ROOT / "sample_data" / "dermoscopy.dcm"
_MAIN = "import sys; from medxai.cli.main import main; sys.exit(main())"


def _two_instance_study(folder: Path) -> list[Path]:
    """Two copies of the real dermoscopy instance as one new study (two series)."""
    study = generate_uid()
    out = []
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        ds = pydicom.dcmread(DERMOSCOPY)
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesNumber = i + 1
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(folder / f"derm{i}.dcm")
        ds.save_as(out[-1], enforce_file_format=True)
    return out


class Listener:
    """``medxai listen --json`` in its own process, its event lines in a log file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self.fh = open(log, "ab")  # noqa: SIM115 - closed in stop()/kill()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-c", _MAIN, "listen", "--json", *args],
                                     stdout=self.fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env)

    def events(self) -> list[dict]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return out

    def wait_event(self, name: str, timeout_s: float, after: int = 0) -> dict:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            evs = [e for e in self.events()[after:] if e["event"] == name]
            if evs:
                return evs[0]
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        raise AssertionError(f"no {name!r} event; log:\n" + self.log.read_text()[-3000:])

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.fh.close()

    def terminate(self, timeout_s: float = 120) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout_s)
        self.fh.close()
        return rc


@pytest.mark.slow
def test_sigkill_restart_destination_down_exactly_one_seg_per_source(tmp_path: Path):
    orthanc_exe()
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", node_port).start()
    work = tmp_path / "work"
    listeners: list[Listener] = []
    try:
        files = _two_instance_study(tmp_path / "in")
        sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                   for f in files}
        uploads = [orthanc.upload(f) for f in files]
        study = uploads[0]["ParentStudy"]
        args = ["-o", str(work), "--ae-title", "MEDXAI", "--port", str(node_port),
                "--host", "127.0.0.1", "--allow", "ORTHANC",
                "--send-to", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", "--idle-seconds", "1",
                "--retry-max-seconds", "2", "--min-free-disk", "0"]
        # 1. receive, then SIGKILL while the study is being processed
        first = Listener(args, tmp_path / "listen1.log")
        listeners.append(first)
        first.wait_event("started", 600)
        orthanc.store_to_medxai([study])
        first.wait_event("processing", 120)
        first.kill()
        assert orthanc.segs_of(study) == []
        # 2. the destination goes down; restart: the study runs again, sending is retried
        orthanc.stop()
        second = Listener(args, tmp_path / "listen2.log")
        listeners.append(second)
        started = second.wait_event("started", 600)
        assert started["requeued_studies"] == 1
        second.wait_event("processed", 600)
        second.wait_event("send_retry", 120)
        # 3. SIGKILL while the results wait in the outbox; restart; the destination comes back
        second.kill()
        third = Listener(args, tmp_path / "listen3.log")
        listeners.append(third)
        third.wait_event("started", 600)
        orthanc.start()
        third.wait_event("sent", 300)
        segs = orthanc.wait_for_segs(study, 2, timeout_s=120)
        time.sleep(5)  # anything sent twice would show up now
        segs = orthanc.segs_of(study)
        assert len(segs) == 2, [seg_sources(s) for s in segs]
        assert sorted(seg_sources(s).pop() for s in segs) == sorted(sources)
        assert all(len(seg_sources(s)) == 1 for s in segs)
        # the default outputs: two Parametric Maps (saliency, uncertainty) and an SR per image
        # too, each exactly once
        tags = orthanc.study_instances(study)
        assert sum(t.get("SOPClassUID") == "1.2.840.10008.5.1.4.1.1.30" for t in tags) == 4
        assert sum(t.get("Modality") == "SR" for t in tags) == 2
        # 4. SIGTERM: stops accepting, exits cleanly
        assert third.terminate() == 0
        assert third.events()[-1]["event"] == "stopped" and third.events()[-1]["clean"]
        status = subprocess.run(check=False, args=[sys.executable, "-c", _MAIN, "listen", "--status", "-o",
                                 str(work), "--json"], capture_output=True, text=True,
                                cwd=ROOT, timeout=300)
        assert status.returncode == 0, status.stderr
        st = json.loads(status.stdout)
        assert st["outbox"] == {"pending": 0, "sent": 8, "failed": 0}  # SEG + 2 PM + SR, x2
        assert st["studies"]["processed"] == 1 and st["instances_received"] == 2
    finally:
        for li in listeners:
            if li.proc.poll() is None:
                li.kill()
        orthanc.stop()


def test_listen_refuses_bad_arguments(tmp_path: Path):
    r = subprocess.run(check=False, args=[sys.executable, "-c", _MAIN, "listen", "-o", str(tmp_path / "w"),
                        "--send-to", "nonsense"], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 2
    assert "--allow" in r.stderr
    r = subprocess.run(check=False, args=[sys.executable, "-c", _MAIN, "listen", "-o", str(tmp_path / "w"),
                        "--allow", "ORTHANC", "--send-to", "nonsense"], capture_output=True,
                       text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2
    assert "AE@host:port" in r.stderr
