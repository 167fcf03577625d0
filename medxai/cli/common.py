"""Shared CLI helpers: error mapping, option parsing, output of JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from medxai.errors import MedxaiError
from medxai.pipeline_formats import EXPLAIN_CHOICES, FORMAT_CHOICES

__all__ = ["EXPLAIN_CHOICES", "FORMAT_CHOICES", "guard", "run_guarded", "parse_ints",
           "parse_floats", "parse_formats", "echo_json", "stderr_line"]


class MedxaiClickError(click.ClickException):
    """A :class:`MedxaiError` shown by click: message only, the error's exit code."""

    def __init__(self, err: MedxaiError) -> None:
        super().__init__(str(err))
        self.exit_code = err.exit_code

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
        raise click.BadParameter(f"expected integers like 96,96,96, got {value!r}",
                                 param_hint=name) from None


def parse_floats(value: str | None, name: str) -> list[float] | None:
    if value is None or value == "":
        return None
    try:
        return [float(v) for v in value.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected numbers like 1.5,1.5,2, got {value!r}",
                                 param_hint=name) from None


def parse_formats(value: str | None) -> list[str] | None:
    """``"nifti,png"`` -> ``["nifti", "png"]``; None when not given (per-input defaults)."""
    if not value:
        return None
    formats = [f.strip() for f in value.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMAT_CHOICES]
    if bad:
        raise click.BadParameter(f"unknown format(s) {bad}; choose from {', '.join(FORMAT_CHOICES)}",
                                 param_hint="--format")
    return formats


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def stderr_line(msg: str) -> None:
    click.echo(msg, err=True)
    sys.stderr.flush()
