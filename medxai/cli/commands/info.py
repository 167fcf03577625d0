"""``medxai info``."""

from __future__ import annotations

from typing import Any

import click

from medxai.cli.common import echo_json, guard
from medxai.cli.main import cli


def _format(info: dict[str, Any]) -> str:
    if "series" in info:
        lines = [f"{info['path']}: {info['form']}, {len(info['series'])} series "
                 f"({info['skipped_files']} other file(s) passed over)"]
        for s in info["series"]:
            lines.append(f"  {s['modality'] or '??':3s} {s['files']:5d} file(s) "
                         f"{s['columns']}x{s['rows']}  {s['series_description'] or '-'}  "
                         f"{s['series_instance_uid']}")
        lines.append(info["note"])
        return "\n".join(lines)
    rows = [
        ("form", info["form"]),
        ("modality", info["modality"] or "-"),
        ("SOP class", info["sop_class_uid"] or "-"),
        ("photometric", info["photometric_interpretation"] or "-"),
        ("shape", f"{info['channels']} channel(s) x {' x '.join(map(str, info['shape']))} "
                  f"({info['dtype']})"),
        ("spacing", " x ".join(f"{v:g}" for v in info["spacing"])
         + (" mm" if info["has_patient_geometry"] else " (no patient geometry)")),
        ("orientation", info["orientation"]),
        ("value range", f"{info['value_range'][0]:g} .. {info['value_range'][1]:g}"),
        ("files", str(info["files"])),
        ("study UID", info["study_instance_uid"] or "-"),
        ("series UID", info["series_instance_uid"] or "-"),
        ("frame of ref.", info["frame_of_reference_uid"] or "-"),
    ]
    text = [info["path"]] + [f"  {k:14s} {v}" for k, v in rows]
    text += [f"  warning: {w}" for w in info["warnings"]]
    return "\n".join(text)


@cli.command("info")
@click.argument("path", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@guard
def info_cmd(path: str, as_json: bool) -> None:
    """Show what medxai sees in PATH: form, modality, shape, spacing, orientation, UIDs.

    PATH is a picture, a DICOM file, a series folder, a DICOMDIR, or a NIfTI/NRRD/MHA file. A
    folder with several series is listed series by series.
    """
    from medxai.io.info import describe

    info = describe(path)
    if as_json:
        echo_json(info)
    else:
        click.echo(_format(info))
