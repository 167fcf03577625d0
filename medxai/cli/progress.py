"""Progress bars and closing summaries of the long commands (``segment`` over many inputs,
``batch``, ``train``, ``evaluate``), one rule for all:

- a tqdm bar with the count, the rate and the ETA is redrawn in place on stderr **only when
  stderr is a terminal** and the command is neither ``--json`` nor ``-q``; logs, pipes and
  ``--json`` get no progress at all;
- the closing :func:`summary_table` (done / skipped / failed) goes to stderr whenever the bar
  was allowed (terminal or not: a log should say what happened), never with ``--json`` (the JSON
  carries the same counts) or ``-q``.

Torch-free, and tqdm is imported only when a bar is drawn: the CLI imports this before any check.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import IO, Any

import click

__all__ = ["Progress", "is_terminal", "summary_table"]


#: tqdm's default bar with the unit after the count: ``scanning  40%|####      | 4/10 files
#: [00:02<00:03, 1.95files/s]``; the outcome counts follow the rate (``, done 3, failed 1``)
_BAR_FORMAT = (
    "{l_bar}{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
)


class Progress:
    """A tqdm progress bar over ``total`` items of ``unit``, drawn only on a terminal.

    Args:
        total: items expected (may be changed later with :meth:`update`; 0: not known yet).
        unit: what is counted (``inputs``, ``series``, ``epochs``, ``images``).
        label: a word before the bar (``scanning``).
        done: items done already (answered before the work began, or resumed): counted, but
            not in the rate (tqdm's ``initial``).
        enabled: False with ``--json`` or ``-q``.
        stream: where to draw (stderr); the bar is drawn only if it is a terminal.
        min_interval_s: redraws at most this often (the last one always).
    """

    def __init__(
        self,
        total: int,
        *,
        unit: str = "inputs",
        label: str = "",
        done: int = 0,
        enabled: bool = True,
        stream: IO[str] | None = None,
        min_interval_s: float = 0.2,
    ) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(enabled and is_terminal(self.stream))
        self.start = time.monotonic()
        self.bar: Any = None  # the tqdm bar, on a terminal
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=done,
                unit=unit,
                bar_format=_BAR_FORMAT,
                desc=label or None,
                file=self.stream,
                mininterval=min_interval_s,
                smoothing=0,  # the rate since the bar began, not a moving average
                dynamic_ncols=True,
            )

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.start

    def update(
        self,
        done: int | None = None,
        *,
        total: int | None = None,
        counts: Mapping[str, int] | None = None,
    ) -> None:
        """Set the count (default: one more), the total or the outcome counts, and redraw."""
        bar = self.bar
        if bar is None or bar.disable:
            return
        if total is not None and total != bar.total:
            bar.total = total
        if counts is not None:
            bar.set_postfix_str(", ".join(f"{k} {v}" for k, v in counts.items()), refresh=False)
        bar.update(1 if done is None else done - bar.n)
        if bar.total and bar.n >= bar.total:
            self.close()

    def message(self, text: str, *, err: bool = True) -> None:
        """A line of text above the bar, on stderr (or stdout with ``err=False``)."""
        if self.bar is None or self.bar.disable:
            click.echo(text, err=err, file=self.stream if err else None)
            return
        with self.bar.external_write_mode(file=self.stream):
            click.echo(text, err=err, file=self.stream if err else None)

    def close(self) -> None:
        """Draw the bar's last state and end its line (once)."""
        if self.bar is not None:
            self.bar.close()


def is_terminal(stream: IO[str]) -> bool:
    """Whether ``stream`` is a terminal (where a bar may be drawn)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _rate_text(rate: float, unit: str) -> str:
    if rate >= 0.1:
        return f"{rate:.2f} {unit}/s"
    return f"{1 / rate:.1f} s per {unit.rstrip('s')}"


def summary_table(
    counts: Mapping[str, int],
    *,
    unit: str = "inputs",
    seconds: float | None = None,
    states: tuple[str, ...] = ("done", "skipped", "failed"),
) -> str:
    """The closing table of a long command::

        inputs     n
        done      38
        skipped    1
        failed     1
        total     40   in 26.3 s, 1.52 inputs/s

    ``counts`` maps states to numbers (missing states count 0; other keys are listed after).
    """
    rows = [(s, int(counts.get(s, 0))) for s in states]
    rows += [(k, int(v)) for k, v in counts.items() if k not in states and k != "total"]
    total = int(counts.get("total", sum(n for _s, n in rows)))
    width = max(len(unit), *(len(s) for s, _n in rows), len("total"))
    digits = max(len(str(total)), 3)
    lines = [f"{unit:<{width}}  {'n':>{digits}}"]
    lines += [f"{s:<{width}}  {n:>{digits}}" for s, n in rows]
    last = f"{'total':<{width}}  {total:>{digits}}"
    if seconds is not None and seconds > 0:
        done = int(counts.get("done", 0))
        last += f"   in {seconds:.1f} s, {_rate_text(done / seconds, unit) if done else '-'}"
    lines.append(last)
    return "\n".join(lines)
