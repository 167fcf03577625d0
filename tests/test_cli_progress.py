"""Progress bars and closing summaries (medxai.cli.progress): a bar with rate and ETA only on a
terminal, nothing in logs, pipes or --json; the done/skipped/failed table at the end."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

from click.testing import CliRunner

from medxai.cli.progress import Progress, format_eta, summary_table

from tests.conftest import ROOT

SAMPLES = ROOT / "sample_data"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_terminal_no_output() -> None:
    for stream in (io.StringIO(), _Terminal()):
        bar = Progress(3, enabled=stream.isatty(), stream=stream)
        for _ in range(3):
            bar.update()
        bar.close()
    silent = io.StringIO()
    bar = Progress(3, stream=silent, min_interval_s=0)
    for _ in range(3):
        bar.update()
    bar.message("a line")
    bar.close()
    assert silent.getvalue() == "a line\n"  # messages pass, no bar
    quiet_tty = _Terminal()
    bar = Progress(3, stream=quiet_tty, enabled=False)
    bar.update()
    bar.close()
    assert quiet_tty.getvalue() == ""  # --json / -q on a terminal


def test_terminal_bar_has_count_rate_and_eta() -> None:
    tty = _Terminal()
    bar = Progress(4, unit="series", stream=tty, min_interval_s=0)
    bar.start -= 10.0  # 10 s ago: 2 done -> 0.2 series/s, 2 left -> ETA 10s
    bar.update(2, counts={"done": 1, "failed": 1})
    text = tty.getvalue()
    assert text.startswith("\r[") and "2/4 series" in text
    assert "0.20 series/s" in text and "ETA 10s" in text and "(done 1, failed 1)" in text
    bar.message("between")  # the bar line is cleared before a message
    assert tty.getvalue().endswith("\r" + " " * 100 + "\rbetween\n")
    bar.update(4)
    assert tty.getvalue().endswith("\n") and "4/4 series" in tty.getvalue().splitlines()[-1]
    assert "ETA" not in tty.getvalue().splitlines()[-1]


def test_rate_leaves_out_what_was_done_before() -> None:
    bar = Progress(10, done=4, stream=io.StringIO())
    bar.start -= 2.0
    bar.update(6)
    assert abs(bar.rate - 1.0) < 0.05  # (6 - 4) / 2 s


def test_summary_table_and_eta_format() -> None:
    table = summary_table({"done": 38, "skipped": 1, "failed": 1}, unit="inputs", seconds=25.0)
    lines = table.splitlines()
    assert lines[0].split() == ["inputs", "n"]
    assert [ln.split()[:2] for ln in lines[1:4]] == [["done", "38"], ["skipped", "1"],
                                                   ["failed", "1"]]
    assert lines[4].split()[:2] == ["total", "40"] and "1.52 inputs/s" in lines[4]
    assert summary_table({}).splitlines()[-1].split() == ["total", "0"]
    assert [format_eta(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_batch_bar_is_silent_off_a_terminal(monkeypatch) -> None:
    from medxai.batch.job import BatchProgress
    from medxai.cli.commands.batch import _BatchBar

    for stream, expect in ((io.StringIO(), False), (_Terminal(), True)):
        monkeypatch.setattr(sys, "stderr", stream)
        bar = _BatchBar(enabled=True)
        bar(BatchProgress("scan", 10, 10, {}, 1.0))
        bar(BatchProgress("process", 1, 2, {"done": 1}, 1.0))
        bar(BatchProgress("process", 2, 2, {"done": 1, "skipped": 1}, 2.0))
        bar.close()
        text = stream.getvalue()
        assert bool(text) is expect
        if expect:
            assert "scanning" in text and "10/10 files" in text and "2/2 series" in text


def test_train_log_off_a_terminal_is_plain_lines(monkeypatch) -> None:
    from medxai.cli.commands import train as train_cmd

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert train_cmd._epoch_log(5, enabled=True) is train_cmd.stderr_line
    tty = _Terminal()
    monkeypatch.setattr(sys, "stderr", tty)
    log = train_cmd._epoch_log(5, enabled=True)
    log("epoch 3/5 loss 0.5000 val Dice 0.5000 1s")  # resumed after epoch 2
    log("epoch 4/5 loss 0.4000 val Dice 0.6000 1s")
    text = tty.getvalue()
    assert "epoch 3/5 loss" in text and "training [" in text and "4/5 epochs" in text


def test_segment_many_inputs_summary_and_quiet_json(rgb_bundle, tmp_path: Path) -> None:
    """Off a terminal: no bar (no carriage return, no ETA), the closing table on stderr;
    with --json: neither, the JSON on stdout alone."""
    photos = []
    for i in range(2):
        dest = tmp_path / f"photo{i}.jpg"
        shutil.copy(SAMPLES / "dermoscopy.jpg", dest)
        photos.append(str(dest))
    missing = str(tmp_path / "missing.jpg")
    from medxai.cli.main import cli

    args = ["segment", *photos, missing, "-m", str(rgb_bundle.path), "--device", "cpu",
            "--explain", "none", "--format", "nifti"]
    res = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "a")])
    assert res.exit_code == 2, res.output  # the missing input
    assert "\r" not in res.stderr and "ETA" not in res.stderr
    rows = {ln.split()[0]: ln.split()[1] for ln in res.stderr.splitlines()
            if ln.split() and ln.split()[0] in ("done", "skipped", "failed", "total")}
    assert rows == {"done": "2", "skipped": "1", "failed": "0", "total": "3"}
    res = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "b"), "--json"])
    assert res.exit_code == 2
    data = json.loads(res.stdout)
    assert len(data["results"]) == 2 and len(data["failures"]) == 1
    assert "total" not in res.stderr and "\r" not in res.stderr
