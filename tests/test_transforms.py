"""medxai inside MONAI pipelines: LoadImaged with MedxaiReader, Predictd/Saliencyd/BlendOverlayd/
SaveSegmentationd in a Compose, Dataset + DataLoader batches, and Invertd."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, Invertd, LoadImage, LoadImaged, Orientationd, Spacingd

import medxai
from medxai.io.monai_reader import MedxaiReader
from medxai.transforms import BlendOverlayd, Predictd, Saliencyd, SaveSegmentationd

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"


def test_loadimage_with_medxai_reader_matches_read_image() -> None:
    for src in (SAMPLES / "ct_oblique_series", SAMPLES / "dermoscopy.dcm", SAMPLES / "ct_oblique.nii.gz"):
        ours = medxai.read_image(src)
        via_monai = LoadImage(reader=MedxaiReader(), image_only=True, ensure_channel_first=True)(str(src))
        assert tuple(via_monai.shape) == tuple(ours.shape)
        np.testing.assert_array_equal(via_monai.numpy(), ours.numpy())
        np.testing.assert_allclose(via_monai.affine.numpy(), ours.affine.numpy(), atol=1e-6)


def test_compose_predict_explain_overlay_save(rgb_bundle, tmp_path: Path) -> None:
    pipe = Compose([
        LoadImaged("image", reader=MedxaiReader(), image_only=True),
        Predictd("image", model=rgb_bundle, device="cpu"),
        Saliencyd("image", model=rgb_bundle, method="gradcam", device="cpu"),
        BlendOverlayd("image", label_key="pred", saliency_key="saliency"),
        SaveSegmentationd("image", label_key="pred", saliency_key="saliency", output_dir=tmp_path,
                          model=rgb_bundle, formats=("nifti", "dicom-seg", "dicom-sc")),
    ])
    out = pipe({"image": str(SAMPLES / "dermoscopy.dcm")})
    assert out["pred"].shape == (1, 640, 480) and out["pred"].dtype == torch.uint8
    assert out["saliency"].shape == (1, 640, 480) and float(out["saliency"].max()) <= 1
    assert out["overlay"].shape == (3, 640, 480)
    folder = Path(out["image_output"])
    seg = pydicom.dcmread(folder / "seg.dcm")
    assert seg.Modality == "SEG"
    assert (folder / "labels.nii.gz").is_file() and list((folder / "overlay_sc").glob("*.dcm"))


def test_dataset_and_dataloader_batches(rgb_bundle) -> None:
    data = [{"image": str(SAMPLES / "dermoscopy.jpg")}, {"image": str(SAMPLES / "dermoscopy.dcm")}]
    ds = Dataset(data, transform=Compose([LoadImaged("image", reader=MedxaiReader(), image_only=True),
                                          Predictd("image", model=rgb_bundle, device="cpu")]))
    batch = next(iter(DataLoader(ds, batch_size=2, num_workers=0)))
    assert batch["image"].shape == (2, 3, 640, 480)
    assert batch["pred"].shape == (2, 1, 640, 480)


def test_invertd_brings_the_prediction_back(ct_bundle) -> None:
    pre = Compose([LoadImaged("image", reader=MedxaiReader(), image_only=True),
                   Orientationd("image", axcodes="RAS"),
                   Spacingd("image", pixdim=(2.0, 2.0, 3.0), mode="bilinear")])
    d = pre({"image": str(SAMPLES / "ct_oblique.nii.gz")})
    d = Predictd("image", model=ct_bundle, device="cpu")(d)
    assert d["pred"].shape[1:] == d["image"].shape[1:]
    inv = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True)(d)
    original = medxai.read_image(SAMPLES / "ct_oblique.nii.gz")
    assert tuple(inv["pred"].shape[1:]) == tuple(original.shape[1:])
    np.testing.assert_allclose(inv["pred"].affine.numpy(), original.affine.numpy(), atol=1e-4)


def test_public_api_names() -> None:
    for name in ("read_image", "load_image", "load_model", "predict", "explain", "segment",
                 "MedxaiReader", "SegmentOptions", "train"):
        assert name in medxai.__all__ and getattr(medxai, name) is not None
