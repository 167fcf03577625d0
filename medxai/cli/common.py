"""Shared CLI helpers: error mapping, option parsing, output of JSON."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from medxai.choices import EXPLAIN_CHOICES, FORMAT_CHOICES
from medxai.errors import InputError, MedxaiError, ModelError
from medxai.io.detect import sniff_folder, sniff_form

__all__ = [
    "EXPLAIN_CHOICES",
    "explain_options",
    "explain_settings",
    "FORMAT_CHOICES",
    "guard",
    "run_guarded",
    "parse_ints",
    "parse_floats",
    "parse_formats",
    "echo_json",
    "stderr_line",
    "InputItem",
    "resolve_inputs",
    "require_inputs",
    "check_output_dir",
    "check_model_arg",
    "check_folder_arg",
    "exit_code_for",
    "error_entry",
    "dicom_warnings_as_lines",
]

# Everything in this module runs before torch/MONAI are imported: a bad call is answered in a
# small fraction of the import time. Keep it free of numpy, torch, MONAI and pydicom imports.


class MedxaiClickError(click.ClickException):
    """A :class:`MedxaiError` shown by click: message only, the error's exit code."""

    def __init__(self, err: MedxaiError) -> None:
        super().__init__(str(err))
        # click declares exit_code on the class; an instance value is what click reads
        self.exit_code = err.exit_code  # type: ignore[misc]

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for command bodies: MedxaiError -> clean message and its exit code."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MedxaiError as err:
            raise MedxaiClickError(err) from err
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            raise SystemExit(130) from None

    return wrapper


def run_guarded(group: click.Group, argv: Sequence[str]) -> int:
    """Run the click group standalone and return its exit code."""
    try:
        group.main(args=list(argv), prog_name="medxai", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def parse_ints(value: str | None, name: str) -> list[int] | None:
    """``"96,96,96"`` or ``"96x96x96"`` -> ``[96, 96, 96]``."""
    if value is None or value == "":
        return None
    try:
        return [int(v) for v in value.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(
            f"expected integers like 96,96,96, got {value!r}", param_hint=name
        ) from None


def parse_floats(value: str | None, name: str) -> list[float] | None:
    if value is None or value == "":
        return None
    try:
        return [float(v) for v in value.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(
            f"expected numbers like 1.5,1.5,2, got {value!r}", param_hint=name
        ) from None


def parse_formats(value: str | None) -> list[str] | None:
    """``"nifti,png"`` -> ``["nifti", "png"]``; None when not given (per-input defaults)."""
    if not value:
        return None
    formats = [f.strip() for f in value.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMAT_CHOICES]
    if bad:
        raise click.BadParameter(
            f"unknown format(s) {bad}; choose from {', '.join(FORMAT_CHOICES)}",
            param_hint="--format",
        )
    return formats


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def stderr_line(msg: str) -> None:
    click.echo(msg, err=True)
    sys.stderr.flush()


# -- checks that run before the heavy imports ----------------------------------------------------


@dataclass(frozen=True)
class InputItem:
    """One input of a command, after :func:`resolve_inputs`: its path and its form (see
    :data:`medxai.io.detect.FORMS`); ``given`` is the argument it came from (a picture folder's
    files all have the folder as ``given``)."""

    path: str
    form: str
    given: str


def resolve_inputs(paths: Sequence[str]) -> tuple[list[InputItem], list[MedxaiError]]:
    """Check every input path by its content and expand picture folders into their files.

    The one rule for folders, in every command: a folder holding a DICOMDIR or any DICOM file is
    one DICOM input (a series, or a study listed series by series); a folder holding no DICOM
    file but pictures or volumes directly in it stands for those files, in name order, each an
    input of its own; a folder holding none of these is an input error.

    Returns the usable inputs and one error per unusable path (missing, unreadable, empty, of no
    form medxai reads), without importing torch, MONAI or numpy.
    """
    items: list[InputItem] = []
    bad: list[MedxaiError] = []
    for given in paths:
        try:
            form = sniff_form(given)
        except MedxaiError as err:
            bad.append(err)
            continue
        if form == "picture-folder":
            items.extend(
                InputItem(str(p), _file_form(p), given) for p in sniff_folder(Path(given)).files
            )
        else:
            items.append(InputItem(given, form, given))
    return items, bad


def _file_form(path: Path) -> str:
    try:
        return sniff_form(path)
    except MedxaiError:  # pragma: no cover - sniffed a moment ago
        return "unknown"


def require_inputs(
    paths: Sequence[str], *, as_json: bool = False
) -> tuple[list[InputItem], list[dict[str, Any]]]:
    """:func:`resolve_inputs`, printing each unusable path as an ``Error:`` line (unless
    ``as_json``); when no input is usable, the command ends here with exit code 2 (the single
    error is raised as is, so its message is the command's answer).

    Returns the usable inputs and the failure entries (:func:`error_entry`) of the others.
    """
    items, bad = resolve_inputs(paths)
    if not items:
        if len(bad) == 1:
            raise bad[0]
        if as_json:
            echo_json({"results": [], "failures": [error_entry(e.path or "", e) for e in bad]})
        else:
            for err in bad:
                click.echo(f"Error: {err}", err=True)
        raise SystemExit(2)
    if not as_json:
        for err in bad:
            click.echo(f"Error: {err}", err=True)
    return items, [error_entry(e.path or "", e) for e in bad]


def error_entry(path: str, err: MedxaiError) -> dict[str, Any]:
    """A failure as ``--json`` lists it: the input, the message and its exit code."""
    return {"input": path, "error": str(err), "exit_code": err.exit_code}


def exit_code_for(failures: Sequence[dict[str, Any]]) -> int:
    """The one exit-code rule for commands over several inputs: the highest of the inputs' own
    codes (0 done, 1 failed while processing, 2 unusable input or input wrong for the model).

    So the code says the worst thing that happened to any input, whatever else was on the
    command line: a missing file gives 2 alone or next to inputs that were done.
    """
    return max((int(f.get("exit_code", 1)) for f in failures), default=0)


def check_output_dir(output: str, *, option: str = "--output") -> None:
    """An output folder must be a folder (or not exist yet) in a place that can be written."""
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise click.BadParameter(f"{output} is a file, not a folder", param_hint=option)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise click.BadParameter(
            f"cannot write into {probe} (permission denied)", param_hint=option
        )


def check_folder_arg(path: str, *, what: str = "folder") -> None:
    """A folder argument (DATA, EXPORT_DIR, ...) must exist, be a folder and be readable."""
    p = Path(path)
    if not p.exists():
        raise InputError("does not exist", path=path, hint="check the path")
    if not p.is_dir():
        raise InputError(f"is a file; a {what} is expected", path=path)
    if not os.access(p, os.R_OK | os.X_OK):
        raise InputError(
            "cannot be read (permission denied)", path=path, hint="check the folder's permissions"
        )


def check_model_arg(model: str | None) -> None:
    """``--model`` that names a path (has a slash, starts with '.' or '~', or exists) must be a
    readable bundle folder; bundled model names are checked by the registry."""
    if not model:
        return
    looks_like_path = (
        os.sep in model or "/" in model or model.startswith((".", "~")) or os.path.exists(model)
    )
    if not looks_like_path:
        return
    p = Path(model).expanduser()
    if not p.exists():
        raise ModelError(
            "no bundle folder here",
            path=model,
            hint="pass a bundle folder, or a bundled model name (`medxai models`)",
        )
    if not p.is_dir():
        raise ModelError(
            "is a file; --model takes a bundle folder (configs/, models/) or a bundled model name",
            path=model,
        )


# pydicom: "Invalid value for VR CS: 'x'. Please see <url> for allowed values for each VR."
_PYDICOM_VR = re.compile(r"Invalid value for VR (\w\w): (.*?)\.? Please see", re.S)


def _dicom_tag_of_warning() -> str | None:
    """The DICOM tag being read when a warning fires, from the calling frames (pydicom's
    messages do not name it)."""
    frame = sys._getframe(2)
    while frame is not None:
        for key in ("elem", "raw", "self", "data_element"):
            obj = frame.f_locals.get(key)
            tag = getattr(obj, "tag", None)
            if tag is not None:
                try:
                    return f"({int(tag) >> 16:04X},{int(tag) & 0xFFFF:04X})"
                except (TypeError, ValueError):
                    pass
        frame = frame.f_back  # type: ignore[assignment]
    return None


@contextlib.contextmanager
def dicom_warnings_as_lines(path: str | None, say: Callable[[str], None] | None) -> Iterator[None]:
    """Turn pydicom's ``UserWarning``s on odd header values (raw, with a URL, repeated) into one
    medxai warning line per file and tag: ``warning: FILE: tag (0008,0060) VR CS: invalid value
    'x' (kept as is)``. Other warnings pass through unchanged. ``say`` None drops the lines."""
    seen: set[str] = set()
    previous = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        text = str(message)
        if "pydicom" not in filename and not _PYDICOM_VR.search(text):
            previous(message, category, filename, lineno, file, line)
            return
        m = _PYDICOM_VR.search(text)
        tag = _dicom_tag_of_warning()
        what = (
            f"VR {m.group(1)}: invalid value {m.group(2).strip()}"
            if m
            else text.split("\n")[0].split(" Please see")[0]
        )
        where = f"{path}: " if path else ""
        line_out = f"warning: {where}{'tag ' + tag + ' ' if tag else ''}{what} (kept as is)"
        if line_out not in seen:
            seen.add(line_out)
            if say is not None:
                say(line_out)

    with warnings.catch_warnings():  # (entering it resets the once-per-place registries)
        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = previous


def uncertainty_options(fn: Any) -> Any:
    """``--uncertainty`` and ``--mc-samples``: the uncertainty map and quality score
    (``segment``, ``batch``)."""
    from medxai.choices import UNCERTAINTY_CHOICES

    fn = click.option(
        "--mc-samples",
        default=8,
        show_default=True,
        type=click.IntRange(2),
        help="MC dropout passes (--uncertainty mc-dropout; seed 0).",
    )(fn)
    return click.option(
        "--uncertainty",
        type=click.Choice(UNCERTAINTY_CHOICES),
        help="Uncertainty map (uncertainty.nii.gz, pm_uncertainty.dcm) and quality score from "
        "the TTA views, from MC dropout passes, or none. [default: tta when the model runs "
        "with TTA, else none]",
    )(fn)


def seg_options(fn: Any) -> Any:
    """``--seg-type`` and ``--split-labels``: how the label map is written (``segment``,
    ``batch``, ``listen``)."""
    from medxai.choices import SEG_TYPES

    fn = click.option(
        "--split-labels",
        is_flag=True,
        help="Also one mask_<label>.nii.gz (0/1) per label, beside labels.nii.gz.",
    )(fn)
    return click.option(
        "--seg-type",
        default="binary",
        show_default=True,
        type=click.Choice(SEG_TYPES),
        help="How the DICOM SEG stores the segments: binary (one bit per pixel and segment; "
        "read by every SEG reader, but OHIF 3.x mis-reads frames whose pixel count is not a "
        "multiple of 8), labelmap (segment numbers, one frame per slice; DICOM 2024c: OHIF, "
        "dcmqi 1.5 and highdicom read it, older validators and PACS may not know it) or "
        "fractional (the model's probabilities, 8 bits). See docs/viewers.md.",
    )(fn)


def explain_options(fn: Any) -> Any:
    """``--layer``, ``--target``, ``--roi-box``, ``--roi-mask``: what the saliency map explains
    (``segment`` and ``explain``)."""
    from medxai.choices import SALIENCY_TARGETS

    for option in reversed(
        [
            click.option(
                "--layer",
                default=None,
                help="CAM layer(s): a role (encoder.2, bottleneck, skip.0, encoder...) or a "
                "module name. [default: the model's, with --explain auto; else the method's]",
            ),
            click.option(
                "--target",
                "target_region",
                default=None,
                type=click.Choice((*SALIENCY_TARGETS, "roi")),
                help="The question the map answers: segment (why here?), border (why is the "
                "edge here?), missed (why not here? what post-processing removed or the "
                "threshold just left out), image, roi (--roi-box/--roi-mask). "
                "[default: the model's, with --explain auto; else segment]",
            ),
            click.option(
                "--roi-box",
                default=None,
                help="A region to explain: x0,y0,x1,y1[,z0,z1] in pixels (voxels) of the "
                "input, x the column, y the row, stops exclusive.",
            ),
            click.option(
                "--roi-mask",
                default=None,
                type=click.Path(exists=True, dir_okay=False),
                help="A region to explain: a mask file on the input's grid (non-zero inside).",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def explain_settings(
    layer: str | None, target: str | None, roi_box: str | None, roi_mask: str | None
) -> dict[str, Any]:
    """The :class:`medxai.pipeline.SegmentOptions` fields of :func:`explain_options`."""
    if roi_box and roi_mask:
        raise click.BadParameter("give --roi-box or --roi-mask, not both", param_hint="--roi-box")
    box = parse_ints(roi_box, "--roi-box")
    if box is not None and len(box) not in (4, 6):
        raise click.BadParameter(
            f"expected x0,y0,x1,y1 or x0,y0,x1,y1,z0,z1, got {roi_box!r}", param_hint="--roi-box"
        )
    return {
        "explain_layer": layer,
        "explain_target": target,
        "explain_roi": box if box is not None else roi_mask,
    }
