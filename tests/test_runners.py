"""One path for every model: medxai's own bundles are MONAI bundles, and the MONAI runner that
runs any zoo bundle gives the same prediction on them as medxai's own (fused) runner.

medxai's bundles carry MONAI keys (``preprocessing``, ``inferer``, ``postprocessing``) generated
from their ``medxai`` block. Loaded by :func:`medxai.models.monai_bundle.load_monai_bundle`, they
run as plain MONAI runs them, with medxai's threshold and clean-up layered on the bundle's
inverted probabilities (:class:`medxai.inference.MonaiRunner`); loaded by medxai's own loader they
run through :class:`medxai.inference.MedxaiRunner`. Both must give the same probabilities and the
same label map, on real inputs of each shipped model; the fast runner is an implementation of the
same function, not a second meaning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import medxai
from medxai.inference import MedxaiRunner, MonaiRunner, predict, runner_for
from medxai.models.monai_bundle import load_monai_bundle
from medxai.models.registry import load_model
from medxai.samples import make_dermoscopy_photo, write_dermoscopy_dicom
from tests.conftest import shared_path

BUNDLED = Path(medxai.__file__).parent / "models" / "bundled"


def _both_runners(folder: str):
    own = load_model(str(BUNDLED / folder))
    zoo = load_monai_bundle(BUNDLED / folder)
    assert isinstance(runner_for(own), MedxaiRunner)
    assert isinstance(runner_for(zoo), MonaiRunner)
    return own, zoo


def _assert_same_prediction(own, zoo, path: Path) -> None:
    image = medxai.read_image(path)
    mine = predict(own, image, device="cpu", tta="none", source=str(path))
    theirs = predict(zoo, image, device="cpu", source=str(path))
    assert theirs.probabilities.shape == mine.probabilities.shape
    # the same operations in the same order: equal to the bit on this machine
    diff = float((theirs.probabilities - mine.probabilities).abs().max())
    assert diff <= 1e-6, f"{path.name}: probabilities differ by {diff}"
    assert torch.equal(theirs.labels, mine.labels), f"{path.name}: label maps differ"
    assert int(mine.labels.max()) >= 1, f"{path.name}: nothing segmented, the test shows nothing"


def test_photo_model_runs_the_same_through_the_monai_runner(tmp_path):
    own, zoo = _both_runners("isic2018_lesion_unet")
    # medxai's extras are layered on the MONAI runner: the threshold and the clean-up
    assert zoo.contract.inference.threshold == own.contract.inference.threshold == 0.45
    assert dict(zoo.contract.clean_up) == dict(own.contract.clean_up)
    rgb, _ = make_dermoscopy_photo(320, 240)
    png = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(rgb).save(png)
    dcm = write_dermoscopy_dicom(rgb, tmp_path / "photo.dcm")
    for path in (png, dcm):
        _assert_same_prediction(own, zoo, path)


def test_the_threshold_and_clean_up_are_what_makes_the_labels_equal(tmp_path):
    """Without the layered extras the MONAI runner's label map is the bundle's own argmax, which
    differs from medxai's (threshold 0.45, largest component, holes filled): the layering is
    not a no-op on this input."""
    import dataclasses

    own, zoo = _both_runners("isic2018_lesion_unet")
    rgb, _ = make_dermoscopy_photo(320, 240, seed=3)
    rgb[::7, ::5] = 40  # specks: stray components that the clean-up removes
    png = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(rgb).save(png)
    image = medxai.read_image(png)
    mine = predict(own, image, device="cpu", tta="none")
    plain = dataclasses.replace(
        zoo,
        contract=dataclasses.replace(
            zoo.contract,
            inference=dataclasses.replace(zoo.contract.inference, threshold=None),
            extras={},
        ),
    )
    theirs = predict(plain, image, device="cpu")
    argmax = mine.probabilities.argmax(0, keepdim=True).to(theirs.labels.dtype)
    assert torch.equal(theirs.labels, argmax)
    assert not torch.equal(theirs.labels, mine.labels)


@pytest.mark.parametrize(
    ("folder", "data"),
    [
        ("isic2018_lesion_unet", ("isic2018", "val", "images")),
        ("cxr_lungs_unet", ("cxr_lungs", "val")),
        ("hippocampus_unet", ("hippocampus", "imagesTr")),
    ],
)
def test_shipped_models_run_the_same_through_the_monai_runner(folder, data):
    root = shared_path(*data)
    files = sorted(p for p in root.iterdir() if p.is_file() and "_mask" not in p.name)[:2]
    own, zoo = _both_runners(folder)
    for path in files:
        _assert_same_prediction(own, zoo, path)


def test_a_monai_runner_is_refused_views_and_a_medxai_one_is_not():
    own, zoo = _both_runners("hippocampus_unet")
    assert runner_for(zoo).views_refusal and not runner_for(zoo).batches
    assert runner_for(own).views_refusal is None
    # hippocampus is a sliding-window model: no batches, no kept forward pass
    assert not runner_for(own).batches and not runner_for(own).keeps_forward
    assert own.contract.inference.tiling == zoo.contract.inference.tiling == "sliding"


def test_monai_and_medxai_runners_bring_maps_back_onto_the_same_grid():
    """Saliency goes through the runner's model_input / to_input_grid for every model: for a
    sliding-window model both runners' grids are the input's own."""
    own, zoo = _both_runners("hippocampus_unet")
    image = medxai.read_image(sorted(shared_path("hippocampus", "imagesTr").glob("*.nii.gz"))[0])
    for runner in (runner_for(own), runner_for(zoo)):
        x, state = runner.model_input(image)
        back = runner.to_input_grid(torch.ones((1, *x.shape[2:])), state)
        assert tuple(back.shape[1:]) == tuple(image.shape[1:])
        np.testing.assert_allclose(back.numpy(), 1.0, atol=1e-5)
