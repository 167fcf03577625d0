"""``medxai explain``."""

from __future__ import annotations

import os

import click

from medxai.choices import EVALUATION_METHODS, SALIENCY_METHODS
from medxai.cli.common import (
    check_model_arg,
    check_output_dir,
    dicom_warnings_as_lines,
    echo_json,
    error_entry,
    exit_code_for,
    guard,
    require_inputs,
    stderr_line,
)
from medxai.errors import InputError, MedxaiError

METHOD_CHOICES = SALIENCY_METHODS


@click.command("explain")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-m", "--model", default=None, help="Bundled model name or bundle folder.")
@click.option(
    "-o", "--output", default="medxai-results", show_default=True, type=click.Path(file_okay=False)
)
@click.option("--method", default="gradcam", show_default=True, type=click.Choice(METHOD_CHOICES))
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
@click.option(
    "--target",
    "target_region",
    default="segment",
    show_default=True,
    type=click.Choice(["segment", "border", "missed", "image"]),
    help="With --evaluate: the question each map answers (the segment, its border, "
    "pixels left just below the threshold, the whole image).",
)
@click.option(
    "--layer",
    default=None,
    help="With --evaluate: CAM layer(s): a module name or role (skip.0, bottleneck, "
    "encoder.2, encoder...); default: the method's default.",
)
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
    target_region: str,
    layer: str | None,
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
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    bad_methods = [m for m in chosen if m not in METHOD_CHOICES]
    if evaluate and bad_methods:
        raise click.BadParameter(
            f"unknown method(s) {bad_methods}; choose from {', '.join(METHOD_CHOICES)}",
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
        bad = [m for m in chosen if m not in METHOD_CHOICES]
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
            target=target_region,
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
                formats=formats, explain=method, device=device, overwrite=overwrite
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
