"""Sending DICOM files: C-STORE SCU (pynetdicom) or STOW-RS (dicomweb-client).

:func:`send_files` sends a list of files once and reports, per file, whether the receiver took
it; it never raises for a refused file or an unreachable receiver (the outcome says why), so the
node's outbox can count the try and retry later with backoff.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medxai.errors import InputError

__all__ = ["Destination", "SendOutcome", "TlsConfig", "parse_destination", "send_files"]

_AE_DEST = re.compile(
    r"^(?P<ae>[^@]{1,16})@(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):"
    r"(?P<port>\d{1,5})$"
)
# statuses a Storage SCP returns for an instance it kept (success and the warnings)
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class TlsConfig:
    """TLS settings for an association (PEM files). ``ca``: the certificates to trust for the
    peer (and, on the server side, the client certificates it requires when given)."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.ca)

    def server_context(self) -> ssl.SSLContext:
        """The SSL context of the node's SCP: its certificate and key; with ``ca``, clients must
        present a certificate signed by it."""
        if not (self.cert and self.key):
            raise InputError(
                "TLS for the listener needs --tls-cert and --tls-key",
                hint="give both PEM files (and --tls-ca to require client certificates)",
            )
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_chain(ctx, self.cert, self.key)
        if self.ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=self.ca)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """The SSL context to call a peer: trust ``ca`` (else the system store); present
        ``cert``/``key`` when given."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert and self.key:
            _load_chain(ctx, self.cert, self.key)
        return ctx


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    try:
        ctx.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(
            f"cannot load the TLS certificate and key ({exc})",
            path=cert,
            hint="give a PEM certificate (--tls-cert) and its private key (--tls-key)",
        ) from exc


@dataclass(frozen=True)
class Destination:
    """Where results go: a DICOM AE (``kind="dimse"``) or a DICOMweb STOW-RS URL
    (``kind="stow"``). :attr:`key` is the form stored in the outbox."""

    kind: str
    ae_title: str = ""
    host: str = ""
    port: int = 0
    url: str = ""

    @property
    def key(self) -> str:
        if self.kind == "stow":
            return f"stow:{self.url}"
        return f"dimse:{self.ae_title}@{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.url if self.kind == "stow" else f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(value: str) -> Destination:
    """``AE@host:port`` -> a DIMSE destination; ``http(s)://...`` -> STOW-RS; an outbox key
    (``dimse:...``/``stow:...``) -> its destination.

    Raises:
        InputError: the text is neither form.
    """
    v = value.strip()
    if v.startswith("stow:"):
        v = v[5:]
    elif v.startswith("dimse:"):
        v = v[6:]
    if v.startswith(("http://", "https://")):
        return Destination("stow", url=v.rstrip("/"))
    m = _AE_DEST.match(v)
    if m is None:
        raise InputError(
            f"is not a destination: expected AE@host:port (e.g. "
            f"ORTHANC@pacs.example.org:4242) or a DICOMweb URL, found {value!r}",
            hint="AE titles are 1-16 characters; the port is a number",
        )
    port = int(m["port"])
    ae = m["ae"].strip()
    if not (0 < port < 65536) or not ae or "\\" in ae:
        raise InputError(
            f"is not a destination: bad AE title or port in {value!r}",
            hint="AE@host:port with a port between 1 and 65535",
        )
    return Destination("dimse", ae_title=ae, host=m["host"].strip("[]"), port=port)


@dataclass
class SendOutcome:
    """The result of one try: ``sent`` (paths the receiver kept), ``refused`` (path -> why the
    receiver refused it: retrying will not help soon) and ``error`` (why nothing more could be
    sent: connection refused, association rejected...; the unsent paths are in ``unsent``)."""

    sent: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    unsent: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def send_files(
    paths: Sequence[str | Path],
    dest: Destination,
    *,
    calling_ae: str = "MEDXAI",
    tls: TlsConfig | None = None,
    timeout_s: float = 30.0,
    on_sent: Callable[[str], None] | None = None,
) -> SendOutcome:
    """Send ``paths`` (DICOM files) to ``dest`` once. Never raises for the receiver's answer or
    an unreachable receiver: see :class:`SendOutcome`. ``on_sent(path)`` is called as soon as
    the receiver has kept a file (by C-STORE: after each file; by STOW-RS: after the request).

    Raises:
        InputError: a file is not DICOM (nothing is sent).
    """
    files = [str(p) for p in paths]
    if not files:
        return SendOutcome()
    if dest.kind == "stow":
        out = _send_stow(files, dest, timeout_s)
        if on_sent is not None:
            for f in out.sent:
                on_sent(f)
        return out
    return _send_dimse(files, dest, calling_ae, tls, timeout_s, on_sent)


def _read_meta(path: str) -> tuple[str, str, str]:
    """(SOP Class UID, SOP Instance UID, Transfer Syntax UID) from a file's meta header."""
    import pydicom

    try:
        meta = pydicom.filereader.read_file_meta_info(path)
        return (
            str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID),
        )
    except Exception as exc:
        raise InputError(
            f"is not a DICOM file with a file meta header ({exc})",
            path=path,
            hint="send DICOM Part 10 files",
        ) from exc


def _client_ae(files: list[str], calling_ae: str, timeout_s: float) -> Any:
    """A pynetdicom AE that requests a context per SOP class of ``files`` (at most 126)."""
    from pynetdicom import AE

    metas = {f: _read_meta(f) for f in files}
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    wanted: dict[str, set[str]] = {}
    for cls, _sop, ts in metas.values():
        wanted.setdefault(cls, set()).add(ts)
    for cls, tss in list(wanted.items())[:126]:
        # the file's own syntax, and explicit VR little endian as a fallback
        ae.add_requested_context(cls, sorted(tss | {"1.2.840.10008.1.2.1"}))
    return ae


def _associate(ae: Any, dest: Destination, tls: TlsConfig | None) -> tuple[Any, str | None]:
    """An association with ``dest``, or ``(None, why not)``."""
    tls_args = (tls.client_context(), dest.host) if tls is not None and tls.enabled else None
    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args)
    except Exception as exc:  # noqa: BLE001 - socket/TLS errors of many kinds
        return None, f"cannot connect to {dest}: {type(exc).__name__}: {exc}"
    if not assoc.is_established:
        why = (
            "rejected the association"
            if assoc.is_rejected
            else ("aborted the association" if assoc.is_aborted else "could not be reached")
        )
        return None, f"{dest} {why}"
    return assoc, None


def _store_one(assoc: Any, f: str, dest: Destination) -> tuple[bool | None, str]:
    """C-STORE one file: ``(True, "")`` stored, ``(False, why)`` refused by the destination,
    ``(None, why)`` the association failed (this file and the rest are unsent)."""
    if not assoc.is_established:
        return None, f"the association with {dest} ended early"
    try:
        status = assoc.send_c_store(f)
    except ValueError as exc:  # no accepted presentation context for it
        return False, f"{dest} accepts no presentation context for it ({exc})"
    except Exception as exc:  # noqa: BLE001 - transport failure mid-association
        return None, f"sending to {dest} failed: {type(exc).__name__}: {exc}"
    code = getattr(status, "Status", None) if status else None
    if code is None:
        return None, f"{dest} did not answer the C-STORE (timeout or abort)"
    if int(code) in _STORED:
        return True, ""
    comment = getattr(status, "ErrorComment", "") or ""
    return False, f"{dest} refused it with status 0x{int(code):04X} {comment}"


def _send_dimse(
    files: list[str],
    dest: Destination,
    calling_ae: str,
    tls: TlsConfig | None,
    timeout_s: float,
    on_sent: Callable[[str], None] | None = None,
) -> SendOutcome:
    out = SendOutcome()
    assoc, error = _associate(_client_ae(files, calling_ae, timeout_s), dest, tls)
    if assoc is None:
        out.error, out.unsent = error, files
        return out
    try:
        for i, f in enumerate(files):
            stored, why = _store_one(assoc, f, dest)
            if stored is None:
                out.error, out.unsent = why, files[i:]
                break
            if not stored:
                out.refused[f] = why
                continue
            out.sent.append(f)
            if on_sent is not None:
                on_sent(f)
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def _send_stow(files: list[str], dest: Destination, timeout_s: float) -> SendOutcome:
    import pydicom
    import requests
    from dicomweb_client.api import DICOMwebClient

    out = SendOutcome()
    datasets = []
    for f in files:
        _read_meta(f)
        datasets.append(pydicom.dcmread(f))
    session = requests.Session()
    try:
        client = DICOMwebClient(url=dest.url, session=session)
        client.set_http_retry_params(retry=False)
        try:
            resp = client.store_instances(datasets=datasets)
        except Exception as exc:  # noqa: BLE001 - requests/HTTP errors of many kinds
            out.error = f"STOW-RS to {dest} failed: {type(exc).__name__}: {exc}"
            out.unsent = files
            return out
    finally:
        session.close()
    failed: dict[str, str] = {}
    for item in (resp.get("FailedSOPSequence") or []) if resp is not None else []:
        failed[str(item.get("ReferencedSOPInstanceUID", ""))] = (
            f"{dest} refused it (failure reason {item.get('FailureReason', '?')})"
        )
    for f, ds in zip(files, datasets):
        uid = str(ds.SOPInstanceUID)
        if uid in failed:
            out.refused[f] = failed[uid]
        else:
            out.sent.append(f)
    return out
