"""``medxai info``."""

from __future__ import annotations

from typing import Any

import click

from medxai.cli.common import (
    dicom_warnings_as_lines,
    echo_json,
    error_entry,
    exit_code_for,
    guard,
    require_inputs,
    stderr_line,
)


def _format_derived(info: dict[str, Any]) -> str:
    d = info["derived"]
    lines = [
        info["path"],
        f"  {'form':14s} {info['form']} ({d['kind']}: {d['sop_class']})",
        f"  {'refers to':14s} series {', '.join(d['referenced_series']) or '-'}",
    ]
    if d["kind"] == "SEG":
        lines.append(
            f"  {'segmentation':14s} {d['segmentation_type'] or '-'}, {d['frames']} "
            f"frame(s) of {d['grid'][0]}x{d['grid'][1]}"
        )
        lines += [
            f"  segment {s['number']:3d}    {s['label'] or '-'} ({s['type'] or '-'}, "
            f"{s['algorithm'] or '-'})"
            for s in d["segments"]
        ]
    elif d["kind"] == "RTSTRUCT":
        lines += [
            f"  ROI {r['number']:3d}        {r['name'] or '-'}: {r['contours']} contour(s)"
            for r in d["rois"]
        ]
    elif d["kind"] == "PM":
        lines.append(f"  {'quantity':14s} {d['quantity'] or '-'} ({d['unit'] or 'no unit'})")
        lines.append(f"  {'grid':14s} {' x '.join(map(str, d['grid']))} ({d['pixel_data']})")
    elif d["kind"] == "SR":
        lines.append(f"  {'template':14s} {d['template'] or '-'}  {d['title']}")
        lines += [
            f"  measurement    {m['name']}: {m['value']} {m['unit']}"
            for m in d["measurements"][:20]
        ]
        if len(d["measurements"]) > 20:
            lines.append(f"  ... {len(d['measurements']) - 20} more measurement(s)")
    lines.append(f"  note: {info['note']}")
    return "\n".join(lines)


def _format(info: dict[str, Any]) -> str:
    if "derived" in info:
        return _format_derived(info)
    if "series" in info:
        lines = [
            f"{info['path']}: {info['form']}, {len(info['series'])} series "
            f"({info['skipped_files']} other file(s) passed over)"
        ]
        for s in info["series"]:
            lines.append(
                f"  {s['modality'] or '??':3s} {s['files']:5d} file(s) "
                f"{s['columns']}x{s['rows']}  {s['series_description'] or '-'}  "
                f"{s['series_instance_uid']}"
            )
        lines.append(info["note"])
        return "\n".join(lines)
    rows = [
        ("form", info["form"]),
        ("modality", info["modality"] or "-"),
        ("SOP class", info["sop_class_uid"] or "-"),
        ("photometric", info["photometric_interpretation"] or "-"),
        (
            "shape",
            f"{info['channels']} channel(s) x {' x '.join(map(str, info['shape']))} "
            f"({info['dtype']})",
        ),
        (
            "spacing",
            " x ".join(f"{v:g}" for v in info["spacing"])
            + (" mm" if info["has_patient_geometry"] else " (no patient geometry)"),
        ),
        ("orientation", info["orientation"]),
        ("value range", f"{info['value_range'][0]:g} .. {info['value_range'][1]:g}"),
        ("files", str(info["files"])),
        ("study UID", info["study_instance_uid"] or "-"),
        ("series UID", info["series_instance_uid"] or "-"),
        ("frame of ref.", info["frame_of_reference_uid"] or "-"),
    ]
    text = [info["path"]] + [f"  {k:14s} {v}" for k, v in rows]
    for v in info.get("volumes", []):
        key = ", ".join(f"{k} {val or '-'}" for k, val in v["key"].items())
        text.append(f"  volume {v['index']:3d}     {v['label']}: {key}; {v['slices']} slice(s)")
    if "volumes" in info:
        text.append(f"  note: {info['note']}")
    text += [f"  warning: {w}" for w in info["warnings"]]
    return "\n".join(text)


@click.command("info")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@guard
def info_cmd(paths: tuple[str, ...], as_json: bool) -> None:
    """Show what medxai sees in each PATH: form, modality, shape, spacing, orientation, UIDs.

    PATH is a picture, a DICOM file, a series folder, a DICOMDIR, or a NIfTI/NRRD/MHA file. A
    folder with several series is listed series by series; a folder holding no DICOM file but
    pictures or volumes stands for those files, as in `medxai segment`.

    With --json: one input prints its description; several print {"results": [...],
    "failures": [...]}. Exit codes: the highest over the inputs (0 described, 2 unusable).
    """
    from medxai.errors import MedxaiError

    items, failures = require_inputs(paths, as_json=as_json)
    single = len(items) == 1 and not failures and len(paths) == 1 and items[0].path == paths[0]

    from medxai.io.info import describe

    results = []
    for item in items:
        try:
            with dicom_warnings_as_lines(item.path, None if as_json else stderr_line):
                info = describe(item.path)
        except MedxaiError as err:
            if single:
                raise
            failures.append(error_entry(item.path, err))
            if not as_json:
                click.echo(f"Error: {err}", err=True)
            continue
        results.append(info)
        if not as_json:
            click.echo(_format(info))
    if as_json:
        echo_json(results[0] if single else {"results": results, "failures": failures})
    if failures:
        raise SystemExit(exit_code_for(failures))
