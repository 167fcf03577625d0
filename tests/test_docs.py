"""docs/ stays true: the CLI reference is current, and the API examples run."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_cli", ROOT / "docs" / "gen_cli.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (ROOT / "docs" / "cli.md").read_text() == mod.render(), (
        "docs/cli.md is stale: run `python docs/gen_cli.py > docs/cli.md`")


def test_api_examples_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from medxai.models.registry import BUNDLED_MODELS, DEFAULT_MODEL

    if not BUNDLED_MODELS[DEFAULT_MODEL].available:
        pytest.fail("the bundled model's weights are missing from the package")
    text = (ROOT / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"docs/api.md[block {i}]", "exec"), namespace)
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"docs/api.md block {i} failed: {type(exc).__name__}: {exc}\n{block}")
    assert os.path.isdir(namespace["results"][0].output_dir)
