"""medxai's reader in a bundle's own LoadImaged (medxai.io.bundle_reader): the dict after
LoadImaged is what plain MONAI's LoadImaged gives for the same file, and bundles written the way
the MONAI tutorials write them (a named reader, EnsureChannelFirstd(channel_dim=...), a 2D
network over slices, an RGB picture) give plain MONAI's label map through medxai."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import NibabelReader, PILReader, PydicomReader
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

from medxai.io.bundle_reader import MonaiLayoutReader
from medxai.io.readers import load_image
from tests.conftest import shared_path

pytestmark = pytest.mark.shared_data

CT_SM = ("dicom", "totalsegmentator_tests", "tests", "reference_files", "example_ct_sm.nii.gz")
HIPPO_SERIES = ("hippocampus", "dicom_study1", "13_HCropVolume")
ISIC = ("isic2018", "val", "images", "ISIC_0000006.jpg")
MONAI_KEYS = ("affine", "original_affine", "spatial_shape", "original_channel_dim", "space",
              "filename_or_obj")


def _same_meta(ours: dict, theirs: dict, keys=MONAI_KEYS) -> None:
    for key in keys:
        assert (key in ours) == (key in theirs), key
        if key not in theirs:
            continue
        a, b = ours[key], theirs[key]
        if key == "original_channel_dim":
            assert (math.isnan(a) and math.isnan(b)) if isinstance(b, float) else a == b, (a, b)
        elif key in ("affine", "original_affine", "spatial_shape"):
            np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float),
                                       atol=1e-6, err_msg=key)
        else:
            assert str(a) == str(b), (key, a, b)


def _load_both(path: Path, monai_reader) -> tuple[dict, dict, dict]:
    """(from the file with medxai's reader, served after medxai read it, plain MONAI)."""
    src = str(path)
    theirs = LoadImaged("image", reader=monai_reader, image_only=False)({"image": src})
    reader = MonaiLayoutReader()
    ours = LoadImaged("image", reader=reader, image_only=False)({"image": src})
    with reader.serving(load_image(path).image):
        served = LoadImaged("image", reader=reader, image_only=False)({"image": src})
    return ours, served, theirs


def test_nifti_dict_equals_nibabel_reader() -> None:
    path = shared_path(*CT_SM)
    ours, served, theirs = _load_both(path, NibabelReader())
    for d in (ours, served):
        assert d["image"].shape == theirs["image"].shape == (122, 101, 30)  # no channel axis
        assert d["image"].dtype == theirs["image"].dtype == torch.float32
        np.testing.assert_array_equal(d["image"].numpy(), theirs["image"].numpy())
        _same_meta(d["image_meta_dict"], theirs["image_meta_dict"])
        _same_meta(dict(d["image"].meta), dict(theirs["image"].meta))


def test_dicom_series_dict_equals_pydicom_reader() -> None:
    """MONAI's own DICOM series reader (PydicomReader, no ITK): same layout and keys; this
    series stacks in the same order in both, so the arrays and affines are equal as read."""
    path = shared_path(*HIPPO_SERIES)
    ours, served, theirs = _load_both(path, PydicomReader())
    assert theirs["image"].shape == (35, 51, 32)
    for d in (ours, served):
        assert d["image"].shape == theirs["image"].shape
        np.testing.assert_array_equal(d["image"].numpy(), theirs["image"].numpy())
        _same_meta(d["image_meta_dict"], theirs["image_meta_dict"],
                   [k for k in MONAI_KEYS if k != "filename_or_obj"])


def test_dicom_series_stacked_the_other_way_is_the_same_after_orientation(tmp_path: Path
                                                                          ) -> None:
    """A CT series that PydicomReader stacks head first and medxai feet first: the same array
    and affine once the bundle's Orientationd has run."""
    path = shared_path("dicom", "totalsegmentator_tests", "tests", "reference_files",
                       "example_ct_dicom")
    chain = [EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS")]
    theirs = Compose([LoadImaged("image", reader=PydicomReader()), *chain])({"image": str(path)})
    ours = Compose([LoadImaged("image", reader=MonaiLayoutReader()), *chain])({"image": str(path)})
    assert ours["image"].shape == theirs["image"].shape == (1, 512, 512, 20)
    np.testing.assert_array_equal(ours["image"].numpy(), theirs["image"].numpy())
    np.testing.assert_allclose(ours["image"].affine.numpy(), theirs["image"].affine.numpy(),
                               atol=1e-4)


def test_picture_dict_equals_pil_reader() -> None:
    """PILReader's layout: width first (it transposes), channel last, no affine of its own."""
    path = shared_path(*ISIC)
    ours, served, theirs = _load_both(path, PILReader())
    assert theirs["image"].shape == (512, 512, 3)
    for d in (ours, served):
        assert d["image"].shape == theirs["image"].shape
        np.testing.assert_array_equal(d["image"].numpy(), theirs["image"].numpy())
        _same_meta(d["image_meta_dict"], theirs["image_meta_dict"],
                   ("affine", "original_affine", "spatial_shape", "original_channel_dim"))
        np.testing.assert_array_equal(d["image"].affine.numpy(), theirs["image"].affine.numpy())
    # a grey picture: no channel axis, as PILReader gives it
    grey = shared_path("cxr_lungs", "val")
    first = sorted(p for p in grey.rglob("*.png") if "mask" not in p.name)[0]
    ours, served, theirs = _load_both(first, PILReader())
    assert ours["image"].ndim == theirs["image"].ndim == 2
    np.testing.assert_array_equal(served["image"].numpy(), theirs["image"].numpy())


def test_channel_steps_do_what_their_author_meant(tmp_path: Path) -> None:
    """EnsureChannelFirstd with channel_dim='no_channel' (tutorial style) and -1 (RGB) after
    medxai's reader: one channel axis, as after MONAI's readers."""
    ct, pic = shared_path(*CT_SM), shared_path(*ISIC)
    for path, reader, dim in ((ct, NibabelReader(), "no_channel"), (pic, PILReader(), -1)):
        chain = [EnsureChannelFirstd("image", channel_dim=dim)]
        theirs = Compose([LoadImaged("image", reader=reader), *chain])({"image": str(path)})
        ours = Compose([LoadImaged("image", reader=MonaiLayoutReader()), *chain])(
            {"image": str(path)})
        assert ours["image"].shape == theirs["image"].shape
        assert ours["image"].shape[0] in (1, 3)
        np.testing.assert_array_equal(ours["image"].numpy(), theirs["image"].numpy())


def test_multichannel_volume_is_what_one_file_per_channel_gives(tmp_path: Path) -> None:
    """Four channels (medxai: a 4D NIfTI or --channels) are served stacked first, as LoadImaged
    stacks one file per channel (BraTS's datalist; its preprocessing has no
    EnsureChannelFirstd)."""
    img = nib.load(str(shared_path(*CT_SM)))
    data = np.asarray(img.dataobj)[:40, :40, :8].astype(np.float32)
    files = []
    for c in range(4):
        files.append(str(tmp_path / f"c{c}.nii.gz"))
        nib.save(nib.Nifti1Image(data * (c + 1), img.affine), files[-1])
    nib.save(nib.Nifti1Image(np.stack([data * (c + 1) for c in range(4)], -1), img.affine),
             str(tmp_path / "four.nii.gz"))
    theirs = LoadImaged("image", reader=NibabelReader())({"image": files})
    reader = MonaiLayoutReader()
    with reader.serving(load_image(tmp_path / "four.nii.gz").image):
        ours = LoadImaged("image", reader=reader)({"image": str(tmp_path / "four.nii.gz")})
    assert ours["image"].shape == theirs["image"].shape == (4, 40, 40, 8)
    assert ours["image"].meta["original_channel_dim"] == 0
    np.testing.assert_array_equal(ours["image"].numpy(), theirs["image"].numpy())


# ---------------------------------------------------------------------------------------------
# bundles written the way the MONAI tutorials write them, end to end
# ---------------------------------------------------------------------------------------------

def _tutorial_bundle(tmp: Path, name: str, *, dims: int, in_channels: int, reader: str,
                     channel_dim, inferer: dict, extra_pre: list | None = None) -> Path:
    root = tmp / name
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    cfg = {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "network_def": {"_target_": "UNet", "spatial_dims": dims, "in_channels": in_channels,
                        "out_channels": 2, "channels": [4, 8, 16], "strides": [2, 2],
                        "num_res_units": 1},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "reader": reader},
            {"_target_": "EnsureChannelFirstd", "keys": "image", "channel_dim": channel_dim},
            *(extra_pre or []),
            {"_target_": "ScaleIntensityd", "keys": "image"},
        ]},
        "inferer": inferer,
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing",
             "orig_keys": "image", "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        ]},
    }
    import yaml

    (root / "configs" / "inference.yaml").write_text(yaml.safe_dump(cfg))
    (root / "configs" / "metadata.json").write_text(json.dumps({"name": name, "version": "0.1"}))
    from monai.bundle import ConfigParser

    torch.manual_seed(0)
    p = ConfigParser()
    p.read_config(str(root / "configs" / "inference.yaml"))
    net = p.get_parsed_content("network_def")
    # a bias that makes the seeded network label part of the image
    last = [m for m in net.modules() if isinstance(m, (torch.nn.ConvTranspose2d,
                                                       torch.nn.ConvTranspose3d))][-1]
    with torch.no_grad():
        last.bias[1] += 0.05
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


def _plain_monai_labels(root: Path, image: Path, reader_override: str | None = None):
    from monai.bundle import ConfigParser
    from monai.data import decollate_batch, list_data_collate

    p = ConfigParser()
    p.read_config(str(root / "configs" / "inference.yaml"))
    p["bundle_root"] = str(root)
    if reader_override:
        p["preprocessing#transforms#0#reader"] = reader_override
    net = p.get_parsed_content("network_def")
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    net.eval()
    pre, inferer, post = (p.get_parsed_content(k) for k in ("preprocessing", "inferer",
                                                           "postprocessing"))
    batch = list_data_collate([pre({"image": str(image)})])
    with torch.no_grad():
        batch["pred"] = inferer(batch["image"], net)
    return post(decollate_batch(batch)[0])["pred"][0].numpy()


def _medxai_labels(root: Path, image: Path) -> np.ndarray:
    from medxai.inference import predict
    from medxai.models.registry import load_model

    bundle = load_model(root)
    pred = predict(bundle, load_image(image).image, device="cpu", source=str(image))
    return pred.labels[0].numpy()


@pytest.fixture(scope="module")
def ct_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    img = nib.load(str(shared_path(*CT_SM)))
    out = tmp_path_factory.mktemp("tut") / "ct_small.nii.gz"
    nib.save(img.slicer[40:72, 40:72, 8:24], str(out))
    return out


@pytest.mark.parametrize("reader", ["NibabelReader", "ITKReader"])
def test_tutorial_bundle_no_channel_and_named_reader(reader: str, ct_small: Path,
                                                     tmp_path: Path) -> None:
    """LoadImaged(reader=...) then EnsureChannelFirstd(channel_dim='no_channel'): failed with
    'Sequence must have length 4, got 3' before. ITKReader (itk is not installed here) is
    replaced by medxai's reader; plain MONAI is run with NibabelReader for the same file."""
    root = _tutorial_bundle(tmp_path, "tut3d", dims=3, in_channels=1, reader=reader,
                            channel_dim="no_channel", inferer={"_target_": "SimpleInferer"})
    ref = _plain_monai_labels(root, ct_small, "NibabelReader")
    ours = _medxai_labels(root, ct_small)
    assert ours.shape == ref.shape == (32, 32, 16)
    assert 0 < ref.sum() < ref.size  # both labels present: a comparison that can fail
    np.testing.assert_array_equal(ours, ref)


def test_tutorial_bundle_2d_network_over_slices(ct_small: Path, tmp_path: Path) -> None:
    """A 2D network that the config runs over the slices of a volume with SliceInferer."""
    root = _tutorial_bundle(tmp_path, "tut_slices", dims=2, in_channels=1, reader="NibabelReader",
                            channel_dim="no_channel",
                            inferer={"_target_": "SliceInferer", "spatial_dim": 2,
                                     "roi_size": [32, 32], "sw_batch_size": 4})
    ref = _plain_monai_labels(root, ct_small)
    ours = _medxai_labels(root, ct_small)
    assert ours.shape == ref.shape == (32, 32, 16)
    assert 0 < ref.sum() < ref.size
    np.testing.assert_array_equal(ours, ref)
    # saliency, slice by slice, on the input grid
    from medxai.models.registry import load_model
    from medxai.pipeline import compute_saliency

    bundle = load_model(root)
    sal = compute_saliency(bundle, load_image(ct_small), "gradcam", 1, torch.device("cpu"))
    assert tuple(sal.shape) == (1, 32, 32, 16)
    assert torch.isfinite(sal).all() and float(sal.max()) > 0


def test_tutorial_bundle_rgb_picture(tmp_path: Path) -> None:
    """A 2D network on an RGB photo whose config says EnsureChannelFirstd(channel_dim=-1)
    (failed before with 'expected input[1, 512, ...] to have 3 channels')."""
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.open(shared_path(*ISIC)).resize((96, 80)).save(photo)
    root = _tutorial_bundle(tmp_path, "tut_rgb", dims=2, in_channels=3, reader="PILReader",
                            channel_dim=-1, inferer={"_target_": "SimpleInferer"},
                            extra_pre=[{"_target_": "Resized", "keys": "image",
                                        "spatial_size": [64, 64]}])
    ref = _plain_monai_labels(root, photo)
    ours = _medxai_labels(root, photo)
    assert ours.shape == ref.shape == (96, 80)
    assert 0 < ref.sum() < ref.size
    np.testing.assert_array_equal(ours, ref)


def test_reader_pickles_and_serves_per_thread(ct_small: Path) -> None:
    """A bundle goes to worker processes pickled; the served image is the calling thread's."""
    import pickle
    import threading

    reader = pickle.loads(pickle.dumps(MonaiLayoutReader()))
    image = load_image(ct_small).image
    seen = {}

    def other() -> None:  # another thread reads the file itself, not the served image
        seen["other"] = reader.read(str(ct_small))[0]

    with reader.serving(image[:, :8]):
        t = threading.Thread(target=other)
        t.start()
        t.join()
        seen["served"] = reader.read("anything")[0]
    assert tuple(seen["served"].shape) == (1, 8, 32, 16)
    assert tuple(seen["other"].shape) == (1, 32, 32, 16)
