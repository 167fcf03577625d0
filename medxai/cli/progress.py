"""Progress bars and closing summaries of the long commands (``segment`` over many inputs,
``batch``, ``train``, ``evaluate``), one rule for all:

- a bar with the count, the rate and the ETA is redrawn in place on stderr **only when stderr is
  a terminal** and the command is neither ``--json`` nor ``-q``; logs, pipes and ``--json`` get
  no progress at all;
- the closing :func:`summary_table` (done / skipped / failed) goes to stderr whenever the bar
  was allowed (terminal or not: a log should say what happened), never with ``--json`` (the JSON
  carries the same counts) or ``-q``.

Torch-free: the CLI imports it before any check.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import IO

import click

__all__ = ["Progress", "format_eta", "summary_table"]


def format_eta(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
    """A progress bar over ``total`` items of ``unit`` on a terminal.

    Args:
        total: items expected (may be changed later with :meth:`update`).
        unit: what is counted (``inputs``, ``series``, ``epochs``, ``images``).
        label: a word before the bar (``scanning``).
        done: items done already (answered before the work began, or resumed): counted, but
            not in the rate.
        enabled: False with ``--json`` or ``-q``.
        stream: where to draw (stderr); the bar is drawn only if it is a terminal.
        min_interval_s: redraws at most this often (the last one always).
    """

    width = 24

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
        self.total = total
        self.unit = unit
        self.label = label
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(enabled and _isatty(self.stream))
        self.done = self.base = done
        self.counts: dict[str, int] = {}
        self.start = time.monotonic()
        self.min_interval_s = min_interval_s
        self._last = 0.0
        self._drawn = False

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.start

    @property
    def rate(self) -> float:
        """Items per second so far (of those done since the bar began)."""
        e = self.elapsed_s
        return (self.done - self.base) / e if e > 0 else 0.0

    def line(self) -> str:
        """The bar as text: ``[#####...] 3/40 inputs  1.52 inputs/s  ETA 24s  (done 3)``."""
        total = max(self.total, self.done)
        filled = int(self.width * self.done / total) if total else self.width
        text = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{total} {self.unit}"
        if self.label:
            text = f"{self.label} {text}"
        rate = self.rate
        if rate > 0:
            text += f"  {_rate_text(rate, self.unit)}"
            if self.done < total:
                text += f"  ETA {format_eta((total - self.done) / rate)}"
        if self.counts:
            text += "  (" + ", ".join(f"{k} {v}" for k, v in self.counts.items()) + ")"
        return text

    def update(
        self,
        done: int | None = None,
        *,
        total: int | None = None,
        counts: Mapping[str, int] | None = None,
    ) -> None:
        """Set the count (default: one more), the total or the outcome counts, and redraw."""
        self.done = self.done + 1 if done is None else done
        if total is not None:
            self.total = total
        if counts is not None:
            self.counts = dict(counts)
        if not self.tty:
            return
        now = time.monotonic()
        final = self.done >= self.total
        if not final and now - self._last < self.min_interval_s:
            return
        self._last = now
        self.stream.write("\r" + self.line().ljust(100))
        self._drawn = True
        if final:
            self.close()
        else:
            self.stream.flush()

    def message(self, text: str, *, err: bool = True) -> None:
        """A line of text above the bar, on stderr (or stdout with ``err=False``); the bar is
        redrawn on the next update."""
        if self._drawn:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()
            self._drawn = False
        if err:
            click.echo(text, file=self.stream)
        else:
            click.echo(text)

    def close(self) -> None:
        """End the bar's line (once)."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def _rate_text(rate: float, unit: str) -> str:
    if rate >= 0.1:
        return f"{rate:.2f} {unit}/s"
    return f"{1 / rate:.1f} s per {unit.rstrip('s')}"


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


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
