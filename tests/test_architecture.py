"""One home per concern: the atomic-write helper, the CLI choices and the command list."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_durable_atomic_write_fsyncs_the_file_and_its_folder(tmp_path, monkeypatch):
    from medxai.io import atomic

    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if Path("/proc/self/fd").is_dir() else "?")
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", spy)
    target = tmp_path / "sub" / "weights.pt"
    with atomic.atomic_path(target, durable=True) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p for p in tmp_path.rglob("*") if p.name.startswith(".")] == []
    if synced[0] != "?":
        assert Path(synced[0]).name.startswith(".weights.pt.")  # the data, before the rename
        assert Path(synced[-1]) == target.parent  # then the folder holding the new entry
    synced.clear()
    with atomic.atomic_path(target) as tmp:  # not durable: no fsync
        tmp.write_bytes(b"newer")
    assert synced == [] and target.read_bytes() == b"newer"


def test_failed_durable_write_keeps_the_old_file(tmp_path):
    from medxai.io.atomic import atomic_path, write_bytes_atomic

    target = write_bytes_atomic(tmp_path / "m.json", b"old", durable=True)
    with pytest.raises(RuntimeError):
        with atomic_path(target, durable=True) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_writers_and_io_share_one_atomic_helper():
    from medxai.io import atomic
    from medxai.io.writers import _atomic

    assert _atomic.atomic_path is atomic.atomic_path
    assert _atomic.write_bytes_atomic is atomic.write_bytes_atomic


def test_choices_module_is_torch_free():
    code = "import sys, medxai.choices; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_cli_registers_exactly_the_command_list():
    from medxai.cli.commands import COMMANDS
    from medxai.cli.main import cli

    assert sorted(cli.commands) == sorted(c.name for c in COMMANDS)
    assert len({c.name for c in COMMANDS}) == len(COMMANDS)


def test_saliency_choices_match_the_explain_registry():
    import click

    from medxai.choices import EVALUATION_METHODS, EXPLAIN_CHOICES, SALIENCY_METHODS
    from medxai.cli.commands import COMMANDS
    from medxai.explain.methods import METHODS

    assert SALIENCY_METHODS == tuple(METHODS), "update medxai/choices.py with the registry"
    assert set(EVALUATION_METHODS) <= set(METHODS)
    assert EXPLAIN_CHOICES == (*SALIENCY_METHODS, "none")
    by_name = {c.name: c for c in COMMANDS}
    for command, option, want in (("segment", "explain", EXPLAIN_CHOICES),
                                  ("batch", "explain", EXPLAIN_CHOICES),
                                  ("explain", "method", SALIENCY_METHODS)):
        param = next(p for p in by_name[command].params if p.name == option)
        assert isinstance(param.type, click.Choice)
        assert tuple(param.type.choices) == want, (command, option)
