"""TorchScript bundles and Grad-CAM-family saliency (issue 13 item 5): `segment` with its default
`--explain auto` falls back with one warning line naming the methods that work (recorded in
report.json); `batch` falls back for a named Grad-CAM-family method to `--explain-fallback`
(a hook-free method or none), never failing the series."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import shared_path
from tests.test_monai_bundles import TINY, _parser, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]
WORKING = "methods that work: smoothgrad, occlusion, ig"


@pytest.fixture(scope="module")
def tiny_ts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's small MR bundle as TorchScript only (models/model.ts, no network_def)."""
    root = tmp_path_factory.mktemp("ts")
    pt, ts = root / "pt", root / "ts"
    for d in (pt, ts):
        (d / "configs").mkdir(parents=True)
        (d / "models").mkdir()
        (d / "configs" / "metadata.json").write_text(json.dumps({
            "name": "tiny mr", "version": "0.1",
            "network_data_format": {"inputs": {"image": {"num_channels": 1, "modality": "MR"}},
                                    "outputs": {"pred": {"channel_def": {"0": "background",
                                                                         "1": "region"}}}}}))
    cfg = copy.deepcopy(TINY)
    cfg["postprocessing"]["transforms"] = cfg["postprocessing"]["transforms"][:3]  # no SaveImaged
    (pt / "configs" / "inference.json").write_text(json.dumps(cfg))
    (ts / "configs" / "inference.json").write_text(
        json.dumps({k: v for k, v in cfg.items() if k != "network_def"}))
    torch.manual_seed(3)
    net = _parser(pt).get_parsed_content("network_def").eval()
    torch.jit.script(net).save(str(ts / "models" / "model.ts"))
    return ts


@pytest.fixture(scope="module")
def mr_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PACS export holding one real MR series (a hippocampus crop, 32 DICOM files)."""
    src = shared_path("hippocampus", "dicom_study1", "13_HCropVolume")
    out = tmp_path_factory.mktemp("export")
    shutil.copytree(src, out / "13_HCropVolume")
    return out


def _reports(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("report.json"))]


def test_segment_default_explain_falls_back_with_one_warning(tiny_ts, mr_export, tmp_path):
    series = mr_export / "13_HCropVolume"
    code, out = run_cli("segment", str(series), "--model", str(tiny_ts), "-o", str(tmp_path),
                        "--device", "cpu")
    assert code == 0, out
    warnings = [ln for ln in out.splitlines() if ln.startswith("warning:") and "layer hooks" in ln]
    assert len(warnings) == 1, out
    assert WORKING in warnings[0] and "smoothgrad instead" in warnings[0]
    (report,) = _reports(tmp_path)
    sal = report["saliency"]
    assert sal["method"] == "smoothgrad" and WORKING in sal["fallback"]
    assert "needs layer hooks" in sal["chosen_by"]
    assert list(tmp_path.rglob("saliency_*.nii.gz"))


@pytest.mark.parametrize("fallback,method", [(None, "smoothgrad"), ("occlusion", "occlusion"),
                                             ("none", None)])
def test_batch_named_gradcam_on_torchscript_falls_back(tiny_ts, mr_export, tmp_path, fallback,
                                                       method):
    args = ["batch", str(mr_export), "-o", str(tmp_path / "out"), "--model", str(tiny_ts),
            "--device", "cpu", "--explain", "gradcam", "--json"]
    if fallback:
        args += ["--explain-fallback", fallback]
    code, out = run_cli(*args)
    assert code == 0, out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["series"]["done"] == 1 and summary["series"]["failed"] == 0, summary
    (report,) = _reports(tmp_path / "out")
    sal = report["saliency"]
    assert sal["method"] == method
    # the batch's default outputs hold the saliency as a Parametric Map (no NIfTI copy)
    maps = list((tmp_path / "out").rglob("pm_saliency_*.dcm"))
    if method is None:
        assert not maps
    else:
        assert maps and WORKING in sal["fallback"] and f"{method} instead" in sal["fallback"]


def test_segment_named_gradcam_is_still_refused_and_a_bad_fallback_too(tiny_ts):
    from medxai.errors import ExplainError
    from medxai.models.registry import load_model
    from medxai.pipeline import SegmentOptions, resolve_explain

    bundle = load_model(tiny_ts)
    with pytest.raises(ExplainError, match="occlusion or ig"):
        resolve_explain(bundle, SegmentOptions(explain="gradcam"))
    with pytest.raises(ExplainError, match="not a method that works without layer hooks"):
        resolve_explain(bundle, SegmentOptions(explain="gradcam", explain_fallback="hirescam"))
    settings = resolve_explain(bundle, SegmentOptions(explain="hirescam", explain_fallback="ig",
                                                      explain_layer="encoder.2"))
    assert settings is not None and settings.method == "ig" and settings.layer is None
    assert resolve_explain(bundle, SegmentOptions(explain="gradcam", explain_fallback="none")) is None
