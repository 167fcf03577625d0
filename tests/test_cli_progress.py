"""Progress bars and closing summaries (medxai.cli.progress): a tqdm bar with rate and ETA only on a
terminal, nothing in logs, pipes or --json; the done/skipped/failed table at the end."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

from click.testing import CliRunner

from medxai.cli.progress import Progress, summary_table

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
    assert bar.bar is None  # tqdm is not even made
    for _ in range(3):
        bar.update()
    bar.message("a line")
    bar.close()
    assert silent.getvalue() == "a line\n"  # messages pass, no bar
    quiet_tty = _Terminal()
    bar = Progress(3, stream=quiet_tty, enabled=False)
    bar.update()
    bar.message("a line")
    bar.close()
    assert quiet_tty.getvalue() == "a line\n"  # --json / -q on a terminal: no bar


def _ten_seconds_ago(bar: Progress) -> None:
    bar.bar.start_t -= 10.0
    bar.bar.last_print_t -= 10.0


def test_terminal_bar_has_count_rate_eta_and_outcomes() -> None:
    tty = _Terminal()
    bar = Progress(8, unit="series", stream=tty, min_interval_s=0)
    _ten_seconds_ago(bar)  # 4 done in 10 s -> 2.5 s a series, 4 left -> ETA 10 s
    bar.update(4, counts={"done": 3, "failed": 1})
    last = tty.getvalue().split("\r")[-1]
    assert " 50%|" in last and "4/8 series" in last and "[00:10<00:10," in last
    assert "2.50s/series" in last and last.endswith(", done 3, failed 1]")
    bar.message("between")  # the bar line is cleared, the message written, the bar redrawn
    assert "\rbetween\n\r" in tty.getvalue()
    assert tty.getvalue().split("\r")[-1] == last
    bar.update(8)  # the last item closes the bar: its final state on its own line
    last = tty.getvalue().rstrip("\n").split("\r")[-1]
    assert tty.getvalue().endswith("\n") and "100%|" in last and "8/8 series" in last
    assert "00:00," in last  # no time left


def test_rate_leaves_out_what_was_done_before() -> None:
    tty = _Terminal()
    bar = Progress(10, done=4, stream=tty, min_interval_s=0)
    _ten_seconds_ago(bar)
    bar.update(6)  # (6 - 4) / 10 s, shown as seconds per input below 1 a second
    assert "6/10 inputs" in tty.getvalue() and "5.00s/inputs" in tty.getvalue()


def test_total_known_later_and_outcome_counts_table() -> None:
    tty = _Terminal()
    bar = Progress(0, unit="images", label="evaluating", stream=tty, min_interval_s=0)
    bar.update(2, total=5)
    assert "evaluating:  40%|" in tty.getvalue() and "2/5 images" in tty.getvalue()
    bar.close()


def test_summary_table() -> None:
    table = summary_table({"done": 38, "skipped": 1, "failed": 1}, unit="inputs", seconds=25.0)
    lines = table.splitlines()
    assert lines[0].split() == ["inputs", "n"]
    assert [ln.split()[:2] for ln in lines[1:4]] == [["done", "38"], ["skipped", "1"],
                                                   ["failed", "1"]]
    assert lines[4].split()[:2] == ["total", "40"] and "1.52 inputs/s" in lines[4]
    assert summary_table({}).splitlines()[-1].split() == ["total", "0"]


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
    assert "epoch 3/5 loss" in text and "epoch 4/5 loss" in text
    assert "training:  80%|" in text and "4/5 epochs" in text  # epochs 1-2 count, not in the rate


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
