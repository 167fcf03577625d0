"""``medxai train``."""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Callable

import click

from medxai.choices import AUGMENTATIONS
from medxai.cli.common import (
    check_folder_arg,
    check_output_dir,
    echo_json,
    guard,
    parse_floats,
    parse_ints,
    stderr_line,
)
from medxai.cli.progress import Progress, is_terminal


def _flip_axes(value: str | None) -> list[int] | None:
    """``--flip-axes``: None (all three), ``none`` (no mirroring) or a list of axes in 0..2."""
    if value is None:
        return None
    if value.strip().lower() == "none":
        return []
    axes = parse_ints(value, "--flip-axes") or []
    if any(a not in (0, 1, 2) for a in axes):
        raise click.BadParameter(f"axes are 0, 1 or 2, got {value!r}", param_hint="--flip-axes")
    return axes


_EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+) ")


def _epoch_log(epochs: int, *, enabled: bool) -> Callable[[str], None]:
    """The trainer's log lines on stderr; on a terminal (and without ``--json``) also an epoch
    bar with the rate and ETA under them, moved on by each ``epoch N/M`` line."""
    if not (enabled and is_terminal(sys.stderr)):
        return stderr_line
    bar: Progress | None = None

    def log(line: str) -> None:
        nonlocal bar
        m = _EPOCH_LINE.match(line)
        if m and bar is None:  # the first epoch of this run: the earlier ones were resumed,
            bar = Progress(  # counted but not in the rate
                epochs,
                unit="epochs",
                label="training",
                done=int(m.group(1)) - 1,
                min_interval_s=0,
            )
        if bar is None:
            stderr_line(line)
            return
        bar.message(line)
        if m:
            bar.update(int(m.group(1)), total=int(m.group(2)))

    return log


@click.command("train")
@click.argument("data", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="Bundle folder to write (training state goes to OUTPUT/training/).",
)
@click.option(
    "--val-data",
    type=click.Path(file_okay=False),
    help="Separate validation folder; default: hold out --val-fraction of DATA.",
)
@click.option("--val-fraction", default=0.2, show_default=True, type=click.FloatRange(0.01, 0.9))
@click.option("--spatial-size", help="2D: resize pictures to this size, e.g. 192,192.")
@click.option("--roi-size", help="3D: patch size for training and sliding window, e.g. 96,96,96.")
@click.option("--spacing", help="3D: resample to this voxel spacing in mm, e.g. 1.5,1.5,2.")
@click.option(
    "--intensity",
    type=click.Choice(["auto", "scale", "zscore", "ct"]),
    default="auto",
    show_default=True,
    help="Intensity normalisation (ct: window -1000..1000 HU).",
)
@click.option(
    "--augment",
    type=click.Choice(AUGMENTATIONS),
    default="photo",
    show_default=True,
    help="Augmentation: photo (2D: any rotation, flips, colour jitter), radiograph "
    "(2D upright X-rays: small rotation, scale, shift, contrast; no flips) or volume "
    "(3D: --flip-axes mirroring plus rotation up to 15 degrees, scaling 0.85-1.15, "
    "intensity scale/shift, gamma and noise); 3D runs with photo only mirror.",
)
@click.option(
    "--flip-axes",
    help="3D: RAS axes to mirror at random (0 = left-right, "
    "1 = posterior-anterior, 2 = inferior-superior), e.g. 0; 'none' for no mirroring. "
    " [default: 0,1,2]",
)
@click.option("--width", default=16, show_default=True, help="Channels of the first UNet level.")
@click.option("--depth", default=5, show_default=True, help="UNet levels (depth-1 downsamplings).")
@click.option("--res-units", "num_res_units", default=2, show_default=True)
@click.option("--dropout", default=0.1, show_default=True)
@click.option("--epochs", default=50, show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--lr", default=2e-3, show_default=True)
@click.option("--weight-decay", default=1e-4, show_default=True)
@click.option("--warmup-epochs", default=2, show_default=True)
@click.option(
    "--time-budget", "time_budget_min", type=float, help="Stop (resumably) after this many minutes."
)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto|cpu|cuda[:N]|mps")
@click.option("--resume", is_flag=True, help="Continue the run in OUTPUT.")
@click.option(
    "--init-from",
    type=click.Path(file_okay=False),
    help="Start from this bundle's weights (fine-tuning; same network).",
)
@click.option(
    "--swa-epochs",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Average the weights of the last N epochs (stochastic weight averaging), "
    "at a constant learning rate of --swa-lr.",
)
@click.option(
    "--swa-lr",
    type=click.FloatRange(0, min_open=True),
    help="Learning rate of the SWA epochs.  [default: --lr / 4]",
)
@click.option("--name", default="custom-unet", show_default=True, help="Model name for the card.")
@click.option("--model-version", "version", default="0.1.0", show_default=True)
@click.option(
    "--label-name", "label_names", multiple=True, help="Name of label 1, 2, ... (repeat)."
)
@click.option("--modality", "modalities", multiple=True, help="DICOM modality the model is for.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("-q", "--quiet", is_flag=True)
@guard
def train_cmd(
    data: str,
    output: str,
    val_data: str | None,
    val_fraction: float,
    spatial_size: str | None,
    roi_size: str | None,
    spacing: str | None,
    intensity: str,
    flip_axes: str | None,
    as_json: bool,
    quiet: bool,
    **kw: object,
) -> None:
    """Train a MONAI U-Net (DiceCE loss) on DATA and write a model bundle to OUTPUT.

    DATA is a folder of 2D pictures with masks (images/ + masks/, masks named like the image,
    optionally with _segmentation/_mask/_label) or of 3D volumes (dataset.json in Medical
    Segmentation Decathlon style, imagesTr/ + labelsTr/, or images/ + labels/).
    """
    spatial_sizes = parse_ints(spatial_size, "--spatial-size")
    roi_sizes = parse_ints(roi_size, "--roi-size")
    spacings = parse_floats(spacing, "--spacing")
    flips = _flip_axes(flip_axes)
    check_folder_arg(data, what="training data folder")
    if val_data:
        check_folder_arg(val_data, what="validation data folder")
    if kw.get("init_from"):
        check_folder_arg(str(kw["init_from"]), what="bundle folder (--init-from)")
    check_output_dir(output)

    from medxai.training.trainer import TrainConfig, train

    intensity_spec = {
        "auto": None,
        "scale": None,
        "zscore": {"kind": "zscore"},
        "ct": {"kind": "scale", "a_min": -1000.0, "a_max": 1000.0},
    }[intensity]
    cfg = TrainConfig(
        data=data,
        output=output,
        val_data=val_data,
        val_fraction=val_fraction,
        intensity=intensity_spec,
        spatial_size=spatial_sizes,
        roi_size=roi_sizes,
        spacing=spacings,
        flip_axes=flips,
        command="medxai " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        **kw,  # type: ignore[arg-type]
    )
    result = train(cfg, log=None if quiet else _epoch_log(cfg.epochs, enabled=not as_json))
    summary = {
        "bundle": str(result.bundle),
        "epochs_done": result.epochs_done,
        "best_epoch": result.best_epoch,
        "best_val_dice": round(result.best_metric, 4),
        "finished": result.finished,
        "seconds": round(result.seconds, 1),
    }
    if as_json:
        echo_json(summary)
    elif not quiet:
        state = "finished" if result.finished else "stopped by the time budget (use --resume)"
        click.echo(
            f"{state}: best val Dice {result.best_metric:.4f} at epoch "
            f"{result.best_epoch}; bundle in {result.bundle}"
        )
