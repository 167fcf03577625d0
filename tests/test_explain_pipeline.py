"""The explanation `medxai segment` / `explain` / `batch` / `listen` compute: the model's measured
default (the bundle's ``saliency`` section), ``--layer``/``--target``/``--roi-box``/``--roi-mask``,
the "what was left out" region, and the figures report.json records for the written map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medxai.errors import ExplainError, InputError, ModelError
from medxai.inference import Prediction
from medxai.models.contract import SaliencySpec, saliency_spec_from_config
from medxai.pipeline import (
    SegmentOptions,
    left_out_region,
    region_from_box,
    resolve_explain,
    saliency_maps,
)
from tests.conftest import shared_path
#: a val photo whose largest-component clean-up removes a second blob (2475 pixels, found with
#: the bundled model 1.2.0 without TTA)
REMOVED = "ISIC_0000045.jpg"


@pytest.fixture(scope="module")
def isic():
    from medxai.models.registry import load_model

    return load_model("isic2018-lesion-unet")


def test_bundle_saliency_section_is_parsed_and_checked() -> None:
    assert saliency_spec_from_config(None) == SaliencySpec()
    spec = saliency_spec_from_config({"method": "hirescam", "layer": "encoder.2"})
    assert (spec.method, spec.layer, spec.target) == ("hirescam", "encoder.2", "segment")
    for bad, words in (
        ({"method": "gradcma"}, "saliency.method"),
        ({"target": "edges"}, "saliency.target"),
        ({"colour": 1}, "unknown key"),
        ({"method": "smoothgrad", "layer": "encoder.2"}, "reads no layer"),
    ):
        with pytest.raises(ModelError, match=words):
            saliency_spec_from_config(bad)


def test_bad_saliency_section_names_the_file(tmp_path: Path, isic) -> None:
    import shutil

    from medxai.models.bundle import load_bundle

    copy = tmp_path / "b"
    shutil.copytree(isic.path, copy)
    cfg = copy / "configs" / "inference.json"
    data = json.loads(cfg.read_text())
    data["saliency"] = {"method": "gradcam", "target": "everything"}
    cfg.write_text(json.dumps(data))
    with pytest.raises(ModelError) as err:
        load_bundle(copy)
    assert "inference.json" in str(err.value) and "everything" in str(err.value)


def test_the_lesion_model_explains_with_its_measured_default(isic) -> None:
    # chosen on 16 ISIC val images (docs/explainability.md, benchmarks/saliency_choice.py)
    auto = resolve_explain(isic, SegmentOptions())
    assert (auto.method, auto.layer, auto.target) == ("hirescam", "encoder.2", "segment")
    assert auto.chosen_by == "model default"
    named = resolve_explain(isic, SegmentOptions(explain="gradcam"))
    assert (named.method, named.layer, named.target, named.chosen_by) == (
        "gradcam", None, "segment", "given")
    both = resolve_explain(isic, SegmentOptions(explain_layer="bottleneck", explain_target="border"))
    assert (both.method, both.layer, both.target) == ("hirescam", "bottleneck", "border")
    assert resolve_explain(isic, SegmentOptions(explain="none")) is None
    roi = resolve_explain(isic, SegmentOptions(explain_roi=(1, 2, 30, 40)))
    assert roi.target == "roi"


@pytest.mark.parametrize("opts,words", [
    (SegmentOptions(explain="smoothgrad", explain_layer="encoder.2"), "reads no layer"),
    (SegmentOptions(explain_target="border", explain_roi=(0, 0, 4, 4)), "both given"),
    (SegmentOptions(explain_target="roi"), "needs a region"),
])
def test_settings_that_do_not_fit_are_refused(isic, opts: SegmentOptions, words: str) -> None:
    with pytest.raises(ExplainError, match=words):
        resolve_explain(isic, opts)


def test_box_axes_are_column_row_slice() -> None:
    # medxai reads a W x H picture as (C, W, H): x (column) is the first array axis
    r = region_from_box((20, 10), (2, 3, 5, 9))
    assert r.shape == (1, 20, 10) and int(r.sum()) == 3 * 6
    assert r[0, 2, 3] and r[0, 4, 8] and not r[0, 5, 3] and not r[0, 2, 9]
    v = region_from_box((8, 8, 6), (0, 0, 2, 2, 4, 6))
    assert int(v.sum()) == 2 * 2 * 2 and v[0, 1, 1, 5] and not v[0, 1, 1, 3]
    assert int(region_from_box((8, 8, 1), (0, 0, 2, 2)).sum()) == 4  # one-slice volume
    with pytest.raises(ExplainError, match="needs 6 values"):
        region_from_box((8, 8, 6), (0, 0, 2, 2))
    with pytest.raises(ExplainError, match="empty"):
        region_from_box((8, 8), (5, 5, 5, 9))


def _prediction(prob_fg: np.ndarray, labels: np.ndarray) -> Prediction:
    fg = torch.from_numpy(prob_fg.astype(np.float32))
    return Prediction(
        probabilities=torch.stack([1 - fg, fg]),
        labels=torch.from_numpy(labels.astype(np.uint8))[None],
        affine=torch.eye(4),
        seconds=0.0,
    )


def test_left_out_region_counts_removed_components_and_near_misses(isic) -> None:
    prob = np.zeros((32, 32))
    prob[2:12, 2:12] = 0.9  # the kept lesion
    prob[20:24, 20:24] = 0.8  # a component post-processing removed
    prob[2:12, 12:14] = 0.3  # just below the bundle's 0.45 cut
    labels = np.zeros((32, 32))
    labels[2:12, 2:12] = 1
    region, counts = left_out_region(isic, _prediction(prob, labels), 1)
    assert counts == {"removed_by_postprocessing": 16, "below_threshold": 20}
    assert region.shape == (1, 32, 32) and int(region.sum()) == 36
    assert region[0, 21, 21] and region[0, 5, 12] and not region[0, 5, 5]


def test_nothing_left_out_is_refused_with_a_reason(isic) -> None:
    from medxai.io.types import LoadedImage

    prob = np.zeros((32, 32))
    prob[4:20, 4:20] = 1.0
    pred = _prediction(prob, (prob > 0.5).astype(np.uint8))
    from monai.data import MetaTensor

    image = MetaTensor(torch.rand(3, 32, 32) * 255)
    loaded = LoadedImage(path=Path("synthetic.png"), image=image, dicom=None)
    with pytest.raises(ExplainError, match="nothing was left out of lesion"):
        saliency_maps(isic, loaded, SegmentOptions(explain_target="missed"), torch.device("cpu"),
                      pred)


@pytest.mark.shared_data
def test_segment_explains_what_post_processing_removed(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from medxai.cli.main import cli

    photo = shared_path("isic2018", "val", "images", REMOVED)
    res = CliRunner().invoke(cli, ["segment", str(photo), "-o", str(tmp_path), "--tta", "none",
                                   "--format", "nifti,json", "--target", "missed"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / photo.stem / "report.json").read_text())
    sal = report["saliency"]
    assert (sal["method"], sal["layer"], sal["target"]) == ("hirescam", "encoder.2", "missed")
    lab = sal["labels"]["1"]
    assert lab["left_out_pixels"]["removed_by_postprocessing"] > 1000
    # the map is about what was left out: far more of its mass there than a uniform map puts
    assert lab["energy_in_region"] / lab["region_share"] > 1.5, lab
    for key in ("corr_mask", "corr_probability", "context_share", "sparseness"):
        assert lab[key] is not None and -1 <= lab[key] <= 1


@pytest.mark.shared_data
def test_explain_writes_the_map_of_a_user_box_with_its_figures(tmp_path: Path) -> None:
    import nibabel as nib
    from click.testing import CliRunner

    from medxai.cli.main import cli

    photo = shared_path("isic2018", "val", "images", REMOVED)
    runner = CliRunner()
    res = runner.invoke(cli, ["explain", str(photo), "-o", str(tmp_path / "box"), "--method",
                              "gradcam", "--layer", "bottleneck", "--roi-box", "0,0,200,200"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "box" / photo.stem / "report.json").read_text())
    sal = report["saliency"]
    assert (sal["method"], sal["layer"], sal["target"]) == ("gradcam", "bottleneck", "roi")
    assert sal["region"] == {"box": [0, 0, 200, 200]} and sal["chosen_by"] == "given"
    assert 0 <= sal["labels"]["1"]["context_share"] <= 1
    saliency = nib.load(tmp_path / "box" / photo.stem / "saliency_lesion.nii.gz").get_fdata()
    assert saliency.max() == pytest.approx(1.0, abs=1e-3)
    bad = runner.invoke(cli, ["explain", str(photo), "-o", str(tmp_path / "bad"),
                              "--roi-box", "0,0,200"])
    assert bad.exit_code == 2 and "x0,y0,x1,y1" in bad.output


def test_mask_file_must_be_on_the_input_grid(tmp_path: Path) -> None:
    from PIL import Image

    from medxai.pipeline import region_from_mask_file

    m = np.zeros((10, 20), dtype=np.uint8)  # 20 wide, 10 high
    m[2:4, 5:9] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    r = region_from_mask_file(tmp_path / "m.png", (20, 10))
    assert r.shape == (1, 20, 10) and int(r.sum()) == 8 and r[0, 5, 2]
    with pytest.raises(InputError, match="grid"):
        region_from_mask_file(tmp_path / "m.png", (10, 20))


@pytest.mark.parametrize("name,method,layer", [
    ("isic2018-lesion-unet", "hirescam", "encoder.2"),
    ("cxr-lungs-unet", "hirescam", "bottleneck"),
    ("hippocampus-unet", "gradcam", "bottleneck"),
])
def test_every_bundled_model_names_a_default_its_network_has(name: str, method: str,
                                                             layer: str) -> None:
    # the values measured in docs/explainability.md; the layer must exist in the network
    from medxai.explain import resolve_layer
    from medxai.models.registry import load_model

    bundle = load_model(name)
    spec = bundle.contract.saliency
    assert (spec.method, spec.layer, spec.target) == (method, layer, "segment")
    assert spec.measured.startswith("benchmarks/saliency_choice.py")
    resolved, _ = resolve_layer(bundle.network, spec.layer)
    assert resolved.startswith("model.")


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_sliding_window_saliency_blends_as_the_inference_does(blend: str, monkeypatch) -> None:
    """The hippocampus model predicts by sliding windows: its saliency goes through MONAI's
    sliding_window_inference with the bundle's own blend mode (not always Gaussian)."""
    import medxai.explain as explain_pkg
    from medxai.io.readers import load_image
    from medxai.models.registry import BUNDLED_MODELS, load_model
    from medxai.pipeline import compute_saliency

    if not BUNDLED_MODELS["hippocampus-unet"].available:
        pytest.skip("bundled model hippocampus-unet is not installed in this checkout")
    root = shared_path("hippocampus")
    case = json.loads((root / "dataset.json").read_text())["validation"][0]
    bundle = load_model("hippocampus-unet")
    monkeypatch.setitem(bundle.config["inference"], "blend_mode", blend)  # medxai-form: editable
    assert bundle.contract.inference.blend_mode == blend
    seen: list[str] = []
    real = explain_pkg.sliding_window_saliency

    def spy(*args, **kwargs):
        seen.append(kwargs["mode"])
        return real(*args, **kwargs)

    monkeypatch.setattr(explain_pkg, "sliding_window_saliency", spy)
    sal = compute_saliency(bundle, load_image(root / case["image"]), "gradcam", 1,
                           torch.device("cpu"))
    assert seen == [blend]
    assert torch.isfinite(sal).all() and float(sal.max()) == pytest.approx(1.0, abs=1e-6)
