"""The ``medxai`` command: a click group whose commands parse options, call one API function and
map :class:`~medxai.errors.MedxaiError` to exit codes (0 success, 1 failure, 2 usage/input)."""

from __future__ import annotations

import sys

import click

from medxai._version import __version__
from medxai.cli.common import run_guarded

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", "-V", prog_name="medxai")
def cli() -> None:
    """medxai: segment medical images and explain the segmentation.

    Reads JPEG/PNG/TIFF, DICOM (files, multi-frame, series folders, DICOMDIR) and NIfTI/NRRD/MHA;
    segments with a MONAI U-Net bundle; explains with saliency and uncertainty maps; writes
    DICOM SEG, Parametric Map (saliency, uncertainty), TID 1500 SR measurements, RT Structure
    Set and Secondary Capture overlays, NIfTI, a PNG preview and a JSON report.

    \b
    Examples:
      medxai info study/                      what medxai sees in a file or folder
      medxai segment photo.jpg -o results/    segment with the bundled skin-lesion model
      medxai models                           list bundled models
      medxai train data/ -o my-model/         train a new model bundle
    """


def _register() -> None:
    """Add the commands of :data:`medxai.cli.commands.COMMANDS` (an explicit list; the command
    modules do not import this group)."""
    from medxai.cli.commands import COMMANDS

    for command in COMMANDS:
        cli.add_command(command)


_register()


def _quiet_third_party() -> None:
    """The CLI (not the library) silences warnings of dependencies that users cannot act on."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("highdicom", "pydicom", "monai", "nibabel"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    _quiet_third_party()
    return run_guarded(cli, argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
