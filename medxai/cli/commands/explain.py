"""``medxai explain``."""

from __future__ import annotations

import os

import click

from medxai.choices import EVALUATION_METHODS, METHOD_CHOICES, SALIENCY_METHODS
from medxai.cli.common import (
    check_model_arg,
    check_output_dir,
    dicom_warnings_as_lines,
    echo_json,
    error_entry,
    exit_code_for,
    explain_options,
    explain_settings,
    guard,
    require_inputs,
    stderr_line,
)
from medxai.errors import InputError, MedxaiError


@click.command("explain")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-m", "--model", default=None, help="Bundled model name or bundle folder.")
@click.option(
    "-o", "--output", default="medxai-results", show_default=True, type=click.Path(file_okay=False)
)
@click.option(
    "--method",
    default="auto",
    show_default=True,
    type=click.Choice(METHOD_CHOICES),
    help="Saliency method of the maps; auto: the model's measured default (its bundle's "
    "saliency section: method, layer and target).",
)
@click.option(
    "--methods",
    default=",".join(EVALUATION_METHODS),
    show_default=True,
    help="With --evaluate: comma-separated methods to compare.",
)
@click.option(
    "--evaluate",
    is_flag=True,
    help="Measure faithfulness over INPUT (a folder of images, e.g. ISIC val) instead "
    "of writing maps.",
)
@click.option("--limit", type=click.IntRange(1), help="With --evaluate: at most this many images.")
@click.option("--label", default=1, show_default=True, help="Label to explain (--evaluate).")
@click.option(
    "--baseline",
    default="mean",
    show_default=True,
    type=click.Choice(["mean", "blur", "zero"]),
    help="With --evaluate: what deleted pixels become.",
)
@explain_options
@click.option("--device", default="auto", show_default=True)
@click.option("--overwrite", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("-q", "--quiet", is_flag=True)
@guard
def explain_cmd(
    inputs: tuple[str, ...],
    model: str | None,
    output: str,
    method: str,
    methods: str,
    evaluate: bool,
    limit: int | None,
    label: int,
    baseline: str,
    layer: str | None,
    target_region: str | None,
    roi_box: str | None,
    roi_mask: str | None,
    device: str,
    overwrite: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Saliency maps of the model's segmentation of each INPUT, or (--evaluate) a faithfulness
    table of the methods over a folder of images.

    Maps: one per label, as NIfTI on the input grid (saliency_<label>.nii.gz), a PNG overlay,
    and for DICOM inputs a Secondary Capture overlay; plus report.json.

    --evaluate prints per method: deletion and insertion AUC (with random-order baselines),
    share of saliency inside the mask, model-randomisation rank correlation (lower is better),
    seconds per image and cost relative to one inference, and how much the map says beyond the
    mask: its correlation with the mask, the share outside it (context) and its sparseness.
    """
    region_opts = explain_settings(layer, target_region, roi_box, roi_mask)
    if evaluate and (roi_box or roi_mask or target_region == "roi"):
        raise click.BadParameter(
            "--evaluate measures named targets; a user region applies to maps",
            param_hint="--roi-box",
        )
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    bad_methods = [m for m in chosen if m not in SALIENCY_METHODS]
    if evaluate and bad_methods:
        raise click.BadParameter(
            f"unknown method(s) {bad_methods}; choose from {', '.join(SALIENCY_METHODS)}",
            param_hint="--methods",
        )
    check_model_arg(model)
    if not evaluate:
        check_output_dir(output)
    if evaluate:
        # a dataset folder (images/ + labels/, or pictures with masks), not inputs to segment
        for inp in inputs:
            if not os.path.exists(inp):
                raise InputError(
                    "does not exist",
                    path=inp,
                    hint="give a folder of images (or images/ + labels/)",
                )
    else:
        items, failures = require_inputs(inputs, as_json=as_json)

    from medxai.models.registry import load_model

    bundle = load_model(model)
    say = None if quiet or as_json else stderr_line
    if evaluate:
        from medxai.evaluation.saliency import evaluate_saliency, format_table, list_images

        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        bad = [m for m in chosen if m not in SALIENCY_METHODS]
        if bad:
            raise click.BadParameter(f"unknown method(s) {bad}", param_hint="--methods")
        images = [p for inp in inputs for p in list_images(inp, limit)][: limit or None]
        result = evaluate_saliency(
            bundle,
            images,
            chosen,
            label=label,
            device=device,
            baseline=baseline,
            target=target_region or bundle.contract.saliency.target,
            layer=layer,
            progress=say,
        )
        if as_json:
            echo_json(result)
        else:
            click.echo(format_table(result))
        return
    from medxai.io.readers import load_image
    from medxai.pipeline import SegmentOptions, segment_loaded, unique_names

    results = []
    paths = [it.path for it in items]
    single = len(paths) == 1 and not failures
    for path, name in zip(paths, unique_names(paths)):
        try:
            with dicom_warnings_as_lines(path, None if as_json else stderr_line):
                loaded = load_image(path)
            formats = ["nifti", "png", "json"] + (["dicom-sc"] if loaded.dicom is not None else [])
            opts = SegmentOptions(
                formats=formats,
                explain=method,
                device=device,
                overwrite=overwrite,
                **region_opts,
            )
            res = segment_loaded(loaded, bundle, output, opts, name=name, progress=say)
            results.append(res.to_dict())
            if not as_json and not quiet:
                click.echo(f"{path} -> {res.output_dir}")
        except MedxaiError as err:
            failures.append(error_entry(path, err))
            if single:
                raise
            click.echo(f"Error: {err}", err=True)
    if as_json:
        echo_json({"results": results, "failures": failures})
    if failures:
        raise SystemExit(exit_code_for(failures))
