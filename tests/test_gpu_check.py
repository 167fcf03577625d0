"""``benchmarks/gpu_check.sh`` runs on the CPU (``--device cpu --quick``): every check passes
and the table docs/benchmarks.md takes is printed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # about a minute on 2 idle cores: the bundled model, a training


def test_gpu_check_runs_on_the_cpu(tmp_path) -> None:
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--quick",
         "--images", "2"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert table[0] == ("| check | status | images/s | model-bound ratio | peak GPU MiB | "
                        "seconds | note |")
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in table[1:]}
    assert set(rows) == {"amp", "model-bound", "segment", "batch", "explain", "train", "zoo"}
    for name, cells in rows.items():
        assert cells[1] in ("ok", "skipped"), (name, cells)
    for name in ("segment", "batch"):
        rate, ratio = float(rows[name][2]), float(rows[name][3])
        assert rate > 0 and ratio > 0
    assert float(rows["model-bound"][2]) > 0
