"""``medxai evaluate``."""

from __future__ import annotations

import math
import os
from typing import Any

import click

from medxai.choices import METRIC_NAMES
from medxai.cli.common import check_model_arg, check_output_dir, echo_json, guard
from medxai.cli.progress import Progress


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


def format_summary(summary: dict, n_images: int) -> str:
    lines = []
    for label, stats in summary.items():
        lines.append(f"label {label}: {n_images} image(s)")
        lines.append(f"  {'metric':16s} {'mean':>8s} {'median':>8s} {'std':>8s} {'n':>5s}")
        for name in METRIC_NAMES:
            s = stats[name]
            lines.append(
                f"  {name:16s} {_fmt(s['mean']):>8s} {_fmt(s['median']):>8s} "
                f"{_fmt(s['std']):>8s} {s['n']:5d}"
            )
    return "\n".join(lines)


def _against_reference(
    paths: tuple[str, ...],
    model: str | None,
    reference: str | None,
    series: str | None,
    device: str,
) -> Any:
    """The evaluation against a DICOM SEG/RTSTRUCT, or None when the truth is no such file."""
    from medxai.evaluation.segmentation import (
        evaluate_against_reference,
        evaluate_model_against_reference,
        is_dicom_reference,
    )

    if reference is None and not (
        model is None and len(paths) == 2 and is_dicom_reference(paths[1])
    ):
        return None
    if reference is not None and not is_dicom_reference(reference):
        raise click.BadParameter(
            f"{reference} is not a DICOM SEG or RTSTRUCT", param_hint="--reference"
        )
    if model is not None:
        from medxai.models.registry import load_model

        return evaluate_model_against_reference(
            load_model(model), paths[0], reference or "", device=device
        )
    if reference is None:
        paths, reference = paths[:1], paths[1]
    if len(paths) != 1:
        raise click.UsageError("give one PRED with --reference")
    if series is None:
        raise click.UsageError(
            "a DICOM SEG/RTSTRUCT reference needs --series SERIES (the series it was drawn on)"
        )
    return evaluate_against_reference(paths[0], reference, series)


@click.command("evaluate")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "-m",
    "--model",
    default=None,
    help="Evaluate this model (name or bundle folder) on DATA (one path). Without it, "
    "two paths PRED_DIR GT_DIR are compared.",
)
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False),
    help="Write one row per image and label to this CSV file.",
)
@click.option(
    "--reference",
    type=click.Path(exists=True, dir_okay=False),
    help="A DICOM SEG or RTSTRUCT as the truth: `--model M SERIES --reference REF`, or "
    "`PRED --reference REF --series SERIES` (same as `PRED REF --series SERIES`).",
)
@click.option(
    "--series",
    type=click.Path(exists=True),
    help="The image series a DICOM SEG/RTSTRUCT reference was drawn on (its grid is the one "
    "scored on).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@guard
def evaluate_cmd(
    paths: tuple[str, ...],
    model: str | None,
    device: str,
    csv_path: str | None,
    reference: str | None,
    series: str | None,
    as_json: bool,
) -> None:
    """Score segmentations: `--model M DATA`, `PRED_DIR GT_DIR`, or against a DICOM SEG or
    RTSTRUCT: `PRED REF --series SERIES`, `--model M SERIES --reference REF`.

    A SEG or RTSTRUCT reference is rasterised onto the grid of the series it was drawn on; its
    segment (ROI) numbers are the labels scored, against the prediction's voxels of the same
    value. PRED is a label map on that grid (e.g. a `medxai segment` labels.nii.gz or result
    folder) or itself a SEG/RTSTRUCT.

    Metrics per image: Dice, IoU, pixel accuracy, sensitivity, specificity, HD95 (medpy; mm
    with patient geometry, else pixels) and the ISIC 2018 challenge score (Jaccard counted as 0
    below 0.65). The summary gives mean, median and std over images.
    """
    if model is not None and len(paths) != 1:
        raise click.UsageError("with --model give one DATA folder")
    if model is None and len(paths) != 2 and reference is None:
        raise click.UsageError("give PRED_DIR GT_DIR, or --model M DATA")
    check_model_arg(model)
    if csv_path:
        check_output_dir(os.path.dirname(os.path.abspath(csv_path)), option="--csv")
    from medxai.evaluation.segmentation import evaluate_folders, evaluate_model, write_csv

    result = _against_reference(paths, model, reference, series, device)

    if result is not None:
        pass
    elif model is not None:
        if len(paths) != 1:
            raise click.UsageError("with --model give one DATA folder")
        from medxai.models.registry import load_model

        bundle = load_model(model)
        bar = Progress(0, unit="images", label="evaluating", enabled=not as_json)

        def progress(done: int, total: int) -> None:
            bar.update(done, total=total)

        result = evaluate_model(bundle, paths[0], device=device, progress=progress)
        bar.close()
    else:
        if len(paths) != 2:
            raise click.UsageError("give PRED_DIR GT_DIR, or --model M DATA")
        result = evaluate_folders(paths[0], paths[1])
    if csv_path:
        write_csv(result.rows, csv_path)
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(format_summary(result.summary, result.to_dict()["n_images"]))
