"""Shared fixtures: where the real data lives, and skips when it is absent."""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDXAI_SHARED_DATA", ROOT.parent / "shared" / "data"))

warnings.filterwarnings("ignore", message=".*nvImageCodec.*")


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data; the calling test is skipped when it does not exist."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real test data not available: {p} (../shared/data is absent)")
    return p


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"real test data not available: {SHARED} is absent")
    return SHARED


def find_tool(name: str) -> str | None:
    """An executable on PATH or next to the running Python (the virtualenv's bin, where pip puts
    dcmqi's tools: found even when pytest was started without the venv's bin on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() and os.access(candidate, os.X_OK) else None


def require_tool(name: str) -> str:
    """Path of an external program (see :func:`find_tool`); the test is skipped (with the
    install hint) without it."""
    exe = find_tool(name)
    if exe is None:
        pytest.skip(f"{name} is not installed (apt-get install dicom3tools dcm2niix / pip install dcmqi)")
    return exe


@pytest.fixture(scope="session")
def rgb_bundle(tmp_path_factory: pytest.TempPathFactory):
    """A tiny 2D RGB model trained by medxai train (loaded ModelBundle)."""
    from medxai.models.bundle import load_bundle
    from tests.models import train_picture_model

    return load_bundle(train_picture_model(tmp_path_factory.mktemp("rgb_model")))


@pytest.fixture(scope="session")
def grey_bundle(tmp_path_factory: pytest.TempPathFactory):
    from medxai.models.bundle import load_bundle
    from tests.models import train_picture_model

    return load_bundle(train_picture_model(tmp_path_factory.mktemp("grey_model"), grey=True))


@pytest.fixture(scope="session")
def ct_bundle(tmp_path_factory: pytest.TempPathFactory):
    """A tiny 3D CT model (1 channel, 4 mm grid) trained by medxai train."""
    from medxai.models.bundle import load_bundle
    from tests.models import train_volume_model

    return load_bundle(train_volume_model(tmp_path_factory.mktemp("ct_model"), spacing=[4.0, 4.0, 4.0]))
