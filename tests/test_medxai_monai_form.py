"""medxai's own bundles are MONAI bundles (issue 13 item 3).

- ``medxai train`` (save_bundle) writes form 2: ``configs/inference.json`` that plain MONAI runs,
  medxai's extras under the one key ``medxai``, ``configs/metadata.json`` in MONAI's form.
- The bundled models convert with ``medxai models convert`` with their weights byte for byte and
  their label maps unchanged; the old form still loads.
- Plain MONAI (ConfigParser + the config's own preprocessing/inferer/postprocessing, no medxai
  import in that code path) gives medxai's label map without its extras (TTA off, argmax, no
  component clean-up) on a real ISIC val image, a real CXR val image and a real hippocampus val
  volume: exactly, voxel for voxel (no interpolation differs: the generated config uses the
  same resize and intensity arithmetic as medxai).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, shared_path

pytestmark = pytest.mark.slow

BUNDLED = ROOT / "medxai" / "models" / "bundled"
MODELS = ("isic2018_lesion_unet", "cxr_lungs_unet", "hippocampus_unet")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _plain_monai_labels(bundle: Path, image: Path) -> tuple[np.ndarray, np.ndarray]:
    """The label map (and the image's affine) of plain MONAI: no medxai import here."""
    from monai.bundle import ConfigParser
    from monai.data import decollate_batch, list_data_collate

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def")
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    net.eval()
    pre = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer")
    post = parser.get_parsed_content("postprocessing")
    batch = list_data_collate([pre({"image": str(image)})])
    with torch.no_grad():
        batch["pred"] = inferer(batch["image"], net)
    item = post(decollate_batch(batch, detach=True)[0])
    return item["pred"].as_tensor().numpy(), item["pred"].affine.numpy()


def _medxai_labels(bundle_path: Path, image: Path, *, extras: bool) -> tuple[np.ndarray, Any]:
    from medxai.inference import predict
    from medxai.io.readers import read_image
    from medxai.models.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    if not extras:
        bundle.config["inference"].pop("threshold", None)
        bundle.config["postprocessing"] = {}
    img = read_image(image)
    pred = predict(bundle, img, device="cpu", tta=None if extras else "none")
    return pred.labels.numpy(), pred



def _inputs(folder: str) -> list[Path]:
    if folder == "isic2018_lesion_unet":
        images = sorted(shared_path("isic2018", "val", "images").glob("*.jpg"))
        return images[:2]
    if folder == "cxr_lungs_unet":
        return sorted(shared_path("cxr_lungs", "val").glob("CHNCXR_*_0.png"))[:1]
    root = shared_path("hippocampus")
    val = json.loads((root / "dataset.json").read_text())["validation"]
    return [root / val[0]["image"]]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each bundled model as it is in the tree, and converted to form 2 (a no-op rewrite for a
    model that is already form 2)."""
    from medxai.models.bundle import convert_bundle

    out = {}
    for folder in MODELS:
        if not (BUNDLED / folder / "models" / "model.pt").is_file():
            continue
        out[folder] = convert_bundle(BUNDLED / folder, tmp_path_factory.mktemp(folder) / "b")
    return out


@pytest.mark.parametrize("folder", MODELS)
def test_conversion_keeps_weights_and_settings(converted, folder):
    from medxai.models.bundle import load_bundle
    from medxai.models.bundle_form import FORM, MEDXAI_KEY

    if folder not in converted:
        pytest.skip(f"{folder} has no weights in this checkout")
    old, new = BUNDLED / folder, converted[folder]
    assert (new / "models" / "model.pt").read_bytes() == (old / "models" / "model.pt").read_bytes()
    a, b = load_bundle(old), load_bundle(new)
    assert b.extra["form"] == FORM
    assert b.weights_sha256 == a.weights_sha256 == _sha(new / "models" / "model.pt")
    assert b.config == a.config and b.contract == a.contract
    raw = json.loads((new / "configs" / "inference.json").read_text())
    assert set(raw) >= {"network_def", "preprocessing", "inferer", "postprocessing", MEDXAI_KEY}
    assert "input" not in raw and "labels" not in raw  # the extras live under one key only
    meta = json.loads((new / "configs" / "metadata.json").read_text())
    cdef = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert cdef == {str(lab["value"]): lab["name"] for lab in a.labels}
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == a.in_channels
    assert (new / "docs" / "README.md").read_bytes() == (old / "docs" / "README.md").read_bytes()


@pytest.mark.parametrize("folder", MODELS)
def test_label_maps_unchanged_by_conversion(converted, folder):
    if folder not in converted:
        pytest.skip(f"{folder} has no weights in this checkout")
    for image in _inputs(folder):
        before, _ = _medxai_labels(BUNDLED / folder, image, extras=True)
        after, _ = _medxai_labels(converted[folder], image, extras=True)
        assert before.any(), f"{image.name}: the model finds nothing, the test would prove little"
        np.testing.assert_array_equal(before, after, err_msg=image.name)


@pytest.mark.parametrize("folder", MODELS)
def test_plain_monai_equals_medxai_without_extras(converted, folder):
    """ConfigParser + the bundle's own preprocessing/inferer/postprocessing: the same label map
    as medxai with TTA off, argmax and no component clean-up, voxel for voxel, on the same grid."""
    if folder not in converted:
        pytest.skip(f"{folder} has no weights in this checkout")
    bundle = converted[folder]
    for image in _inputs(folder)[:1]:
        plain, affine = _plain_monai_labels(bundle, image)
        ours, pred = _medxai_labels(bundle, image, extras=False)
        assert plain.shape == ours.shape, image.name
        np.testing.assert_array_equal(plain.astype(np.uint8), ours, err_msg=image.name)
        if folder == "hippocampus_unet":
            np.testing.assert_allclose(affine, pred.affine.numpy(), atol=1e-5)
        assert 0 < ours.mean() < 0.9
    # and the extras change it (so the comparison above is not vacuous for the ISIC model)
    if folder == "isic2018_lesion_unet":
        full, _ = _medxai_labels(bundle, image, extras=True)
        assert not np.array_equal(full, ours)


def test_old_form_still_loads_and_tampered_weights_are_refused(converted, tmp_path):
    from medxai.errors import BundleIntegrityError
    from medxai.models.bundle import load_bundle
    from medxai.models.bundle_form import LEGACY_FORM

    if "isic2018_lesion_unet" not in converted:
        pytest.skip("the ISIC model has no weights in this checkout")
    new = converted["isic2018_lesion_unet"]
    b = load_bundle(new)
    old = tmp_path / "old"
    shutil.copytree(new, old)
    legacy = dict(b.config)  # form 1: the view's keys at the top level
    (old / "configs" / "inference.json").write_text(json.dumps(legacy))
    a = load_bundle(old)
    assert a.extra["form"] == LEGACY_FORM and a.config == b.config
    bad = tmp_path / "bad"
    shutil.copytree(new, bad)
    w = bad / "models" / "model.pt"
    data = bytearray(w.read_bytes())
    data[-20] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="SHA-256"):
        load_bundle(bad)


def test_models_convert_cli(rgb_bundle, tmp_path):
    from click.testing import CliRunner

    from medxai.cli.main import cli
    from medxai.models.bundle import load_bundle
    from medxai.models.bundle_form import FORM, LEGACY_FORM

    old = tmp_path / "old"
    shutil.copytree(rgb_bundle.path, old)
    (old / "configs" / "inference.json").write_text(json.dumps(rgb_bundle.config))
    assert load_bundle(old).extra["form"] == LEGACY_FORM
    new = tmp_path / "new"
    res = CliRunner().invoke(cli, ["models", "convert", str(old), str(new)])
    assert res.exit_code == 0, res.output
    assert "converted test-rgb-unet" in res.output and rgb_bundle.weights_sha256 in res.output
    assert load_bundle(new).extra["form"] == FORM
    # a second conversion into the same folder is refused, nothing changed
    before = (new / "configs" / "inference.json").read_bytes()
    res = CliRunner().invoke(cli, ["models", "convert", str(old), str(new)])
    assert res.exit_code == 2 and "not an empty folder" in res.output
    assert "Traceback" not in res.output
    assert (new / "configs" / "inference.json").read_bytes() == before


def test_train_writes_a_bundle_plain_monai_runs(rgb_bundle, tmp_path):
    """``medxai train`` (rgb_bundle is trained by it) writes form 2; plain MONAI instantiates the
    network, loads the weights strictly and gives medxai's argmax label map on a picture."""
    from PIL import Image

    from medxai.models.bundle_form import FORM

    raw = json.loads((rgb_bundle.path / "configs" / "inference.json").read_text())
    assert raw["medxai"]["form"] == FORM
    assert rgb_bundle.extra["form"] == FORM
    meta = json.loads((rgb_bundle.path / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        "0": "background",
        "1": "lesion",
    }
    rng = np.random.default_rng(0)
    picture = tmp_path / "p.png"
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(picture)
    plain, _ = _plain_monai_labels(rgb_bundle.path, picture)
    ours, _ = _medxai_labels(rgb_bundle.path, picture, extras=False)
    np.testing.assert_array_equal(plain.astype(np.uint8), ours)


def test_package_model_writes_form_2(rgb_bundle, tmp_path):
    """scripts/package_model.py (its command line unchanged) packages a run as a form-2 bundle
    with the run's weights byte for byte."""
    from medxai.models.bundle import load_bundle
    from medxai.models.bundle_form import FORM
    from tests.models import make_picture_dataset

    spec = importlib.util.spec_from_file_location("package_model", ROOT / "scripts" / "package_model.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    mod.BUNDLED = tmp_path / "bundled"  # never the package's own folder
    mod.ROOT = tmp_path
    (tmp_path / "docs").mkdir()
    run = tmp_path / "run"
    shutil.copytree(rgb_bundle.path, run)
    (run / "configs" / "inference.json").write_text(json.dumps(rgb_bundle.config))  # old form
    val = make_picture_dataset(tmp_path / "val", n=2)
    args = argparse.Namespace(run=run, val=val, val_list=False, dest="pkg", input='{"modalities": ["XC"]}',
                              tta="flips", postprocess='{"fill_holes": true}', threshold=None, card=None,
                              data_note="two synthetic pictures", license=None, intended_use=None,
                              tta_axes="0", saliency='{"method": "hirescam", "layer": "encoder.1"}')
    mod.main(args)
    out = tmp_path / "bundled" / "pkg"
    b = load_bundle(out)
    assert b.extra["form"] == FORM
    assert (out / "models" / "model.pt").read_bytes() == (run / "models" / "model.pt").read_bytes()
    assert b.config["inference"]["tta"] == "flips" and b.config["postprocessing"] == {"fill_holes": True}
    assert b.config["input"]["modalities"] == ["XC"]
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert "network_data_format" in meta and meta["evaluation"]["inference"]["tta"] == "flips"
    assert b.contract.inference.tta_axes == (0,) and meta["evaluation"]["inference"]["tta_axes"] == [0]
    assert b.config["saliency"]["method"] == "hirescam"


def test_plain_monai_equals_medxai_with_a_spacing(ct_bundle, tmp_path):
    """A 3D bundle that resamples to a spacing (4 mm): plain MONAI's Orientationd + Spacingd
    chain and medxai's model grid (MONAI's Orientation + Spacing) give the same probabilities
    on the input grid, bit for bit, the same label map and the same affine (LPS-like input of
    1.3 x 1.3 x 2.5 mm)."""
    import nibabel as nib
    from monai.bundle import ConfigParser
    from monai.data import decollate_batch, list_data_collate

    from medxai.models.bundle import convert_bundle
    from medxai.samples import make_ct_volume

    bundle = convert_bundle(ct_bundle.path, tmp_path / "b")
    vol, _ = make_ct_volume(seed=7)
    image = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([-1.3, -1.3, 2.5, 1.0])), str(image))
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    net.eval()
    batch = list_data_collate([parser.get_parsed_content("preprocessing")({"image": str(image)})])
    with torch.no_grad():
        batch["pred"] = parser.get_parsed_content("inferer")(batch["image"], net)
    item = decollate_batch(batch, detach=True)[0]
    post = parser.get_parsed_content("postprocessing").transforms
    assert [type(t).__name__ for t in post] == ["Activationsd", "Invertd", "AsDiscreted"]
    for t in post[:-1]:
        item = t(item)
    plain_prob = item["pred"].as_tensor().numpy()
    plain_affine = item["pred"].affine.numpy()
    plain_labels = post[-1](item)["pred"].as_tensor().numpy()
    ours, pred = _medxai_labels(bundle, image, extras=False)
    assert plain_prob.shape == pred.probabilities.shape == (2, *vol.shape)
    assert float(np.std(plain_prob[1])) > 1e-3  # a map that varies, so equality means something
    np.testing.assert_array_equal(plain_prob, pred.probabilities.numpy())
    np.testing.assert_array_equal(plain_labels.astype(np.uint8), ours)
    np.testing.assert_allclose(plain_affine, pred.affine.numpy(), atol=1e-5)
