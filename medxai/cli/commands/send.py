"""``medxai send``: send DICOM files once, by C-STORE or STOW-RS."""

from __future__ import annotations

from pathlib import Path

import click

from medxai.cli.common import echo_json, guard


def _dicom_files(paths: tuple[str, ...]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out.extend(
                sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
            )
        else:
            out.append(path)
    return out


@click.command("send")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--to", "to", metavar="AE@HOST:PORT", help="Send by C-STORE.")
@click.option("--stow", metavar="URL", help="Send by STOW-RS to this DICOMweb URL.")
@click.option("--ae-title", default="MEDXAI", show_default=True, help="Our (calling) AE title.")
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True),
    help="PEM client certificate (C-STORE over TLS).",
)
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True), help="Its key.")
@click.option(
    "--tls-ca",
    type=click.Path(dir_okay=False, exists=True),
    help="PEM CA to trust for the receiver (turns TLS on).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@guard
def send_cmd(
    paths: tuple[str, ...],
    to: str | None,
    stow: str | None,
    ae_title: str,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    as_json: bool,
) -> None:
    """Send the DICOM files PATHS (files or folders) to a PACS once.

    Exit codes: 0 every file was taken, 1 some were refused or the receiver could not be
    reached, 2 bad arguments or a file that is not DICOM.
    """
    from medxai.errors import InputError
    from medxai.node import TlsConfig, parse_destination, send_files

    if bool(to) == bool(stow):
        raise InputError(
            "give exactly one of --to AE@host:port or --stow URL",
            hint="e.g. --to ORTHANC@localhost:4242",
        )
    dest = parse_destination(to or stow or "")
    if to and dest.kind != "dimse":
        raise InputError(f"--to takes AE@host:port, found {to!r}", hint="use --stow for a URL")
    if stow and dest.kind != "stow":
        raise InputError(
            f"--stow takes an http(s):// URL, found {stow!r}", hint="use --to for AE@host:port"
        )
    tls = TlsConfig(tls_cert, tls_key, tls_ca) if (tls_cert or tls_ca) else None
    files = _dicom_files(paths)
    outcome = send_files(files, dest, calling_ae=ae_title, tls=tls)
    if as_json:
        echo_json({"destination": str(dest), **outcome.to_dict()})
    else:
        click.echo(f"sent {len(outcome.sent)} of {len(files)} file(s) to {dest}")
        for f, why in outcome.refused.items():
            click.echo(f"  refused {f}: {why}", err=True)
        if outcome.error:
            click.echo(f"  not sent: {len(outcome.unsent)} file(s): {outcome.error}", err=True)
    if outcome.refused or outcome.unsent:
        raise SystemExit(1)
