"""The CPU runs a 2D network with its weights in the channels-last memory format.

:func:`medxai.inference.network_on` converts a 2D network's weights to channels-last on the CPU
(oneDNN's convolutions are faster with the channels innermost:
``benchmarks/bench_channels_last.py``) and converts them back when the block ends. The layout
changes no value, only the order of floating-point sums: predictions and saliency maps agree
with the default layout's to float32 rounding, and the network a caller handed in is given back
as it was, usable by autograd.
"""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNet

import medxai.inference as inference
from medxai.inference import network_on, predict
from medxai.models.registry import load_model
from medxai.samples import make_dermoscopy_photo

CPU = torch.device("cpu")


def _unet(dims: int) -> UNet:
    return UNet(dims, 3, 2, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)


def _conv_weights(net: torch.nn.Module) -> list[torch.Tensor]:
    """The weights of the convolutions whose layout is not ambiguous (kernel larger than 1x1,
    more than one input channel)."""
    return [
        m.weight
        for m in net.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
        and m.weight.shape[1] > 1
        and m.weight.shape[-1] > 1
    ]


def test_a_2d_network_runs_channels_last_on_the_cpu_and_is_given_back_as_it_was():
    net = _unet(2).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    seen = []
    with network_on(net, CPU) as running:
        weights = _conv_weights(running)
        assert weights
        seen = [w.is_contiguous(memory_format=torch.channels_last) for w in weights]
        assert not running.training
        out = running(torch.rand(2, 3, 32, 32))
        assert out.is_contiguous(memory_format=torch.channels_last)
    assert all(seen), "the 2D network did not run channels-last"
    assert all(w.is_contiguous() for w in _conv_weights(net)), "the layout was not given back"
    assert net.training, "the mode was not given back"
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a value changed"


def test_3d_networks_and_networks_stored_channels_last_are_left_as_they_are():
    net3 = _unet(3)
    with network_on(net3, CPU) as running:
        assert all(
            m.weight.is_contiguous() for m in running.modules() if isinstance(m, torch.nn.Conv3d)
        )
    # a caller's own choice of layout is kept, during the block and after it
    net = _unet(2).to(memory_format=torch.channels_last)
    with network_on(net, CPU) as running:
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(net))
    weights = _conv_weights(net)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert not any(w.is_contiguous() for w in weights)


def test_the_network_stays_usable_by_autograd_after_an_inference_mode_block():
    # converted inside inference mode, the parameters would become inference tensors, and a
    # later saliency's backward pass would fail ("Inference tensors cannot be saved for
    # backward")
    net = _unet(2)
    with torch.inference_mode(), network_on(net, CPU) as running:
        running(torch.rand(1, 3, 32, 32))
    assert not any(p.is_inference() for p in net.parameters())
    with network_on(net, CPU) as running:
        assert not any(p.is_inference() for p in running.parameters())
    net(torch.rand(1, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    from monai.data import MetaTensor

    rgb, _ = make_dermoscopy_photo()
    return MetaTensor(torch.from_numpy(rgb).permute(2, 1, 0).float())


def test_the_bundled_photo_model_predicts_the_same_in_either_layout(photo, monkeypatch):
    bundle = load_model("isic2018-lesion-unet")
    fast = predict(bundle, photo, device="cpu")
    monkeypatch.setattr(inference, "_use_channels_last", lambda net, device: False)
    default = predict(bundle, photo, device="cpu")
    diff = float((fast.probabilities - default.probabilities).abs().max())
    assert diff <= 1e-5, f"probabilities differ by {diff}"
    assert int(default.labels.sum()) > 1000, "nothing segmented: the test would show nothing"
    # float32 rounding may move a pixel that lies on the threshold, no more
    changed = int((fast.labels != default.labels).sum())
    assert changed <= 2, f"{changed} pixels changed label"


def test_grad_cam_gives_the_same_map_in_either_layout(photo):
    from medxai.explain import explain
    from medxai.inference import prepare_input

    bundle = load_model("isic2018-lesion-unet")
    x, _ = prepare_input(bundle, photo)
    default = explain(bundle.network.eval(), x, "gradcam")
    with network_on(bundle.network, CPU) as running:
        fast = explain(running, x, "gradcam")
    assert float(default.abs().max()) > 0, "an empty map would show nothing"
    diff = float((fast - default).abs().max() / default.abs().max())
    assert diff <= 1e-4, f"the maps differ by {diff} of their maximum"


def _count_conversions(monkeypatch) -> list[torch.memory_format]:
    """Every layout conversion :func:`network_on` makes from now on."""
    calls: list[torch.memory_format] = []
    original = inference._memory_format

    def counted(net: torch.nn.Module, fmt: torch.memory_format) -> None:
        calls.append(fmt)
        original(net, fmt)

    monkeypatch.setattr(inference, "_memory_format", counted)
    return calls


def test_blocks_inside_a_held_block_find_the_network_ready_and_leave_it(monkeypatch):
    calls = _count_conversions(monkeypatch)
    net = _unet(2).train()
    with network_on(net, CPU) as held:
        for _ in range(3):
            with network_on(net, CPU) as inner:
                assert inner is held and not inner.training
                assert all(w.is_contiguous(memory_format=torch.channels_last)
                           for w in _conv_weights(inner))
        # still held, in its layout, after the inner blocks ended
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(net))
        # a network put in training mode inside the block is set up again, and given back so
        net.train()
        with network_on(net, CPU) as inner:
            assert not inner.training
        assert net.training
        net.eval()
    assert calls == [torch.channels_last, torch.contiguous_format], calls
    assert all(w.is_contiguous() for w in _conv_weights(net)), "the layout was not given back"
    assert net.training, "the outer block did not give the mode back"
    # the hold ended with its block: a new block sets the network up again
    with network_on(net, CPU):
        pass
    assert len(calls) == 4


def test_segment_of_several_photos_sets_the_network_up_once(tmp_path, monkeypatch):
    from PIL import Image

    from medxai.pipeline import segment

    paths = []
    for seed in (1, 2, 3):
        rgb, _ = make_dermoscopy_photo(160, 120, seed=seed)
        paths.append(tmp_path / f"photo{seed}.png")
        Image.fromarray(rgb).save(paths[-1])
    bundle = load_model("isic2018-lesion-unet")
    calls = _count_conversions(monkeypatch)
    results = segment(paths, bundle, tmp_path / "out", device="cpu", formats=["json"])
    assert len(results) == 3
    assert calls == [torch.channels_last, torch.contiguous_format], calls


def test_a_batch_sets_the_network_up_once_for_all_its_batches(tmp_path, monkeypatch):
    import pydicom

    from medxai.batch import run_batch
    from medxai.pipeline import SegmentOptions
    from medxai.samples import write_dermoscopy_dicom

    for i in range(5):
        rgb, _ = make_dermoscopy_photo(160, 120, seed=i)
        path = write_dermoscopy_dicom(rgb, tmp_path / "export" / f"S{i}" / "IM1.dcm")
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = f"{ds.SeriesInstanceUID}.{i}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{ds.SOPInstanceUID}.{i}"
        ds.save_as(path, enforce_file_format=True)
    calls = _count_conversions(monkeypatch)
    summary = run_batch(tmp_path / "export", tmp_path / "out", model="isic2018-lesion-unet",
                        options=SegmentOptions(device="cpu", formats=["json"]), batch_size=2)
    assert summary.series.get("done") == 5, summary.to_dict()
    # three batches of the network, one set-up
    assert calls == [torch.channels_last, torch.contiguous_format], calls
