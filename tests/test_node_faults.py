"""Faults with a real Orthanc and ``medxai listen`` as a separate process: SIGKILL at every point
of the node's life (an instance received, stored; a study processing, its results written,
queued; a send cut short, a send done but not recorded), the destination down for a while,
restarts on the same WORKDIR (and on a new one: results made again), and a clean SIGTERM at the
end. Orthanc must end with exactly one copy of each result, by SOP Instance UID, and none lost."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from medxai.node.node import SIGKILL_AT_ENV, SIGKILL_POINTS
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

    def __init__(self, args: list[str], log: Path, sigkill_at: str | None = None) -> None:
        self.log = log
        self.fh = open(log, "ab")  # noqa: SIM115 - closed in stop()/kill()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop(SIGKILL_AT_ENV, None)
        if sigkill_at is not None:
            env[SIGKILL_AT_ENV] = sigkill_at
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

    def sent(self) -> int:
        """How many results the node has recorded as sent."""
        return sum(int(e.get("count", 0)) for e in self.events() if e["event"] == "sent")

    def wait_sent(self, n: int, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while self.sent() < n and time.monotonic() < end and self.proc.poll() is None:
            time.sleep(0.3)
        assert self.sent() == n, self.log.read_text()[-3000:]

    def wait_killed_itself(self, point: str, timeout_s: float) -> None:
        """The node SIGKILLed itself at ``point`` (its last event says where)."""
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still alive, not killed at {point!r}; log:\n"
                                 + self.log.read_text()[-3000:]) from None
        self.fh.close()
        assert rc == -signal.SIGKILL, self.log.read_text()[-3000:]
        last = self.events()[-1]
        assert (last["event"], last.get("point")) == ("test_sigkill", point), last

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
        third.wait_sent(8, 300)
        # 4. SIGTERM: stops accepting, exits cleanly; nothing more can reach Orthanc after it
        assert third.terminate() == 0
        assert third.events()[-1]["event"] == "stopped" and third.events()[-1]["clean"]
        segs = orthanc.segs_of(study)
        assert len(segs) == 2, [seg_sources(s) for s in segs]
        assert sorted(seg_sources(s).pop() for s in segs) == sorted(sources)
        assert all(len(seg_sources(s)) == 1 for s in segs)
        # the default outputs: two Parametric Maps (saliency, uncertainty) and an SR per image
        # too, each exactly once, with the UIDs the node recorded
        tags = orthanc.study_instances(study)
        assert sum(t.get("SOPClassUID") == "1.2.840.10008.5.1.4.1.1.30" for t in tags) == 4
        assert sum(t.get("Modality") == "SR" for t in tags) == 2
        assert sorted(t["SOPInstanceUID"] for t in tags if t["SOPInstanceUID"] not in sources) \
            == sorted(uid for uid, _state in _outbox(work))
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


# -- SIGKILL at each point --------------------------------------------------------------------

#: results per source instance with the formats below: the SEG and the SR that references it
RESULTS_PER_SOURCE = 2


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory):
    """One Orthanc for every kill point (each uses a study of its own) and the node's port."""
    orthanc_exe()
    node_port = free_port()
    orthanc = Orthanc(tmp_path_factory.mktemp("pacs"), node_port).start()
    yield orthanc, node_port
    orthanc.stop()


def _route(orthanc: Orthanc, study: str) -> None:
    """The PACS routes the study to the node; its job fails when the node dies during it."""
    import requests

    try:
        orthanc.store_to_medxai([study])
    except requests.HTTPError:
        pass


def _results_in(orthanc: Orthanc, study: str, sources: set[str]) -> list[dict]:
    """The study's instances in Orthanc that are not the sources (the node's results)."""
    return [t for t in orthanc.study_instances(study) if t["SOPInstanceUID"] not in sources]


def _outbox(work: Path) -> list[tuple[str, str]]:
    con = sqlite3.connect(f"file:{work / 'node.sqlite'}?mode=ro", uri=True)
    try:
        return con.execute("SELECT sop_instance_uid, state FROM outbox ORDER BY id").fetchall()
    finally:
        con.close()


@pytest.mark.slow
@pytest.mark.parametrize("point", [*SIGKILL_POINTS, "sent+new_workdir"])
def test_sigkill_at_each_point_then_restart_one_copy_of_each_result(
    pacs: tuple[Orthanc, int], tmp_path: Path, point: str
):
    """The node SIGKILLs itself at ``point`` (``sent+new_workdir``: at ``sent``, and the
    restart is on an empty WORKDIR, so every result is made again from the study routed again);
    after a restart Orthanc holds every result exactly once, with the UIDs the node recorded."""
    orthanc, node_port = pacs
    kill_at = point.split("+")[0]
    files = _two_instance_study(tmp_path / "in")
    sources = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    study = [orthanc.upload(f) for f in files][0]["ParentStudy"]
    n_results = RESULTS_PER_SOURCE * len(sources)

    def args(work: Path) -> list[str]:
        return ["-o", str(work), "--ae-title", "MEDXAI", "--port", str(node_port),
                "--host", "127.0.0.1", "--allow", "ORTHANC",
                "--send-to", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", "--idle-seconds", "1",
                "--retry-max-seconds", "2", "--min-free-disk", "0",
                "--format", "dicom-seg,dicom-sr", "--explain", "none"]

    work = tmp_path / "work"
    first = Listener(args(work), tmp_path / "listen1.log", sigkill_at=kill_at)
    second = None
    try:
        first.wait_event("started", 600)
        _route(orthanc, study)
        first.wait_killed_itself(kill_at, 600)
        # the kill was where it says: what had reached Orthanc by then
        before = {t["SOPInstanceUID"] for t in _results_in(orthanc, study, set(sources))}
        assert len(before) == {"mid_send": 1, "sent": n_results}.get(kill_at, 0), before
        if point == "sent+new_workdir":
            work = tmp_path / "work2"
        second = Listener(args(work), tmp_path / "listen2.log")
        started = second.wait_event("started", 600)
        assert started["requeued_studies"] == (kill_at in ("processing", "written", "queued"))
        if kill_at in ("received", "stored") or point == "sent+new_workdir":
            # the PACS's job failed (or the node lost everything): it routes the study again
            _route(orthanc, study)
        if kill_at == "stored":
            # the instance stored before the kill is not stored again: the node says so
            dup = second.wait_event("duplicate", 60)
            assert dup["sop_instance_uid"] in sources
            received = [e["sop_instance_uid"] for e in second.events()
                        if e["event"] == "received"]
            assert received == [s for s in sources if s != dup["sop_instance_uid"]]
        second.wait_sent(n_results, 600)
        assert second.terminate() == 0
        # exactly one copy of each result in Orthanc, by SOP Instance UID, with the UIDs the
        # node recorded; the ones Orthanc had before the kill are among them (sent again with
        # the same UIDs, also when made again on a new WORKDIR)
        results = _results_in(orthanc, study, set(sources))
        uids = sorted(t["SOPInstanceUID"] for t in results)
        outbox = _outbox(work)
        assert [state for _uid, state in outbox] == ["sent"] * n_results
        assert uids == sorted(uid for uid, _state in outbox)
        assert len(set(uids)) == n_results
        assert before <= set(uids)
        # none lost: one SEG per source, naming it, and one SR each
        segs = [t for t in results if t.get("Modality") == "SEG"]
        assert sorted(seg_sources(s).pop() for s in segs) == sorted(sources)
        assert all(len(seg_sources(s)) == 1 for s in segs)
        assert sum(t.get("Modality") == "SR" for t in results) == len(sources)
    finally:
        for li in (first, second):
            if li is not None and li.proc.poll() is None:
                li.kill()
