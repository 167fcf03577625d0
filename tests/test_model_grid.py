"""The model grid as MONAI invertible transforms (medxai.preprocessing.model_grid): MONAI's
Orientation and trace, inversion by Invertd/Compose.inverse, the same chain in training, and
a volume stored in another voxel order giving the same prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd, Orientation, Spacing

from medxai.inference import predict, prepare_input, restore_output
from medxai.preprocessing.intensity import ScaleIntensityFromBundle
from medxai.preprocessing.model_grid import (
    ModelGridd,
    from_model_grid,
    model_grid_transform,
    to_model_grid,
)
from medxai.preprocessing.spatial import resize_image

# voxel axes -> RAS: identity, LPS-like flips, a transposition with a flip, and two 3-cycles
# (sagittal and coronal acquisitions), with non-isotropic voxels
AFFINES = {
    "ras": np.diag([1.0, 1.0, 1.0, 1.0]),
    "lps": np.diag([-0.8, -0.8, 2.5, 1.0]),
    "swap_flip": np.array([[0, -1.0, 0, 5], [1.2, 0, 0, -3], [0, 0, 2.0, 7], [0, 0, 0, 1]]),
    "sagittal": np.array([[0, 0, 1.5, 0], [1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1]]),
    "coronal": np.array([[0, 1.0, 0, 0], [0, 0, -2.0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]]),
}


def _volume(shape: tuple[int, ...] = (7, 9, 11), channels: int = 1) -> torch.Tensor:
    return torch.arange(channels * int(np.prod(shape)), dtype=torch.float32).reshape(
        channels, *shape
    )


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_sliding_grid_is_monai_orientation_and_inverts_exactly(name: str) -> None:
    """Without resampling the model grid is exactly MONAI's Orientation("RAS") of the input,
    and the inverse brings scores of any channel count back voxel for voxel."""
    aff = torch.tensor(AFFINES[name])
    x = _volume()
    image = MetaTensor(x, affine=aff)
    chain = model_grid_transform(3, "sliding_window")
    on_grid, grid = to_model_grid(chain, image)
    expected = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(
        MetaTensor(x.clone(), affine=aff)
    )
    assert torch.equal(on_grid, expected.as_tensor())
    assert np.allclose(np.asarray(grid.affine), np.asarray(expected.affine))
    scores = torch.cat([on_grid, -on_grid, on_grid * 2])  # three "classes"
    back = from_model_grid(scores, grid)
    assert torch.equal(back, torch.cat([x, -x, x * 2]))


def test_invertd_equals_from_model_grid() -> None:
    """MONAI's own Invertd, in a dictionary pipeline with the chain as ModelGridd, gives what
    medxai's from_model_grid gives (the inversion is MONAI's, not hand-kept state)."""
    aff = torch.tensor(AFFINES["sagittal"])
    image = MetaTensor(_volume((10, 12, 8)), affine=aff)
    chain = model_grid_transform(3, "sliding_window", spacing=[2.0, 2.0, 2.0])
    on_grid, grid = to_model_grid(chain, image)
    scores = torch.softmax(torch.stack([on_grid[0], on_grid[0].flip(0)]) / 500.0, dim=0)
    pipeline = ModelGridd("image", chain)
    data = pipeline({"image": MetaTensor(image.as_tensor().clone(), affine=aff)})
    assert torch.equal(data["image"].as_tensor(), on_grid)
    data["pred"] = MetaTensor(scores.clone(), affine=data["image"].affine)
    inverted = Invertd(keys="pred", transform=pipeline, orig_keys="image", nearest_interp=False)(
        data
    )
    ours = from_model_grid(scores, grid)
    assert tuple(ours.shape) == (2, 10, 12, 8)
    assert torch.allclose(torch.as_tensor(inverted["pred"]), ours, atol=1e-6)


def test_spacing_grid_is_monai_spacing_and_inverts() -> None:
    """Resampling to ``spacing`` is MONAI's Spacing after its Orientation (as the generated
    MONAI config's Orientationd + Spacingd): the same grid and values, the target voxel size in
    the affine, and the inverse comes back to the input's size."""
    aff = torch.tensor(AFFINES["swap_flip"])  # 1.2 x 1.0 x 2.0 mm, axes swapped
    x = torch.rand(1, 20, 30, 6)
    chain = model_grid_transform(3, "sliding_window", spacing=[1.6, 1.6, 2.5])
    on_grid, grid = to_model_grid(chain, MetaTensor(x, affine=aff))
    ras = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(
        MetaTensor(x.clone(), affine=aff)
    )
    want = Spacing(pixdim=[1.6, 1.6, 2.5], mode="bilinear")(ras)
    assert torch.equal(on_grid, want.as_tensor())
    voxel = np.sqrt((np.asarray(grid.affine)[:3, :3] ** 2).sum(axis=0))
    assert np.allclose(voxel, [1.6, 1.6, 2.5])
    assert tuple(from_model_grid(on_grid, grid).shape) == (1, 20, 30, 6)


def test_whole_image_grid_is_the_trained_resize(rgb_bundle) -> None:
    """A whole-image model's input is exactly the anti-aliased resize it was trained with, after
    its intensity step; a one-slice volume is squeezed and the slice axis comes back."""
    img = MetaTensor(torch.rand(3, 50, 70, 1) * 255)
    x, grid = prepare_input(rgb_bundle, img)
    pre = rgb_bundle.preprocessing
    want = resize_image(
        ScaleIntensityFromBundle(pre.get("intensity"))(img[..., 0].as_tensor()), pre["spatial_size"]
    )
    assert torch.equal(x[0], want)
    back = restore_output(torch.rand(2, *x.shape[2:]), grid)
    assert tuple(back.shape) == (2, 50, 70, 1)


def test_training_and_inference_share_the_grid(ct_bundle, tmp_path) -> None:
    """medxai train's volume loader puts a volume on the grid that inference uses (same chain,
    same intensity), here for a sagittal-ordered volume resampled to 4 mm."""
    import nibabel as nib

    from medxai.io.datasets import Pair
    from medxai.io.readers import read_image
    from medxai.training.volumes import VolumeData

    rng = np.random.default_rng(0)
    data = (rng.normal(0, 300, (24, 28, 20))).astype(np.int16)
    lab = (rng.random((24, 28, 20)) > 0.7).astype(np.uint8)
    aff = np.array([[0, 0, 2.0, 0], [2.0, 0, 0, 0], [0, -2.0, 0, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, aff), tmp_path / "img.nii.gz")
    # an exported mask with no orientation in its header: the image's affine places it
    nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / "lab.nii.gz")
    pair = Pair(image=tmp_path / "img.nii.gz", label=tmp_path / "lab.nii.gz")

    class Cfg:
        roi_size = [8, 8, 8]
        samples_per_volume = 1
        seed = 0
        intensity = ct_bundle.preprocessing.get("intensity")
        spacing = ct_bundle.preprocessing.get("spacing")

    x_train, y_train = VolumeData([pair], [], Cfg(), lambda _m: None).train[0]
    x_infer, _ = prepare_input(ct_bundle, read_image(pair.image))
    assert torch.equal(x_train, x_infer[0])
    assert y_train.shape == x_train.shape and y_train.dtype == torch.uint8
    labels_as_image = MetaTensor(torch.from_numpy(lab[None].astype(np.float32)), affine=aff)
    want, _ = to_model_grid(model_grid_transform(3, "sliding_window", spacing=Cfg.spacing,
                                                 kind="label"), labels_as_image)
    assert torch.equal(y_train, want.to(torch.uint8))


def test_same_volume_in_another_voxel_order_gives_the_same_labels(ct_bundle) -> None:
    """One physical volume stored in RAS order and in a sagittal (3-cycle) voxel order: the
    network sees the same array, so the label maps agree voxel for voxel once mapped."""
    rng = np.random.default_rng(1)
    ras = torch.from_numpy(rng.normal(0, 400, (1, 16, 20, 12)).astype(np.float32))
    ras_aff = torch.diag(torch.tensor([4.0, 4.0, 4.0, 1.0], dtype=torch.float64))
    # stored as (A, S reversed, R): voxel (a, s, r) of the new array is RAS voxel (r, a, 11-s)
    stored = ras[0].permute(1, 2, 0).flip(1)[None].contiguous()
    stored_aff = torch.tensor(
        [[0, 0, 4.0, 0], [4.0, 0, 0, 0], [0, -4.0, 0, 44.0], [0, 0, 0, 1]], dtype=torch.float64
    )
    a = predict(ct_bundle, MetaTensor(ras.clone(), affine=ras_aff), device="cpu", tta="none")
    b = predict(ct_bundle, MetaTensor(stored, affine=stored_aff), device="cpu", tta="none")
    mapped = b.labels[0].flip(1).permute(2, 0, 1)
    assert torch.equal(a.labels[0], mapped)


def test_resize_affine_matches_monai_resize_and_caller_trace_untouched() -> None:
    """ResizeToShape's affine is MONAI Resize's (also a 2D picture's 4x4 affine, every world
    row), and running a chain never appends to the caller's own trace."""
    from monai.transforms import Resize

    from medxai.preprocessing.model_grid import ResizeToShape

    aff = torch.tensor([[0, 0, -1.0, 5], [1.0, 0, 0, 2], [0, 2.0, 0, 3], [0, 0, 0, 1]],
                       dtype=torch.float64)
    ours = ResizeToShape((5, 5))(MetaTensor(torch.rand(1, 10, 20), affine=aff)).affine
    monai = Resize((5, 5), mode="bilinear")(MetaTensor(torch.rand(1, 10, 20), affine=aff)).affine
    assert torch.allclose(ours.double(), monai.double(), atol=1e-6)
    image = MetaTensor(torch.rand(1, 4, 4))
    grid = ModelGridd("image", model_grid_transform(2, "whole_image", spatial_size=(8, 8)))
    first = grid({"image": image})["image"]
    second = grid({"image": image})["image"]
    assert len(image.applied_operations) == 0
    assert len(first.applied_operations) == len(second.applied_operations) == 2


def test_scale_intensity_in_place_on_its_own_copy_only() -> None:
    """An integer image is scaled in place on its float copy: the values of the out-of-place
    formula, to the bit; a float image given is left as it was."""
    from medxai.preprocessing.intensity import ScaleIntensityFromBundle

    g = torch.Generator().manual_seed(0)
    for spec in ({"kind": "scale", "a_min": 0.0, "a_max": 255.0},
                 {"kind": "scale", "a_min": -3.0, "a_max": 200.0, "clip": False}):
        scale = ScaleIntensityFromBundle(spec)
        for dtype in (torch.uint8, torch.int16):
            img = torch.randint(0, 256, (3, 37, 29), generator=g).to(dtype)
            want = (img.float() - scale.a_min) / (scale.a_max - scale.a_min)
            want = want.clamp(0.0, 1.0) if scale.clip else want
            got = scale(img)
            assert got.dtype == torch.float32
            assert got.numpy().tobytes() == want.numpy().tobytes()
        f = torch.rand(3, 8, 8, generator=g) * 300
        before = f.clone()
        scale(f)
        assert torch.equal(f, before)
