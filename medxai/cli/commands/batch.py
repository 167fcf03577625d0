"""``medxai batch``: segment every series of a PACS export; resumable, with a job manifest."""

from __future__ import annotations

from typing import Any

import click

from medxai.cli.common import (
    EXPLAIN_CHOICES,
    check_folder_arg,
    check_model_arg,
    check_output_dir,
    echo_json,
    guard,
    parse_formats,
    parse_ints,
    seg_options,
    uncertainty_options,
)
from medxai.cli.progress import Progress


class _BatchBar:
    """The run's progress (:class:`medxai.batch.BatchProgress`) as two bars on a terminal: the
    header scan (files), then the series; nothing otherwise (see :mod:`medxai.cli.progress`)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.phase = ""
        self.bar: Progress | None = None

    def __call__(self, p: Any) -> None:
        if p.phase != self.phase or self.bar is None:
            self.close()
            scan = p.phase == "scan"
            self.bar = Progress(
                p.total,
                unit="files" if scan else "series",
                label="scanning" if scan else "",
                enabled=self.enabled,
            )
            self.phase = p.phase
        self.bar.update(p.done, total=p.total, counts=None if p.phase == "scan" else p.counts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _table(summary: Any) -> str:
    f, s = summary.files, summary.series
    lines = [f"{'':10}{'files':>8}{'series':>8}"]
    for state in ("done", "skipped", "failed", "pending", "running", "total"):
        if state in ("pending", "running") and not (f.get(state) or s.get(state)):
            continue
        lines.append(f"{state:10}{f.get(state, 0):>8}{s.get(state, 0):>8}")
    sc, pr = summary.scan, summary.process
    lines.append("")
    lines.append(
        f"scan: {sc['files']} files ({sc['headers_read']} headers read) in "
        f"{sc['seconds']:.2f} s, {sc['files_per_s']:.0f} files/s"
    )
    lines.append(
        f"this run: {pr['images_done']} series done of {pr['series']} processed in "
        f"{pr['seconds']:.2f} s, {pr['images_per_s']:.2f} images/s ({summary.backend})"
    )
    if summary.failed:
        lines.append("")
        lines.append("failed:")
        for item in summary.failed[:20]:
            what = item.get("series") or item.get("file")
            reason = str(item.get("reason") or "").splitlines()[0]
            lines.append(f"  {what}: {reason}")
        if len(summary.failed) > 20:
            lines.append(f"  ... {len(summary.failed) - 20} more in the manifest")
    if summary.skipped_reasons:
        lines.append("")
        lines.append("skipped series:")
        for reason, n in list(summary.skipped_reasons.items())[:10]:
            lines.append(f"  {n:>5}  {reason}")
    lines.append("")
    lines.append(f"manifest: {summary.manifest}")
    lines.append(f"csv: {summary.csv.get('series')}, {summary.csv.get('files')}")
    return "\n".join(lines)


@click.command("batch")
@click.argument("export_dir", type=click.Path(path_type=str))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="Results folder: <study>/<series>/ per series, manifest.sqlite, CSV, summary.",
)
@click.option(
    "-m",
    "--model",
    default=None,
    help="Bundled model name (see `medxai models`) or bundle folder. "
    "[default: for each series, the bundled model whose fit rules accept it]",
)
@click.option(
    "--explain",
    default="auto",
    show_default=True,
    type=click.Choice(EXPLAIN_CHOICES),
    help="Saliency method, or none; auto: each model's measured default (its bundle's "
    "saliency section).",
)
@click.option(
    "--explain-fallback",
    default="smoothgrad",
    show_default=True,
    type=click.Choice(("smoothgrad", "occlusion", "ig", "none")),
    help="What runs instead of a Grad-CAM-family method on a TorchScript network (no layer "
    "hooks): a method that works without them, or none. The report says which ran and why.",
)
@click.option(
    "--format",
    "formats",
    help="Comma-separated outputs: nifti,dicom-seg,dicom-pm,dicom-sr,dicom-rtstruct,dicom-sc,"
    "png,json. [default: dicom-seg,dicom-pm,dicom-sr,json: what a PACS takes back, and the "
    "report; see docs/outputs.md]",
)
@seg_options
@uncertainty_options
@click.option(
    "--workers",
    type=click.IntRange(1),
    help="Worker processes (1: this process), each loading the model once; with "
    "--scheduler local, the number of dask workers. Default: 1, but one per core (at most 8) "
    "for a CPU-only run of 2D images that writes with threads (--writers 0, the default on 2 "
    "cores or fewer): from 16 images where the workers can be forked (Linux, one torch thread "
    "each), from 200 where they must be spawned.",
)
@click.option(
    "--writers",
    type=click.IntRange(0),
    help="Writer processes the network's process feeds (they load no model; 0: write with "
    "threads of this process). Default: CPU cores - 1, or 0 on 2 cores or fewer. With "
    "--workers > 1 or --scheduler each worker writes with threads.",
)
@click.option(
    "--batch-size",
    default=8,
    show_default=True,
    type=click.IntRange(1),
    help="2D images per forward pass.",
)
@click.option(
    "--scan-workers",
    type=click.IntRange(1),
    help="Parallel header readers (default: CPU count, at most 8).",
)
@click.option("--device", default="auto", show_default=True, help="auto|cpu|cuda[:N]|mps.")
@click.option("--roi-size", help="Sliding-window size for 3D models, e.g. 96,96,96.")
@click.option("--overlap", type=click.FloatRange(0.0, 0.95), help="Sliding-window overlap.")
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="Run the series on a dask.distributed cluster (tcp://host:8786), or 'local' "
    "for a LocalCluster; workers must see the same paths.",
)
@click.option(
    "--retry-failed", is_flag=True, help="Run failed series (and re-read damaged files) again."
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@guard
def batch_cmd(
    export_dir: str,
    output: str,
    model: str | None,
    explain: str,
    explain_fallback: str,
    formats: str | None,
    seg_type: str,
    split_labels: bool,
    uncertainty: str | None,
    mc_samples: int,
    workers: int | None,
    writers: int | None,
    batch_size: int,
    scan_workers: int | None,
    device: str,
    roi_size: str | None,
    overlap: float | None,
    scheduler: str | None,
    retry_failed: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Segment every series of the PACS export EXPORT_DIR that fits the model.

    Reads only headers to find every study, series and stack (DICOMDIRs, nested folders,
    duplicates, non-DICOM and damaged files are all accounted for), runs the series that fit the
    model (modality, 2D/3D, colour) through the same pipeline as `medxai segment`, and records
    every file and series in OUTPUT/manifest.sqlite with its state, reason, outputs and timings.

    Run it again with the same arguments to resume: done series are skipped, interrupted ones
    are redone (results are written atomically). --retry-failed retries failures.

    Exit codes: 0 everything that fits the model was done, 1 a series or a file failed,
    2 bad arguments or input.
    """
    formats_list = parse_formats(formats)
    roi = parse_ints(roi_size, "--roi-size")
    check_folder_arg(export_dir, what="folder (a PACS export)")
    check_output_dir(output)
    check_model_arg(model)

    import warnings

    from medxai.batch import run_batch
    from medxai.batch.runner import default_writers
    from medxai.pipeline import SegmentOptions

    opts = SegmentOptions(
        formats=formats_list,
        explain=explain,
        explain_fallback=explain_fallback,
        device=device,
        roi_size=roi,
        overlap=overlap,
        seg_type=seg_type,
        split_labels=split_labels,
        uncertainty=uncertainty,
        mc_samples=mc_samples,
    )
    bar = _BatchBar(enabled=not quiet and not as_json)
    with warnings.catch_warnings():
        # per-file problems are recorded in the manifest; pydicom's warnings would drown them
        warnings.simplefilter("ignore")
        summary = run_batch(
            export_dir,
            output,
            model=model,
            options=opts,
            workers=workers,
            scheduler=scheduler,
            retry_failed=retry_failed,
            batch_size=batch_size,
            scan_workers=scan_workers,
            progress=bar,
            writers=default_writers() if writers is None else writers,
        )
    bar.close()
    if as_json:
        echo_json(summary.to_dict())
    else:
        click.echo(_table(summary))
    if summary.exit_code:
        raise SystemExit(summary.exit_code)
