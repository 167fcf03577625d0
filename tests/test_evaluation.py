"""medxai.evaluation: faithfulness runs use the bundle's own label map and leave the caller's
network as it was; the old import paths still work."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch


def _with_threshold(bundle, threshold: float):
    config = {**bundle.config, "inference": {**bundle.inference, "threshold": threshold}}
    return dataclasses.replace(bundle, config=config)


def test_model_grid_mask_uses_the_bundles_threshold(rgb_bundle):
    from medxai.evaluation.saliency import _model_grid_mask

    # foreground probability 0.6 everywhere: the argmax says foreground, a 0.7 threshold not
    logits = torch.zeros(1, 2, 8, 8)
    logits[:, 1] = math.log(0.6 / 0.4)
    assert _model_grid_mask(rgb_bundle, logits, 1).all()
    assert not _model_grid_mask(_with_threshold(rgb_bundle, 0.7), logits, 1).any()
    assert _model_grid_mask(_with_threshold(rgb_bundle, 0.5), logits, 1).all()
    assert _model_grid_mask(rgb_bundle, logits, 1).shape == (1, 1, 8, 8)


def test_evaluate_saliency_leaves_the_network_as_it_was(rgb_bundle, tmp_path):
    from medxai.evaluation import evaluate_saliency, format_table, list_images
    from tests.models import make_picture_dataset

    data = make_picture_dataset(tmp_path / "data", n=2)
    images = list_images(data)
    assert [p.name for p in images] == ["case00.png", "case01.png"]
    net = rgb_bundle.network
    net.train()
    try:
        # threshold 0.999 on an undertrained model: nothing predicted, every image skipped
        result = evaluate_saliency(_with_threshold(rgb_bundle, 0.999), images, ["gradcam"],
                                   steps=3, device="cpu")
        assert net.training, "evaluate_saliency left the caller's network in eval mode"
        assert result["skipped_empty"] == 2 and result["methods"]["gradcam"]["n"] == 0
        result = evaluate_saliency(_with_threshold(rgb_bundle, 0.001), images, ["gradcam"],
                                   steps=3, device="cpu")
        assert net.training
        assert result["skipped_empty"] == 0 and result["methods"]["gradcam"]["n"] == 2
        assert 0.0 <= result["methods"]["gradcam"]["energy_in_mask"] <= 1.0
        assert "gradcam" in format_table(result)
    finally:
        net.eval()


def test_old_import_paths_still_work():
    from medxai.evaluation import metrics, segmentation
    from medxai.training import evaluate as old_evaluate
    from medxai.training import metrics as old_metrics

    assert old_metrics.binary_metrics is metrics.binary_metrics
    assert old_evaluate.evaluate_model is segmentation.evaluate_model


def test_metric_names_module_is_torch_free():
    import subprocess
    import sys

    code = ("import sys, medxai.choices, medxai.evaluation.metrics; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("name", ["binary_metrics", "evaluate_model", "evaluate_saliency"])
def test_evaluation_exports(name):
    import medxai.evaluation

    assert callable(getattr(medxai.evaluation, name))
