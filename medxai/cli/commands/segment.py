"""``medxai segment`` and ``medxai models``."""

from __future__ import annotations

from typing import Any

import click

from medxai.choices import TTA_CHOICES
from medxai.cli.common import (
    EXPLAIN_CHOICES,
    check_model_arg,
    check_output_dir,
    dicom_warnings_as_lines,
    echo_json,
    error_entry,
    exit_code_for,
    explain_options,
    explain_settings,
    guard,
    parse_formats,
    parse_ints,
    require_inputs,
    seg_options,
    stderr_line,
    uncertainty_options,
)
from medxai.cli.progress import Progress, summary_table
from medxai.errors import MedxaiError


def _label_size(lab: dict) -> str:
    for key, unit in (
        ("volume_ml", "ml"),
        ("area_mm2", "mm²"),
        ("area_pixels", "pixels"),
        ("voxel_count", "voxels"),
    ):
        if key in lab:
            return f"{lab['name']} {lab[key]:g} {unit}"
    return str(lab.get("name"))


def _outcomes(results: list[dict], failures: list[dict]) -> dict[str, int]:
    """Summary counts: failures with exit code 2 (unusable, or wrong for the model) are
    ``skipped``, the others ``failed``; ``done`` counts result folders written."""
    skipped = sum(1 for f in failures if int(f.get("exit_code", 1)) == 2)
    return {"done": len(results), "skipped": skipped, "failed": len(failures) - skipped}


@click.command("segment")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option(
    "-o",
    "--output",
    default="medxai-results",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the results (one subfolder per input).",
)
@click.option(
    "-m",
    "--model",
    default=None,
    help="Bundled model name (see `medxai models`) or bundle folder. "
    "[default: for each input, the bundled model whose fit rules accept it]",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto|cpu|cuda[:N]|mps (auto prefers CUDA; mixed precision on CUDA).",
)
@click.option("--roi-size", help="Sliding-window size, e.g. 96,96,96 (default: the model's).")
@click.option("--overlap", type=click.FloatRange(0.0, 0.95), help="Sliding-window overlap.")
@click.option("--sw-batch-size", type=click.IntRange(1), help="Windows per forward pass.")
@click.option(
    "--tta",
    type=click.Choice(TTA_CHOICES),
    help="Test-time augmentation of whole-image models (default: the model's).",
)
@uncertainty_options
@click.option(
    "--format",
    "formats",
    help="Comma-separated outputs: nifti,dicom-seg,dicom-pm,dicom-sr,dicom-rtstruct,"
    "dicom-sc,png,json. Default: all for DICOM inputs (dicom-rtstruct for "
    "series only); nifti,png,json for pictures and NIfTI/NRRD.",
)
@seg_options
@click.option(
    "--explain",
    default="auto",
    show_default=True,
    type=click.Choice(EXPLAIN_CHOICES),
    help="Saliency method, or none; auto: the model's measured default (its bundle's "
    "saliency section; `medxai models describe` shows it).",
)
@explain_options
@click.option(
    "--volume",
    default="all",
    show_default=True,
    help="For a DICOM series or enhanced object holding several volumes (echoes, b-values, "
    "temporal positions; `medxai info` lists them): N (1-based) or all, each into its own "
    "result folder <name>_<label> (e.g. <name>_echo2).",
)
@click.option(
    "--channels",
    is_flag=True,
    help="The INPUTS are one case: one co-registered file per input channel, in the model's "
    "channel order (e.g. BraTS T1c T1 T2 FLAIR), stacked in memory; needs --model. Results go "
    "to OUTPUT/<first input's name>.",
)
@click.option("--overwrite", is_flag=True, help="Replace existing result folders.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages.")
@guard
def segment_cmd(
    inputs: tuple[str, ...],
    output: str,
    model: str | None,
    device: str,
    roi_size: str | None,
    overlap: float | None,
    sw_batch_size: int | None,
    tta: str | None,
    uncertainty: str | None,
    mc_samples: int,
    formats: str | None,
    seg_type: str,
    split_labels: bool,
    explain: str,
    layer: str | None,
    target_region: str | None,
    roi_box: str | None,
    roi_mask: str | None,
    volume: str,
    channels: bool,
    overwrite: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Segment each INPUT and explain the result.

    INPUT is a picture (JPEG/PNG/TIFF), a DICOM file (single or multi-frame), a DICOM series
    folder, a DICOMDIR, or a NIfTI/NRRD/MHA volume. The model is loaded once for all inputs.
    Writes OUTPUT/<input name>/: labels.nii.gz (+ labels.json), saliency_<label>.nii.gz,
    preview.png, seg.dcm, overlay_sc/*.dcm and report.json.

    A folder holding no DICOM file but pictures or volumes stands for those files (each its own
    input, in name order). Every input is checked (exists, readable, a form medxai reads) before
    the model is loaded; unusable inputs are reported and the others are still done.

    Exit codes: the highest over the inputs: 0 all done, 1 some failed while processing, 2 an
    input was unusable (missing, unreadable, unknown form, wrong for the model) or bad usage.
    """
    if volume != "all" and not (volume.isdigit() and int(volume) >= 1):
        raise click.BadParameter(f"{volume!r} is not all or a number from 1", param_hint="--volume")
    formats_list = parse_formats(formats)
    roi = parse_ints(roi_size, "--roi-size")
    check_output_dir(output)
    check_model_arg(model)
    if channels and not model:
        raise click.UsageError(
            "--channels needs --model: the model says how many channels it takes, in which order"
        )
    items, failures = require_inputs(inputs, as_json=as_json)
    if channels:
        _check_channel_inputs(items, failures, volume, as_json)

    from medxai.models.registry import load_model
    from medxai.pipeline import (
        SegmentOptions,
        held_network,
        input_volumes,
        segment_path,
        unique_names,
    )

    opts = SegmentOptions(
        formats=formats_list,
        explain=explain,
        **explain_settings(layer, target_region, roi_box, roi_mask),
        device=device,
        roi_size=roi,
        overlap=overlap,
        sw_batch_size=sw_batch_size,
        tta=tta,
        uncertainty=uncertainty,
        mc_samples=mc_samples,
        seg_type=seg_type,
        split_labels=split_labels,
        overwrite=overwrite,
    )
    results = []
    paths = [it.path for it in items]
    single = len(paths) == 1 and not failures
    # a bar on a terminal for several inputs; unusable inputs were answered already
    bar = Progress(
        len(paths) + len(failures),
        done=len(failures),
        enabled=not (quiet or as_json) and not single,
    )
    say = None if quiet or as_json else (bar.message if bar.tty else stderr_line)
    bundle = load_model(model) if model else None
    if say and bundle is not None:
        say(f"model {bundle.name} {bundle.version}")
    if channels:
        assert bundle is not None
        with dicom_warnings_as_lines(paths[0], None if as_json else stderr_line):
            res = _segment_channels(paths, bundle, output, opts, say)
        if as_json:
            echo_json({"results": [res.to_dict()], "failures": []})
            return
        if not quiet:
            labels = ", ".join(_label_size(lab) for lab in res.report["labels"])
            click.echo(f"{', '.join(paths)} -> {res.output_dir}  ({labels})")
            _report_warnings(paths[0], res.report, stderr_line)
        return
    # one model for every input: its network held ready for all of them, instead of set up
    # (layout, device) and put back for each (medxai.inference.network_on)
    with held_network(bundle if len(paths) > 1 else None, device):
        for path, name in zip(paths, unique_names(paths)):
            try:
                with dicom_warnings_as_lines(path, None if as_json else stderr_line):
                    for index, suffix in input_volumes(path, volume):
                        res = segment_path(
                            path,
                            bundle,
                            output,
                            opts,
                            name=name + suffix,
                            progress=say,
                            volume=index,
                        )
                        results.append(res.to_dict())
                        if not as_json and not quiet:
                            labels = ", ".join(_label_size(lab) for lab in res.report["labels"])
                            bar.message(
                                f"{path}{suffix and ' ' + suffix[1:]} -> {res.output_dir}  ({labels})",
                                err=False,
                            )
                        if not quiet:
                            _report_warnings(path, res.report, bar.message)
                bar.update()
            except MedxaiError as err:
                failures.append(error_entry(path, err))
                if single:
                    raise
                bar.message(f"Error: {err}")
                bar.update()
    bar.close()
    if bar.enabled:
        click.echo(summary_table(_outcomes(results, failures), seconds=bar.elapsed_s), err=True)
    if as_json:
        echo_json({"results": results, "failures": failures})
    if failures:
        raise SystemExit(exit_code_for(failures))


def _report_warnings(path: str, report: dict, say: Any) -> None:
    """The warnings of one result: a saliency fallback, outputs that were not written."""
    fallback = (report.get("saliency") or {}).get("fallback")
    if fallback:
        say(f"warning: {path}: {fallback}")
    for skip in report.get("skipped_outputs", []):
        say(f"warning: no {'/'.join(skip['formats'])} for {path}: {skip['reason']}")


def _check_channel_inputs(
    items: list[Any], failures: list[dict], volume: str, as_json: bool
) -> None:
    """``--channels`` takes exactly the files given, in their order: an unusable one ends the
    command (exit 2, with the failures as JSON under ``--json``); so does a folder of pictures
    or volumes (its files' name order is not the model's channel order) and ``--volume N``."""
    if failures:
        if as_json:
            echo_json({"results": [], "failures": failures})
        raise SystemExit(exit_code_for(failures))
    folders = sorted({it.given for it in items if it.given != it.path})
    if folders:
        raise click.UsageError(
            f"--channels takes one file per channel, in the model's channel order; "
            f"{folders[0]} is a folder of files: name each file"
        )
    if volume != "all":
        raise click.UsageError("--channels does not take --volume: give each channel's file")


def _segment_channels(paths: list[Any], bundle: Any, output: str, opts: Any, say: Any) -> Any:
    """``--channels``: the files as one multi-channel case (:func:`medxai.io.channels.load_channels`),
    their count checked against the model before any is read."""
    from medxai.io.channels import check_channel_count, load_channels
    from medxai.pipeline import segment_loaded, unique_names

    spec = bundle.contract.input
    check_channel_count(len(paths), spec.channels, spec.channel_names, bundle.name)
    loaded = load_channels(paths)
    return segment_loaded(
        loaded, bundle, output, opts, name=unique_names(paths[:1])[0], progress=say
    )


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print the model cards as JSON.")
@guard
def models_cmd(as_json: bool) -> None:
    """List the bundled models with their card (task, input, metrics, weights hash)."""
    from medxai.models.registry import DEFAULT_MODEL, list_models

    cards: list[dict[str, Any]] = []
    for m in list_models():
        card = m.card()
        cards.append(
            {
                "name": m.name,
                "default": m.name == DEFAULT_MODEL,
                "available": m.available,
                "summary": m.summary,
                "path": str(m.path),
                "card": card,
            }
        )
    if as_json:
        echo_json(cards)
        return
    for c in cards:
        card = c["card"]
        click.echo(
            f"{c['name']}{'  (default)' if c['default'] else ''}"
            f"{'' if c['available'] else '  [weights missing]'}"
        )
        click.echo(f"  {c['summary']}")
        if card:
            click.echo(
                f"  version {card.get('version')}, weights sha256 "
                f"{str(card.get('weights_sha256'))[:16]}..."
            )
            for k, v in (card.get("metrics") or {}).items():
                click.echo(f"  {k}: {v}")
        click.echo(f"  {c['path']}")
