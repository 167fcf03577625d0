"""CUDA with mixed precision: ``predict`` and ``segment`` on a GPU under float16 autocast.

Each test runs wherever torch sees a CUDA device and is skipped, with the reason, elsewhere (CI
machines have no GPU; on a GPU machine ``python -m pytest tests/test_cuda.py`` runs them). The
GPU result is compared with the CPU's on the same input: the network must have run in float16
on the GPU (a forward hook records the dtype), the probabilities come back as float32 on the CPU,
and labels and saliency agree with the CPU's up to float16 rounding.

Models: the hand-set 2D RGB network of the batch tests (a known, non-empty answer: it labels
dark pixels; whole-image mode with flip TTA) and the tiny 3D CT model trained by the tests
(sliding-window mode).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medxai.inference import predict
from medxai.io.readers import load_image
from medxai.models.bundle import load_bundle
from medxai.pipeline import SegmentOptions, segment_path

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device (torch.cuda.is_available() is False): the CUDA/AMP path is not run",
)


@pytest.fixture(scope="module")
def photo_bundle(tmp_path_factory: pytest.TempPathFactory):
    from tests.fixtures_pacs import make_test_bundle

    return load_bundle(make_test_bundle(tmp_path_factory.mktemp("cuda_model") / "model"))


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    from tests.fixtures_pacs import varied_photo

    path = tmp_path_factory.mktemp("cuda_photo") / "photo.png"
    Image.fromarray(varied_photo(4)).save(path)  # 80x56, lesion off-centre
    return path


def _record_dtypes(module: torch.nn.Module) -> tuple[list, torch.utils.hooks.RemovableHandle]:
    seen: list[tuple[torch.dtype, str]] = []
    handle = module.register_forward_hook(
        lambda _m, _i, out: seen.append((out.dtype, out.device.type)))
    return seen, handle


def _first_conv(net: torch.nn.Module) -> torch.nn.Module:
    return next(m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))


def _assert_gpu_matches_cpu(bundle, image: torch.Tensor, *, labelled: bool = True) -> None:
    """``labelled``: the CPU's label map holds lesion and background (the 3D test model, trained
    for one epoch, labels everything: its probabilities still vary and are compared)."""
    seen, handle = _record_dtypes(_first_conv(bundle.network))
    try:
        gpu = predict(bundle, image, device="cuda")
    finally:
        handle.remove()
    assert seen and set(seen) == {(torch.float16, "cuda")}, seen  # autocast on the GPU
    cpu = predict(bundle, image, device="cpu")
    assert gpu.probabilities.dtype == torch.float32 and gpu.probabilities.device.type == "cpu"
    assert gpu.labels.shape == cpu.labels.shape == (1, *image.shape[1:])
    assert float(cpu.probabilities[1].max() - cpu.probabilities[1].min()) > 0.05
    if labelled:
        assert cpu.labels.any() and not cpu.labels.all()  # something to agree on
    assert float((gpu.probabilities - cpu.probabilities).abs().max()) < 1e-2
    assert float((gpu.labels == cpu.labels).float().mean()) > 0.99


@needs_cuda
def test_predict_whole_image_on_cuda_with_float16_autocast(photo_bundle, photo: Path) -> None:
    _assert_gpu_matches_cpu(photo_bundle, load_image(photo).image)


@needs_cuda
def test_predict_sliding_window_on_cuda_with_float16_autocast(ct_bundle) -> None:
    from medxai.samples import make_ct_volume

    vol, _lesion = make_ct_volume(seed=5)
    image = torch.from_numpy(vol.astype(np.float32))[None]
    _assert_gpu_matches_cpu(ct_bundle, image, labelled=False)


@needs_cuda
def test_segment_on_cuda_writes_what_the_cpu_writes(photo_bundle, photo: Path,
                                                   tmp_path: Path) -> None:
    results = {}
    for device in ("cuda", "cpu"):
        opts = SegmentOptions(formats=["nifti", "json"], explain="gradcam", device=device)
        res = segment_path(photo, photo_bundle, tmp_path / device, opts)
        report = json.loads((res.output_dir / "report.json").read_text())
        assert report["device"].startswith(device), report["device"]
        results[device] = (np.asarray(nib.load(res.output_dir / "labels.nii.gz").dataobj),
                           nib.load(res.output_dir / "saliency_lesion.nii.gz").get_fdata())
    (gpu_labels, gpu_sal), (cpu_labels, cpu_sal) = results["cuda"], results["cpu"]
    assert cpu_labels.any() and cpu_sal.max() > 0.5
    assert gpu_labels.shape == cpu_labels.shape and gpu_sal.shape == cpu_sal.shape
    assert np.mean(gpu_labels == cpu_labels) > 0.99
    assert np.abs(gpu_sal - cpu_sal).max() < 2e-2
