"""OHIF's built viewer served on loopback, with a same-origin DICOMweb proxy to Orthanc.

The viewer is the ``dist/`` folder of the npm package ``@ohif/app`` (pinned :data:`OHIF_VERSION`;
``.ci/run`` installs it with ``npm pack``). One small threaded HTTP server serves:

- ``/dicom-web/...``: forwarded to Orthanc's DICOMweb plugin (same origin: no CORS set-up);
- ``/app-config.js``: :func:`app_config`, OHIF pointed at ``/dicom-web``;
- every other path: the file in ``dist/``, or ``index.html`` (OHIF's routes, e.g. ``/viewer``).

This is the configuration docs/viewers.md shows for viewing medxai results in OHIF over Orthanc.
Tests skip with a reason when the package is not there (:func:`ohif_dist`).
"""

from __future__ import annotations

import http.client
import mimetypes
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

OHIF_VERSION = "3.13.2"
ROOT = Path(__file__).resolve().parents[1]
#: where .ci/run unpacks ``npm pack @ohif/app@OHIF_VERSION`` (the tarball's ``package/`` folder)
DEFAULT_PACKAGE = ROOT / ".ci" / "ohif" / "package"

_HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                "trailers", "transfer-encoding", "upgrade", "host", "content-length"}

mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")


def ohif_dist() -> Path:
    """The ``dist/`` folder of ``@ohif/app`` ($MEDXAI_OHIF_DIST, else .ci/ohif/package/dist);
    the calling test is skipped when it is absent."""
    env = os.environ.get("MEDXAI_OHIF_DIST")
    dist = Path(env) if env else DEFAULT_PACKAGE / "dist"
    if not (dist / "index.html").is_file():
        pytest.skip(f"OHIF's built viewer is not installed at {dist} (.ci/run: npm pack "
                    f"@ohif/app@{OHIF_VERSION} and unpack it into .ci/ohif/, or set "
                    "MEDXAI_OHIF_DIST to its dist/ folder)")
    return dist


def app_config(dicomweb_root: str = "/dicom-web") -> str:
    """OHIF's ``window.config``: one DICOMweb data source (Orthanc's plugin behind the proxy),
    WADO-RS rendering, no study list look-ups that Orthanc cannot answer."""
    return """window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  showErrorDetails: 'always',
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (medxai test)',
        name: 'orthanc',
        wadoUriRoot: '@ROOT@',
        qidoRoot: '@ROOT@',
        wadoRoot: '@ROOT@',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
""".replace("@ROOT@", dicomweb_root)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
        self.server.log.append(format % args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's names
        path = urlsplit(self.path).path
        if path.startswith("/dicom-web/") or path == "/dicom-web":
            self._proxy("GET")
        elif path == "/app-config.js":
            self._send(200, self.server.config.encode(), "text/javascript")
        else:
            self._file(path)

    def do_POST(self) -> None:  # noqa: N802
        if urlsplit(self.path).path.startswith("/dicom-web/"):
            self._proxy("POST")
        else:
            self._send(405, b"", "text/plain")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _file(self, path: str) -> None:
        dist = self.server.dist
        rel = path.lstrip("/")
        target = (dist / rel).resolve() if rel else dist / "index.html"
        if not target.is_file() or dist.resolve() not in target.parents:
            target = dist / "index.html"  # OHIF's routes (single-page app)
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self._send(200, target.read_bytes(), ctype)

    def _proxy(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
        conn = http.client.HTTPConnection("127.0.0.1", self.server.orthanc_port, timeout=120)
        try:
            conn.request(method, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP_HEADERS:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, dist: Path, orthanc_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.dist = dist
        self.orthanc_port = orthanc_port
        self.config = app_config()
        self.log: list[str] = []


class OhifServer:
    """OHIF + the DICOMweb proxy on ``http://127.0.0.1:<free port>``; a context manager."""

    def __init__(self, dist: Path, orthanc_port: int) -> None:
        self._server = _Server(dist, orthanc_port)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def log(self) -> list[str]:
        return self._server.log

    def viewer_url(self, study_uid: str, mode: str = "viewer", **params: str) -> str:
        extra = "".join(f"&{k}={v}" for k, v in params.items())
        return f"{self.url}/{mode}?StudyInstanceUIDs={study_uid}{extra}"

    def __enter__(self) -> OhifServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
