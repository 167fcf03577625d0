"""The bundled ISIC 2018 lesion model: present in the package, intact, and good on real data."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from medxai.cli.main import cli
from medxai.models.registry import BUNDLED_MODELS, DEFAULT_MODEL, load_model
from tests.conftest import shared_path


def test_bundled_model_is_packaged_and_intact() -> None:
    model = BUNDLED_MODELS[DEFAULT_MODEL]
    assert model.available, f"weights missing: {model.path}"
    assert (model.path / "models" / "model.pt").stat().st_size < 30 * 2**20
    bundle = load_model()  # verifies the SHA-256
    assert bundle.spatial_dims == 2 and bundle.in_channels == 3
    assert [lab["name"] for lab in bundle.foreground_labels] == ["lesion"]
    card = model.card()  # the card describes these weights (its Dice is checked below)
    assert card["weights_sha256"] == bundle.weights_sha256
    res = CliRunner().invoke(cli, ["models", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)[0]["card"]["name"] == "isic2018-lesion-unet"


def test_bundled_model_segments_real_val_images(tmp_path: Path) -> None:
    """Measured here on 12 of the 400 ISIC 2018 validation images (every 33rd): a mean Dice
    above 0.8, and within 0.1 of the mean the model card reports for all 400 (so the card's
    figure is held by a measurement, not only read back)."""
    from medxai.training.evaluate import evaluate_model

    val = shared_path("isic2018", "val")
    sub = tmp_path / "val"
    (sub / "images").mkdir(parents=True)
    (sub / "masks").mkdir()
    images = sorted((val / "images").glob("*.jpg"))
    for img in images[::33][:12]:
        (sub / "images" / img.name).symlink_to(img)
        m = val / "masks" / f"{img.stem}_segmentation.png"
        (sub / "masks" / m.name).symlink_to(m)
    result = evaluate_model(load_model(), sub, device="cpu")
    measured = result.summary["1"]["dice"]["mean"]
    card = BUNDLED_MODELS[DEFAULT_MODEL].card()["metrics"]
    assert card["val_n_images"] == len(images)
    assert measured > 0.8, result.summary["1"]["dice"]
    assert abs(measured - card["val_dice"]) < 0.1, (measured, card["val_dice"])


def test_report_records_the_tta_and_post_processing_used(tmp_path: Path) -> None:
    from medxai.pipeline import SegmentOptions, segment_path

    bundle = load_model()
    sample = Path(__file__).resolve().parents[1] / "sample_data" / "dermoscopy.jpg"
    shipped = segment_path(sample, bundle, tmp_path / "a", SegmentOptions(explain=None,
                                                                          formats=["json"]))
    fast = segment_path(sample, bundle, tmp_path / "b", SegmentOptions(explain=None, tta="none",
                                                                       formats=["json"]))
    model = shipped.report["model"]
    assert model["tta"] == bundle.inference["tta"] == "dihedral"
    assert model["postprocessing"] == {"keep_largest_component": True, "fill_holes": True}
    assert fast.report["model"]["tta"] == "none"
    a, b = (r.report["labels"][0]["voxel_count"] for r in (shipped, fast))
    assert a > 0 and abs(a - b) < 0.05 * a  # one pass gives nearly the same lesion
