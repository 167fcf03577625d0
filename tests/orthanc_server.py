"""A real Orthanc for the node tests: started on loopback on free ports with a temporary
configuration that knows medxai's AE, driven through its REST API, stopped by the test.

The configuration is the one docs/pacs.md shows (:func:`orthanc_config`). Tests skip with a
reason when Orthanc (or its DICOMweb plugin, for STOW-RS) is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

ORTHANC_AET = "ORTHANC"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc", "/usr/local/share/orthanc/plugins",
                "/usr/lib/x86_64-linux-gnu/orthanc")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def orthanc_exe() -> str:
    exe = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.path.exists("/usr/sbin/Orthanc")
                                      else None)
    if exe is None:
        pytest.skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    return exe


def dicomweb_plugin() -> str | None:
    """Path of Orthanc's DICOMweb plugin, or None."""
    for d in _PLUGIN_DIRS:
        if os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                if name.startswith("libOrthancDicomWeb.so"):
                    return os.path.join(d, name)
    return None


def orthanc_config(storage: str | Path, http_port: int, dicom_port: int, medxai_port: int,
                   medxai_aet: str = "MEDXAI", plugin: str | None = None) -> dict[str, Any]:
    """The Orthanc configuration of the tests (and of docs/pacs.md): the PACS is ``ORTHANC``,
    it knows medxai as the modality ``medxai`` and accepts its results (C-STORE and STOW-RS)."""
    cfg: dict[str, Any] = {
        "Name": "medxai-test-pacs",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAet": ORTHANC_AET,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {
            "medxai": {"AET": medxai_aet, "Host": "127.0.0.1", "Port": medxai_port,
                       "AllowStore": True, "AllowEcho": True},
        },
        "DicomScuTimeout": 30,
        "StableAge": 5,
        "ConcurrentJobs": 2,
        "Plugins": [plugin] if plugin else [],
    }
    if plugin:
        cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True}
    return cfg


class Orthanc:
    """One Orthanc process. :meth:`start` (again after :meth:`stop`: same storage, same ports)."""

    def __init__(self, folder: Path, medxai_port: int, *, dicomweb: bool = False,
                 medxai_aet: str = "MEDXAI") -> None:
        self.exe = orthanc_exe()
        plugin = dicomweb_plugin() if dicomweb else None
        if dicomweb and plugin is None:
            pytest.skip("Orthanc's DICOMweb plugin is not installed (apt-get install "
                        "orthanc-dicomweb)")
        self.folder = folder
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.medxai_port = medxai_port
        (folder / "db").mkdir(parents=True, exist_ok=True)
        self.config_path = folder / "orthanc.json"
        self.config = orthanc_config(folder / "db", self.http_port, self.dicom_port,
                                     medxai_port, medxai_aet, plugin)
        self.config_path.write_text(json.dumps(self.config, indent=2))
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.http_port}"

    # -- process ------------------------------------------------------------------------------
    def start(self, timeout_s: float = 60.0) -> Orthanc:
        import requests

        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([self.exe, str(self.config_path)], stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.folder)
        log.close()
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: "
                                   + (self.folder / "orthanc.log").read_text()[-2000:])
            try:
                if requests.get(self.url + "/system", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc did not start in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    # -- REST ---------------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        import requests

        r = requests.get(self.url + path, timeout=30)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: Any, *, raw: bool = False, timeout: float = 120) -> Any:
        import requests

        if raw:
            r = requests.post(self.url + path, data=body, timeout=timeout,
                              headers={"Content-Type": "application/dicom"})
        else:
            r = requests.post(self.url + path, data=json.dumps(body), timeout=timeout)
        r.raise_for_status()
        return r.json() if r.content else None

    def upload(self, path: str | Path) -> dict[str, Any]:
        """Upload one DICOM file (REST ``POST /instances``): ``ID``, ``ParentStudy``, ..."""
        return self.post("/instances", Path(path).read_bytes(), raw=True)

    def store_to_medxai(self, resources: list[str]) -> Any:
        """Ask Orthanc to C-STORE the resources (studies, series, instances) to medxai."""
        return self.post("/modalities/medxai/store", {"Resources": resources,
                                                      "Synchronous": True})

    def study_instances(self, study_id: str) -> list[dict[str, Any]]:
        """Every instance of the study with its (simplified) tags."""
        out = []
        for inst in self.get(f"/studies/{study_id}/instances"):
            out.append(self.get(f"/instances/{inst['ID']}/tags?simplify"))
        return out

    def segs_of(self, study_id: str) -> list[dict[str, Any]]:
        return [t for t in self.study_instances(study_id)
                if t.get("SOPClassUID") == SEG_SOP_CLASS]

    def wait_for_segs(self, study_id: str, n: int, timeout_s: float) -> list[dict[str, Any]]:
        end = time.monotonic() + timeout_s
        segs: list[dict[str, Any]] = []
        while time.monotonic() < end:
            segs = self.segs_of(study_id)
            if len(segs) >= n:
                return segs
            time.sleep(1.0)
        return segs


def seg_sources(seg: dict[str, Any]) -> set[str]:
    """SOP Instance UIDs a SEG (Orthanc's simplified tags) names in ReferencedSeriesSequence."""
    out = set()
    for s in seg.get("ReferencedSeriesSequence") or []:
        for i in s.get("ReferencedInstanceSequence") or []:
            out.add(i.get("ReferencedSOPInstanceUID"))
    return out
