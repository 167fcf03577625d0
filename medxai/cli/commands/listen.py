"""``medxai listen``: a DICOM node that receives studies, segments them and sends the results
back (C-STORE or STOW-RS); ``--status`` shows what a WORKDIR holds."""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any

import click

from medxai.cli.common import EXPLAIN_CHOICES, echo_json, guard, parse_formats, seg_options


def _parse_size(value: str | None, name: str) -> int | None:
    """``"500M"``, ``"2G"``, ``"1048576"`` -> bytes."""
    if value is None:
        return None
    v = value.strip().upper().removesuffix("B")
    mult = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    try:
        if v and v[-1] in mult:
            return int(float(v[:-1]) * mult[v[-1]])
        return int(v)
    except ValueError:
        raise click.BadParameter(
            f"expected a size like 500M or 2G, got {value!r}", param_hint=name
        ) from None


def _status_text(st: dict[str, Any]) -> str:
    lines = [
        f"workdir: {st['workdir']}",
        f"instances received: {st['instances_received']}   refused: {st['refused']}",
        "studies:  " + "  ".join(f"{k} {v}" for k, v in st["studies"].items()),
        "results:  " + "  ".join(f"{k} {v}" for k, v in st["outbox"].items()),
    ]
    for s in st["study_list"][-20:]:
        summ = s.get("summary") or {}
        lines.append(
            f"  {s['key']}  {s['state']:<10} {s['n_instances']:>4} instances  "
            f"{summ.get('results', 0)} results" + (f"  ({s['reason']})" if s.get("reason") else "")
        )
    for f in st["failed_sends"][:10]:
        lines.append(
            f"  send failed: {f['sop_instance_uid']} -> {f['destination']}: {f['last_error']}"
        )
    for f in st["retrying_sends"][:10]:
        lines.append(
            f"  retrying ({f['attempts']} tries): {f['sop_instance_uid']} -> "
            f"{f['destination']}: {f['last_error']}"
        )
    return "\n".join(lines)


@click.command("listen")
@click.option(
    "-o",
    "--output",
    "workdir",
    required=True,
    type=click.Path(file_okay=False),
    help="WORKDIR: received studies, results, node.sqlite.",
)
@click.option("--ae-title", default="MEDXAI", show_default=True, help="The node's AE title.")
@click.option(
    "--port",
    default=11112,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port to listen on.",
)
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to bind.")
@click.option(
    "--allow",
    help="Comma-separated calling AE titles that may send (others are rejected at association).",
)
@click.option("--send-to", metavar="AE@HOST:PORT", help="Send results by C-STORE.")
@click.option("--stow", metavar="URL", help="Send results by STOW-RS to this DICOMweb URL.")
@click.option(
    "--idle-seconds",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0.0),
    help="A study with no new instance for this long is complete and processed.",
)
@click.option(
    "-m",
    "--model",
    default=None,
    help="Bundled model name or bundle folder. "
    "[default: for each series, the bundled model whose fit rules accept it]",
)
@click.option(
    "--format",
    "formats",
    default="dicom-seg,dicom-pm,dicom-sr,json",
    show_default=True,
    help="Comma-separated outputs (the DICOM ones are sent; dicom-pm needs --explain).",
)
@seg_options
@click.option(
    "--explain",
    default="auto",
    show_default=True,
    type=click.Choice(EXPLAIN_CHOICES),
    help="Saliency method, or none; auto: each model's measured default (its bundle's "
    "saliency section).",
)
@click.option("--device", default="auto", show_default=True, help="auto|cpu|cuda[:N]|mps.")
@click.option(
    "--max-associations",
    default=10,
    show_default=True,
    type=click.IntRange(1),
    help="Concurrent associations.",
)
@click.option(
    "--max-instance-size",
    default="2G",
    show_default=True,
    help="Larger instances are refused (out of resources).",
)
@click.option(
    "--min-free-disk",
    default="1G",
    show_default=True,
    help="Refuse instances (out of resources) when the WORKDIR's disk has less free.",
)
@click.option(
    "--retry-max-seconds",
    default=300.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Longest wait between tries of a failed send.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True),
    help="PEM certificate: accept (and send) over TLS.",
)
@click.option(
    "--tls-key", type=click.Path(dir_okay=False, exists=True), help="PEM private key of --tls-cert."
)
@click.option(
    "--tls-ca",
    type=click.Path(dir_okay=False, exists=True),
    help="PEM CA: require client certificates signed by it; trust it when sending.",
)
@click.option(
    "--writers",
    type=click.IntRange(0),
    help="Writer processes (started once, loading no model) that write each study's results; "
    "0: threads. Default: CPU cores - 1, or 0 on 2 cores or fewer (as medxai batch).",
)
@click.option(
    "--stop-timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0.0),
    help="On SIGTERM, wait this long for the current study before abandoning it "
    "(it runs again on the next start).",
)
@click.option(
    "--status",
    "show_status",
    is_flag=True,
    help="Show what WORKDIR holds (received, processed, sent, failed and why); does not listen.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON line per event (or the status as JSON)."
)
@guard
def listen_cmd(
    workdir: str,
    ae_title: str,
    port: int,
    host: str,
    allow: str | None,
    send_to: str | None,
    stow: str | None,
    idle_seconds: float,
    model: str | None,
    formats: str,
    seg_type: str,
    split_labels: bool,
    explain: str,
    device: str,
    max_associations: int,
    max_instance_size: str,
    min_free_disk: str,
    retry_max_seconds: float,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    writers: int | None,
    stop_timeout: float,
    show_status: bool,
    as_json: bool,
) -> None:
    """Run a DICOM node: receive studies by C-STORE, segment each study once no instance has
    arrived for --idle-seconds, send the results (DICOM SEG, ...) back to --send-to or --stow.

    Every instance is stored durably before it is acknowledged; results that cannot be sent
    are retried with backoff, also after a restart on the same WORKDIR. SIGTERM or Ctrl-C stops
    the node cleanly.

    \b
    Example:
      medxai listen -o work/ --ae-title MEDXAI --port 11112 --allow ORTHANC \\
          --send-to ORTHANC@pacs:4242
      medxai listen --status -o work/
    """
    from medxai.errors import InputError
    from medxai.node import DicomNode, NodeConfig, TlsConfig, node_status

    if show_status:
        st = node_status(workdir)
        if as_json:
            echo_json(st)
        else:
            click.echo(_status_text(st))
        return
    allowed = [a.strip() for a in (allow or "").split(",") if a.strip()]
    if not allowed:
        raise InputError(
            "--allow is required: the calling AE titles that may send studies",
            hint="e.g. --allow ORTHANC,PACS1",
        )
    tls = TlsConfig(tls_cert, tls_key, tls_ca) if (tls_cert or tls_key or tls_ca) else None

    def on_event(ev: Any) -> None:
        if as_json:
            click.echo(json.dumps(ev.to_dict(), default=str))
        else:
            d = ev.to_dict()
            d.pop("t", None)
            name = d.pop("event")
            stamp = time.strftime("%H:%M:%S", time.localtime(ev.t))
            click.echo(
                f"{stamp} {name} "
                + " ".join(f"{k}={v}" for k, v in d.items() if v not in (None, [], {}))
            )
        sys.stdout.flush()

    from medxai.batch.runner import default_writers

    config = NodeConfig(
        workdir=workdir,
        ae_title=ae_title,
        port=port,
        host=host,
        allow=allowed,
        send_to=send_to,
        stow=stow,
        idle_s=idle_seconds,
        model=model,
        formats=parse_formats(formats),
        seg_type=seg_type,
        split_labels=split_labels,
        explain=explain,
        device=device,
        max_associations=max_associations,
        max_instance_bytes=_parse_size(max_instance_size, "--max-instance-size") or 0,
        min_free_bytes=_parse_size(min_free_disk, "--min-free-disk") or 0,
        retry_max_s=retry_max_seconds,
        tls=tls,
        writers=default_writers() if writers is None else writers,
    )
    node = DicomNode(config, on_event=on_event)
    stopping: dict[str, int | None] = {"signal": None}

    def on_signal(signum: int, _frame: Any) -> None:
        stopping["signal"] = signum
        node.request_stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        node.start()
        node.wait()
    finally:
        clean = node.stop(timeout_s=stop_timeout)
        for s, h in old.items():
            signal.signal(s, h)
    if not clean:
        raise SystemExit(1)
