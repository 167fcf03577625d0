"""The DICOM node behind ``medxai listen``: receive (C-STORE SCP, C-ECHO), group by study, process
a study once it is quiet with the batch machinery, send the results back with retries.

Three threads share one :class:`~medxai.node.store.NodeStore`:

- the **SCP** (pynetdicom, one thread per association): only calling AE titles in ``allow``
  associate; each instance is checked (parsable, UIDs, complete pixel data), written atomically
  and fsync'd, and recorded in ``node.sqlite`` before the success status goes back. Refusals get
  a failure status (out of resources, cannot understand) and an event; the association goes on.
- the **processor**: a study with no new instance for ``idle_s`` seconds is queued and run with
  :func:`medxai.batch.run_batch` on its own instances folder (the same manifest, selection rules,
  reasons and pipeline as ``medxai batch``; the model loaded once). The DICOM results (SEG, and
  whatever else the output formats make) go into the outbox.
- the **sender**: outbox rows are sent by C-STORE or STOW-RS; a failed try is retried with
  exponential backoff, also after a restart.

A restart on the same WORKDIR carries on: half-written files are removed, a study being processed
is queued again (``run_batch`` resumes: finished series are kept), unsent results are sent.
Results keep their SOP Instance UIDs, so a result whose delivery was cut short by a kill and
sent again is the same instance to the receiver (a PACS keeps one copy). A result made again
(its study processed again after a kill, or on a new WORKDIR) gets the same UIDs too: they are
derived from the source instances, the model and the settings
(:attr:`medxai.pipeline.SegmentOptions.derived_uids`), not drawn at random.

For the fault tests only, :data:`SIGKILL_AT_ENV` names a point of :data:`SIGKILL_POINTS` where the
node kills itself with SIGKILL (after a ``test_sigkill`` event); unset, it does nothing.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # typing.Self is Python 3.11+; the package supports 3.10
    from typing_extensions import Self
from medxai.errors import InputError
from medxai.node.sender import Destination, TlsConfig, send_files
from medxai.node.store import (
    NodeStore,
    instance_key,
    is_valid_uid,
    study_key,
    write_durable,
)

__all__ = ["SIGKILL_AT_ENV", "SIGKILL_POINTS", "STATUS", "DicomNode", "NodeConfig", "NodeEvent"]

log = logging.getLogger("medxai.node")

#: C-STORE statuses the SCP returns.
STATUS = {
    "success": 0x0000,
    "out_of_resources": 0xA700,
    "cannot_understand": 0xC000,
    "data_set_mismatch": 0xA900,
    "processing_failure": 0x0110,
}

EventFn = Callable[["NodeEvent"], None]

#: Test-only fault injection (tests/test_node_faults.py): with this environment variable set to
#: one of :data:`SIGKILL_POINTS`, the node SIGKILLs itself the first time it reaches that point.
SIGKILL_AT_ENV = "MEDXAI_NODE_TEST_SIGKILL_AT"
#: The points, in the order a study passes them: an instance ``received`` (parsed, nothing
#: stored) and ``stored`` (durable and recorded, the success status not yet sent); a study
#: ``processing`` (claimed, nothing run), ``written`` (results written, not queued) and
#: ``queued`` (in the outbox, not sent); ``mid_send`` (the receiver kept the first file of a
#: send, the others not sent) and ``sent`` (the receiver kept them all, not recorded).
SIGKILL_POINTS = ("received", "stored", "processing", "written", "queued", "mid_send", "sent")


@dataclass
class NodeEvent:
    """One thing the node did: ``event`` (a fixed word) and its details."""

    event: str
    data: dict[str, Any]
    t: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"t": round(self.t, 3), "event": self.event, **self.data}


@dataclass
class NodeConfig:
    """Settings of a node (the ``medxai listen`` options of the same names).

    Attributes:
        workdir: the node's folder (received studies, results, ``node.sqlite``).
        ae_title: the node's AE title; ``port``: its TCP port; ``host``: the address to bind.
        allow: calling AE titles that may associate (empty: refuse everyone).
        send_to / stow: where results go (at most one; none: results stay in WORKDIR).
        idle_s: seconds without a new instance after which a study is complete.
        model: bundled model name or bundle folder (or a loaded bundle).
        formats / explain / device: the pipeline options (default: DICOM SEG, Parametric Map,
            SR and the JSON report, saliency by the model's measured choice).
        max_associations: concurrent associations; ``max_instance_bytes``: larger instances are
            refused (out of resources); ``min_free_bytes``: refuse instances when the WORKDIR's
            disk has less free space.
        retry_base_s / retry_max_s: backoff of failed sends (doubling from base, capped).
        max_send_attempts: tries before a result the receiver keeps *refusing* fails for good
            (an unreachable receiver is retried for ever).
        tls: TLS for the SCP (and for sending by C-STORE).
    """

    workdir: str | Path
    ae_title: str = "MEDXAI"
    port: int = 11112
    host: str = "0.0.0.0"
    allow: Sequence[str] = ()
    send_to: str | None = None
    stow: str | None = None
    idle_s: float = 30.0
    model: Any = None
    formats: Sequence[str] | None = ("dicom-seg", "dicom-pm", "dicom-sr", "json")
    explain: str | None = "auto"
    device: str = "auto"
    #: the DICOM SEG's type and ``mask_<label>.nii.gz`` per label (:class:`SegmentOptions`).
    seg_type: str = "binary"
    split_labels: bool = False
    #: writer processes kept for the node's life (``medxai batch --writers``); 0: threads.
    writers: int = 0
    max_associations: int = 10
    max_instance_bytes: int = 2 * 1024**3
    min_free_bytes: int = 1024**3
    retry_base_s: float = 2.0
    retry_max_s: float = 300.0
    max_send_attempts: int = 10
    tls: TlsConfig | None = None

    def destination(self) -> Destination | None:
        from medxai.node.sender import parse_destination

        if self.send_to and self.stow:
            raise InputError(
                "give --send-to or --stow, not both", hint="results go to one destination"
            )
        if self.send_to:
            d = parse_destination(self.send_to)
            if d.kind != "dimse":
                raise InputError(
                    f"--send-to takes AE@host:port, found {self.send_to!r}",
                    hint="use --stow for a DICOMweb URL",
                )
            return d
        if self.stow:
            d = parse_destination(self.stow)
            if d.kind != "stow":
                raise InputError(
                    f"--stow takes an http(s):// URL, found {self.stow!r}",
                    hint="use --send-to for AE@host:port",
                )
            return d
        return None


class DicomNode:
    """A running node; :meth:`start` it, :meth:`stop` it (or use it as a context manager).

    Raises:
        InputError: bad settings (AE title, destination, TLS files, WORKDIR); the model cannot
            be loaded (ModelError).
    """

    def __init__(self, config: NodeConfig, on_event: EventFn | None = None) -> None:
        from pynetdicom.utils import set_ae

        self.config = config
        try:
            self.ae_title = str(set_ae(config.ae_title, "ae_title", False, False))
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"--ae-title {config.ae_title!r} is not an AE title ({exc})",
                hint="1-16 characters, no backslash",
            ) from exc
        self.allow = [str(a).strip() for a in config.allow if str(a).strip()]
        if not self.allow:
            raise InputError(
                "no calling AE title is allowed to send to the node",
                hint="give --allow AE[,AE...] with the PACS's AE title(s)",
            )
        self.dest = config.destination()
        self.on_event = on_event
        self.store = NodeStore(config.workdir)
        self._stop = threading.Event()
        self._wake_sender = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: Any = None
        self._bundle: Any = None
        self._writers: Any = None  # medxai.batch.runner.Writers, with config.writers > 0
        self._busy_study: str | None = None
        self._stopped = False
        self.options: Any = None
        self._sigkill_at = os.environ.get(SIGKILL_AT_ENV) or None
        if self._sigkill_at is not None and self._sigkill_at not in SIGKILL_POINTS:
            raise InputError(
                f"{SIGKILL_AT_ENV}={self._sigkill_at!r} is not a fault point",
                hint=f"unset it (it is for tests), or use one of: {', '.join(SIGKILL_POINTS)}",
            )

    # -- events -------------------------------------------------------------------------------
    def emit(self, event: str, **data: Any) -> None:
        """Record an event (``node.sqlite``), log it, and pass it to ``on_event``."""
        ev = NodeEvent(event, data)
        try:
            self.store.log_event(event, data)
        except Exception:
            log.exception("cannot record event %s", event)
        log.info("%s %s", event, data)
        if self.on_event is not None:
            try:
                self.on_event(ev)
            except Exception:
                log.exception("event callback failed")

    def _fault_point(self, point: str) -> None:
        """Test-only: SIGKILL this process at ``point`` when :data:`SIGKILL_AT_ENV` names it."""
        if self._sigkill_at == point:
            self.emit("test_sigkill", point=point)
            os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Recover the WORKDIR, load the model, start receiving, processing and sending."""
        from medxai.models.bundle import ModelBundle
        from medxai.models.registry import load_model
        from medxai.pipeline import SegmentOptions

        c = self.config
        self.options = SegmentOptions(
            formats=list(c.formats) if c.formats else None,
            explain=c.explain,
            device=c.device,
            seg_type=c.seg_type,
            split_labels=c.split_labels,
            # a result made again after a crash keeps its UIDs: the PACS keeps one copy
            derived_uids=True,
        )
        rec = self.store.recover()
        self._bundle = c.model if isinstance(c.model, ModelBundle) else load_model(c.model)
        if c.writers > 0:
            from medxai.batch.job import writes_dicom
            from medxai.batch.runner import Writers

            self._writers = Writers(c.writers)
            # each writer sets up the DICOM writers before the first study comes
            self._writers.warm(dicom=writes_dicom(self.options))
        self._start_scp()
        self.emit(
            "started",
            ae_title=self.ae_title,
            port=self.port,
            allow=self.allow,
            destination=str(self.dest) if self.dest else None,
            model=f"{self._bundle.name} {self._bundle.version}",
            idle_s=c.idle_s,
            tls=bool(c.tls and c.tls.enabled),
            **rec,
        )
        for name, target in (
            ("medxai-node-process", self._process_loop),
            ("medxai-node-send", self._send_loop),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop accepting associations, let the current study finish (up to ``timeout_s``;
        otherwise it is abandoned and runs again on the next start) and the sender finish its
        current try. Returns True when every thread ended in time. Calling it again does
        nothing."""
        if self._stopped:
            return True
        self._stopped = True
        self._stop.set()
        self._wake_sender.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        end = time.monotonic() + timeout_s
        clean = True
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
            clean = clean and not t.is_alive()
        self.emit("stopped", clean=clean, abandoned_study=None if clean else self._busy_study)
        if self._writers is not None and clean:
            self._writers.close()
        self.store.close()
        return clean

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port (useful with ``port=0``)."""
        if self._server is None:
            return self.config.port
        return int(self._server.server_address[1])

    def request_stop(self) -> None:
        """Ask :meth:`wait` to return (safe to call from a signal handler)."""
        self._stop.set()

    def wait(self, poll_s: float = 0.5) -> None:
        """Block until :meth:`stop` is called (from a signal handler or another thread)."""
        while not self._stop.wait(poll_s):
            pass

    # -- receiving ----------------------------------------------------------------------------
    def _start_scp(self) -> None:
        from pynetdicom import (
            AE,
            AllStoragePresentationContexts,
            VerificationPresentationContexts,
            evt,
        )
        from pynetdicom.events import EventHandlerType

        c = self.config
        ae = AE(ae_title=self.ae_title)
        ae.maximum_associations = max(1, int(c.max_associations))
        ae.require_calling_aet = self.allow
        for uid in _abstract_syntaxes(VerificationPresentationContexts):
            ae.add_supported_context(uid)
        for uid in _abstract_syntaxes(AllStoragePresentationContexts):
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        ae.network_timeout = 60
        ae.dimse_timeout = 60
        handlers: list[EventHandlerType] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ABORTED, self._on_aborted),
        ]
        ssl_ctx = c.tls.server_context() if c.tls is not None and c.tls.enabled else None
        try:
            self._server = ae.start_server(
                (c.host, int(c.port)), block=False, evt_handlers=handlers, ssl_context=ssl_ctx
            )
        except OSError as exc:
            raise InputError(
                f"cannot listen on {c.host}:{c.port} ({exc.strerror or exc})",
                hint="choose a free --port (ports below 1024 need privileges)",
            ) from exc

    def _on_echo(self, event: Any) -> int:
        self.emit("echo", calling_ae=_calling(event))
        return 0x0000

    def _on_rejected(self, event: Any) -> None:
        self.emit(
            "association_rejected",
            calling_ae=_calling(event),
            address=_address(event),
            reason="calling AE title not in --allow"
            if _calling(event) not in self.allow
            else "refused (too many associations or no acceptable context)",
        )

    def _on_aborted(self, event: Any) -> None:
        self.emit("association_aborted", calling_ae=_calling(event), address=_address(event))

    def _refuse(self, event: Any, status: int, reason: str, **data: Any) -> Any:
        from pydicom.dataset import Dataset

        self.emit(
            "store_refused",
            calling_ae=_calling(event),
            status=f"0x{status:04X}",
            reason=reason,
            **data,
        )
        ds = Dataset()
        ds.Status = status
        ds.ErrorComment = reason[:64]
        return ds

    def _on_store(self, event: Any) -> Any:
        """Check, store durably, record; then (and only then) success."""
        if self._stop.is_set():
            return self._refuse(event, STATUS["out_of_resources"], "the node is stopping")
        refusal = self._refuse_for_space(event)
        if refusal is not None:
            return refusal
        try:
            ds = event.dataset
            sop = str(ds.get("SOPInstanceUID", "") or "").strip()
            study = str(ds.get("StudyInstanceUID", "") or "").strip()
            series = str(ds.get("SeriesInstanceUID", "") or "").strip()
            sop_class = str(ds.get("SOPClassUID", "") or "").strip()
            data = event.encoded_dataset(include_meta=True)
        except Exception as exc:  # noqa: BLE001 - a malformed data set: refuse it, go on
            return self._refuse(
                event,
                STATUS["cannot_understand"],
                f"data set cannot be parsed ({type(exc).__name__}: {exc})",
            )
        for what, uid in (("SOP Instance UID", sop), ("Study Instance UID", study)):
            if not is_valid_uid(uid):
                return self._refuse(
                    event,
                    STATUS["cannot_understand"],
                    f"{what} missing or not a valid UID ({uid[:70]!r})",
                )
        own = self.store.is_result(sop)
        if own or self.store.has_instance(sop):
            # the same instance again (a resend): already durable; never rewrite it, so
            # processed results stay valid. One of the node's own results, routed back with
            # its study: never stored, so the study is not re-opened and processed again
            self.emit("duplicate", calling_ae=_calling(event), sop_instance_uid=sop, own_result=own)
            return 0x0000
        self._fault_point("received")
        return self._store_instance(event, data, sop, study, series, sop_class)

    def _refuse_for_space(self, event: Any) -> Any:
        """The refusal of an instance over the size limit or of one the disk has no room for
        (keeping the minimum free), else None."""
        c = self.config
        try:
            raw = event.request.DataSet
            size = raw.getbuffer().nbytes if isinstance(raw, io.BytesIO) else None
        except Exception:  # noqa: BLE001
            size = None
        if size is not None and size > c.max_instance_bytes:
            return self._refuse(
                event,
                STATUS["out_of_resources"],
                f"instance of {size} bytes is larger than the limit ({c.max_instance_bytes} bytes)",
            )
        try:
            free = self.store.free_bytes()
        except OSError:
            free = None
        if free is not None and free - (size or 0) < c.min_free_bytes:
            return self._refuse(
                event,
                STATUS["out_of_resources"],
                f"only {free} bytes free in the WORKDIR (minimum {c.min_free_bytes})",
            )
        return None

    def _store_instance(
        self, event: Any, data: bytes, sop: str, study: str, series: str, sop_class: str
    ) -> Any:
        """Write a new instance durably and record it; success, or the refusal."""
        calling = _calling(event)
        skey = study_key(study)
        dest = self.store.study_dir(skey) / "instances" / f"{instance_key(sop)}.dcm"
        try:
            problem = write_durable(data, dest, self.store.tmp_dir, check=_check_instance)
            if problem:
                return self._refuse(
                    event, STATUS["cannot_understand"], problem, sop_instance_uid=sop
                )
            self.store.add_instance(
                sop_uid=sop,
                sop_class_uid=sop_class,
                study_uid=study,
                series_uid=series,
                path=dest,
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                calling_ae=calling,
            )
        except OSError as exc:
            return self._refuse(
                event,
                STATUS["out_of_resources"],
                f"cannot store the instance ({exc.strerror or exc})",
            )
        self.emit(
            "received",
            persist=False,
            calling_ae=calling,
            study=skey,
            sop_instance_uid=sop,
            bytes=len(data),
        )
        self._fault_point("stored")
        return 0x0000

    # -- processing ---------------------------------------------------------------------------
    def _process_loop(self) -> None:
        while not self._stop.is_set():
            try:
                for key in self.store.queue_idle(self.config.idle_s):
                    self.emit("study_complete", study=key)
                row = self.store.claim_study()
            except Exception:
                log.exception("study scheduling failed")
                row = None
            if row is None:
                self._stop.wait(min(1.0, max(0.05, self.config.idle_s / 4)))
                continue
            self._busy_study = row["key"]
            try:
                self._process_study(row)
            finally:
                self._busy_study = None

    def _process_study(self, row: dict[str, Any]) -> None:
        """Run the batch over one complete study, queue its DICOM results to send, record it."""
        key = row["key"]
        folder = self.store.study_dir(key)
        started = time.time()
        self.emit("processing", study=key, instances=row["n_instances"])
        self._fault_point("processing")
        summary = self._run_study(key, folder, started)
        if summary is None:
            return
        self._fault_point("written")
        results = _dicom_results(folder / "results")
        queued = 0
        if self.dest is not None and results:
            queued = self.store.enqueue(key, results, self.dest.key)
            self._fault_point("queued")
            self._wake_sender.set()
        series = summary.series
        reason = _study_reason(summary)
        info = {
            "series": {k: v for k, v in series.items() if v},
            "results": len(results),
            "queued_to_send": queued,
            "skipped_reasons": summary.skipped_reasons,
            "failed": summary.failed[:10],
            "seconds": round(time.time() - started, 3),
        }
        final = "failed" if series.get("failed") and not series.get("done") else "processed"
        state = self.store.finish_study(key, final, reason=reason, summary=info, started_at=started)
        self.emit(
            "processed" if final == "processed" else "study_failed",
            study=key,
            state=state,
            reason=reason,
            **info,
        )

    def _run_study(self, key: str, folder: Path, started: float) -> Any:
        """The batch summary of a study's instances, or None when the run failed (recorded)."""
        from medxai.batch import run_batch
        from medxai.errors import MedxaiError

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                summary = run_batch(
                    folder / "instances",
                    folder / "results",
                    model=self._bundle,
                    options=self.options,
                    workers=1,
                    scan_workers=1,
                    writers=self._writers or 0,
                )
        except MedxaiError as exc:
            state = self.store.finish_study(
                key, "failed", reason=str(exc), summary={}, started_at=started
            )
            self.emit("study_failed", study=key, reason=str(exc), state=state)
            return None
        except Exception as exc:
            failure = f"internal error: {type(exc).__name__}: {exc}"
            log.exception("processing study %s failed", key)
            state = self.store.finish_study(
                key, "failed", reason=failure, summary={}, started_at=started
            )
            self.emit("study_failed", study=key, reason=failure, state=state)
            return None
        return summary

    # -- sending ------------------------------------------------------------------------------
    def _send_loop(self) -> None:
        from medxai.node.sender import parse_destination

        c = self.config
        while not self._stop.is_set():
            try:
                rows = self.store.due()
            except Exception:
                log.exception("reading the outbox failed")
                rows = []
            if not rows:
                wait = self.store.next_due_in() if not self._stop.is_set() else None
                self._wake_sender.wait(min(2.0, wait) if wait is not None else 2.0)
                self._wake_sender.clear()
                continue
            by_dest: dict[str, list[dict[str, Any]]] = {}
            for r in rows:
                by_dest.setdefault(r["destination"], []).append(r)
            for dkey, items in by_dest.items():
                if self._stop.is_set():
                    break
                try:
                    dest = parse_destination(dkey)
                except InputError as exc:
                    self.store.mark_retry(
                        [r["id"] for r in items], str(exc), base_s=0, max_s=0, max_attempts=1
                    )
                    continue
                self._send_batch(dest, items, c)

    def _send_batch(self, dest: Destination, items: list[dict[str, Any]], c: NodeConfig) -> None:
        paths = {str(self.store.workdir / r["path"]): r for r in items}
        missing = [r for p, r in paths.items() if not Path(p).is_file()]
        if missing:
            self.store.mark_retry(
                [r["id"] for r in missing],
                "the result file is missing",
                base_s=0,
                max_s=0,
                max_attempts=1,
            )
            for p in [p for p, r in paths.items() if r in missing]:
                paths.pop(p)
        if not paths:
            return
        try:
            outcome = send_files(
                list(paths),
                dest,
                calling_ae=self.ae_title,
                tls=c.tls if dest.kind == "dimse" else None,
                on_sent=lambda _path: self._fault_point("mid_send"),
            )
        except InputError as exc:
            self.store.mark_retry(
                [r["id"] for r in paths.values()], str(exc), base_s=0, max_s=0, max_attempts=1
            )
            return
        self._record_outcome(dest, paths, outcome, c)

    def _record_outcome(
        self, dest: Destination, paths: dict[str, dict[str, Any]], outcome: Any, c: NodeConfig
    ) -> None:
        """Mark what was sent, schedule retries for what was refused or not sent."""
        if outcome.sent:
            self._fault_point("sent")
            self.store.mark_sent([paths[p]["id"] for p in outcome.sent])
            self.emit(
                "sent",
                destination=str(dest),
                count=len(outcome.sent),
                sop_instance_uids=[paths[p]["sop_instance_uid"] for p in outcome.sent],
            )
        for p, why in outcome.refused.items():
            gone = self.store.mark_retry(
                [paths[p]["id"]],
                why,
                base_s=c.retry_base_s,
                max_s=c.retry_max_s,
                max_attempts=c.max_send_attempts,
            )
            self.emit(
                "send_failed" if gone else "send_retry",
                destination=str(dest),
                sop_instance_uid=paths[p]["sop_instance_uid"],
                reason=why,
                final=bool(gone),
            )
        if outcome.unsent:
            ids = [paths[p]["id"] for p in outcome.unsent]
            self.store.mark_retry(
                ids,
                outcome.error or "not sent",
                base_s=c.retry_base_s,
                max_s=c.retry_max_s,
                max_attempts=None,
            )
            self.emit(
                "send_retry",
                destination=str(dest),
                count=len(ids),
                reason=outcome.error,
                retry_in_s=self.store.next_due_in(),
            )


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

#: transfer syntaxes the SCP accepts: the uncompressed ones and the common compressed ones (the
#: instance is stored as sent; the reader decodes it)
ALL_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
]


def _calling(event: Any) -> str:
    try:
        return str(event.assoc.requestor.ae_title).strip()
    except Exception:  # noqa: BLE001
        return "?"


def _address(event: Any) -> str:
    try:
        r = event.assoc.requestor
        return f"{r.address}:{r.port}"
    except Exception:  # noqa: BLE001
        return "?"


def _check_instance(path: Path) -> str | None:
    """Header check of a received instance (as ``medxai batch`` scans files): None when it is
    fine, else what is wrong (e.g. pixel data cut short)."""
    from medxai.batch.scan import scan_file

    info = scan_file(path.parent, path.name)
    if info.failed or info.kind == "corrupt":
        return str(info.reason)
    return None


def _dicom_results(out: Path) -> list[tuple[Path, str, str]]:
    """(path, SOP Instance UID, SOP Class UID) of every DICOM file the batch in ``out`` wrote
    for the series it did."""
    from medxai.batch import Manifest

    with Manifest(out / "manifest.sqlite") as man:
        written = [
            out / s["output_name"] / name
            for s in man.series("done")
            for name in s.get("outputs") or []
        ]
    results: list[tuple[Path, str, str]] = []
    for p in written:
        meta = _file_uids(p) if p.suffix.lower() == ".dcm" and p.is_file() else None
        if meta is not None:
            results.append((p, meta[1], meta[0]))
    return results


def _study_reason(summary: Any) -> str | None:
    """Why a study's batch did no series (None when it did some)."""
    if summary.series.get("done"):
        return None
    reasons = list(summary.skipped_reasons) + [str(f.get("reason")) for f in summary.failed]
    if reasons and not summary.series.get("failed"):
        return "no series fits the model: " + "; ".join(reasons[:3])
    return "; ".join(reasons[:3]) or "no image to process"


def _abstract_syntaxes(contexts: Sequence[Any]) -> list[str]:
    """The SOP class UIDs of pynetdicom's pre-built presentation contexts (each has one)."""
    return [str(c.abstract_syntax) for c in contexts if c.abstract_syntax is not None]


def _file_uids(path: Path) -> tuple[str, str] | None:
    """(SOP Class UID, SOP Instance UID) of a written result."""
    import pydicom

    try:
        meta = pydicom.filereader.read_file_meta_info(path)
        return str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID)
    except Exception:  # noqa: BLE001
        return None
