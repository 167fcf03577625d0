"""``medxai channels FILE... -o OUT.nii.gz``: several single-channel files (one per MR sequence)
as the one 4D NIfTI that multi-channel bundles (BraTS) take."""

from __future__ import annotations

import click

from medxai.cli.common import guard

__all__ = ["channels_cmd"]


@click.command("channels")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(),
    help="The 4D NIfTI to write (.nii.gz): the channels in its 4th axis, in the order of FILES.",
)
@click.option(
    "--model",
    default=None,
    help="Check FILES against this model's input channels "
    "(a bundled model name or a bundle folder) before reading them.",
)
@guard
def channels_cmd(files: tuple[str, ...], output: str, model: str | None) -> None:
    """Stack co-registered single-channel FILES (NIfTI, NRRD, MHA, DICOM series folders; one per
    MR sequence, in the model's channel order) into one 4D NIfTI for `medxai segment --model`.

    \b
    Example (BraTS: T1c, T1, T2, FLAIR):
      medxai channels t1c.nii.gz t1.nii.gz t2.nii.gz flair.nii.gz -o case.nii.gz \\
          --model bundles/brats_mri_segmentation
      medxai segment case.nii.gz --model bundles/brats_mri_segmentation -o results/

    The files must share one grid (voxel shape and affine); nothing is resampled."""
    from medxai.io.channels import write_channel_stack

    expected: int | None = None
    names: tuple[str, ...] = ()
    name = ""
    if model:
        from medxai.models.registry import load_model

        bundle = load_model(model)
        spec = bundle.contract.input
        expected, names, name = spec.channels, spec.channel_names, bundle.name
    out = write_channel_stack(files, output, expected=expected, expected_names=names, model=name)
    click.echo(
        f"wrote {out}: {len(files)} channels ({', '.join(names) if names else 'in the given order'})"
    )
