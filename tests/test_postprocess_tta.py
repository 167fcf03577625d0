"""Label post-processing (largest component, hole filling) and test-time augmentation views."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from medxai.errors import InputError, ModelError
from medxai.inference import _forward_tta, _tta_views, _unview, _view, tta_mode
from medxai.models.bundle import load_bundle
from medxai.postprocess import postprocess_labels


def _settings(cfg: dict) -> dict:
    """The block of a bundle's inference.json that holds medxai's settings (form 2: "medxai")"""
    return cfg["medxai"] if isinstance(cfg.get("medxai"), dict) else cfg


def _blobs_2d() -> torch.Tensor:
    lab = torch.zeros(1, 40, 30, dtype=torch.uint8)
    lab[0, 5:25, 5:20] = 1          # big square, 300 px
    lab[0, 12:16, 10:13] = 0        # a hole in it
    lab[0, 30:33, 25:28] = 1        # small island, 9 px
    lab[0, 34:38, 2:6] = 2          # another label
    return lab


def test_keep_largest_component_removes_islands_only():
    lab = _blobs_2d()
    out = postprocess_labels(lab, {"keep_largest_component": True})
    assert out.dtype == lab.dtype and out.shape == lab.shape
    assert int((out == 1).sum()) == 300 - 12
    assert int(out[0, 30:33, 25:28].sum()) == 0
    assert int((out == 2).sum()) == 16  # the only component of label 2 stays
    assert torch.equal(lab, _blobs_2d())  # input untouched


def test_fill_holes_fills_enclosed_background_but_not_other_labels():
    lab = _blobs_2d()
    lab[0, 18:20, 8:10] = 2  # label 2 inside the label-1 square: must stay 2
    out = postprocess_labels(lab, {"fill_holes": [1]})
    assert bool((out[0, 12:16, 10:13] == 1).all())
    assert bool((out[0, 18:20, 8:10] == 2).all())
    # background touching the border is not a hole
    assert int(out[0, 0, 0]) == 0


def test_postprocessing_in_3d_and_empty_maps():
    lab = torch.zeros(1, 12, 12, 12, dtype=torch.uint8)
    lab[0, 2:8, 2:8, 2:8] = 1
    lab[0, 4:6, 4:6, 4:6] = 0   # enclosed cavity
    lab[0, 10, 10, 10] = 1      # one-voxel island
    out = postprocess_labels(lab, {"keep_largest_component": True, "fill_holes": True})
    assert int(out.sum()) == 216
    empty = torch.zeros(1, 8, 8, dtype=torch.uint8)
    assert torch.equal(postprocess_labels(empty, {"keep_largest_component": True,
                                                  "fill_holes": True}), empty)
    assert postprocess_labels(lab, None) is lab


def test_unknown_postprocessing_step_is_refused():
    with pytest.raises(ModelError, match="unknown postprocessing"):
        postprocess_labels(_blobs_2d(), {"erode": True})


@pytest.mark.parametrize("mode,count", [("none", 1), ("flips", 3), ("dihedral", 8)])
def test_tta_views_are_inverted_exactly(mode, count):
    x = torch.randn(2, 3, 8, 8)
    views = _tta_views(2, mode)
    assert len(views) == count
    seen = set()
    for v in views:
        y = _view(x, *v)
        assert torch.equal(_unview(y, *v), x)
        seen.add(y.numpy().tobytes())
    assert len(seen) == count  # all distinct symmetries


def test_dihedral_falls_back_to_flips_in_3d():
    assert len(_tta_views(3, "dihedral")) == 4


def test_forward_tta_of_an_equivariant_network_is_its_plain_output():
    net = torch.nn.Conv2d(2, 2, kernel_size=1)  # pointwise: commutes with every view
    x = torch.randn(1, 2, 6, 10)  # not square: turns change the shape
    want = torch.softmax(net(x), 1)
    for mode in ("none", "flips", "dihedral"):
        assert torch.allclose(_forward_tta(net, x, mode), want, atol=1e-6)


def test_tta_mode_reads_old_and_new_bundle_keys():
    assert tta_mode({"tta_flips": True}) == "flips"
    assert tta_mode({}) == "none"
    assert tta_mode({"tta": "dihedral"}) == "dihedral"
    assert tta_mode({"tta": "dihedral"}, "none") == "none"
    with pytest.raises(InputError):
        tta_mode({"tta": "rotate"})


def test_bundle_with_bad_tta_or_postprocessing_is_refused(rgb_bundle, tmp_path):
    for key, value, match in (("inference", {"mode": "whole_image", "tta": "spin"}, "tta"),
                              ("postprocessing", {"dilate": 1}, "postprocessing")):
        bad = tmp_path / key
        shutil.copytree(rgb_bundle.path, bad)
        cfg_path = bad / "configs" / "inference.json"
        cfg = json.loads(cfg_path.read_text())
        _settings(cfg)[key] = value
        cfg_path.write_text(json.dumps(cfg))
        with pytest.raises(ModelError, match=match):
            load_bundle(bad)


def test_predict_applies_the_bundles_postprocessing_to_labels_only(rgb_bundle):
    import copy

    from scipy import ndimage

    from medxai.inference import predict
    from medxai.models.bundle import ModelBundle

    torch.manual_seed(0)
    image = torch.rand(3, 64, 48) * 255
    plain = predict(rgb_bundle, image, device="cpu", tta="none")
    config = copy.deepcopy(rgb_bundle.config)
    config["postprocessing"] = {"keep_largest_component": True, "fill_holes": True}
    bundle = ModelBundle(config=config, metadata=rgb_bundle.metadata,
                         network=rgb_bundle.network, path=rgb_bundle.path)
    post = predict(bundle, image, device="cpu", tta="none")
    assert torch.equal(plain.probabilities, post.probabilities)
    want = postprocess_labels(plain.labels, config["postprocessing"])
    assert torch.equal(post.labels, want)
    assert ndimage.label(post.labels[0].numpy() == 1)[1] <= 1


def _with(bundle, **inference):
    import copy

    from medxai.models.bundle import ModelBundle

    config = copy.deepcopy(bundle.config)
    config["inference"].update(inference)
    return ModelBundle(config=config, metadata=bundle.metadata, network=bundle.network,
                       path=bundle.path)


def test_multi_size_tta_averages_each_size_on_the_input_grid(rgb_bundle):
    from medxai.batch.runner import predict_batch
    from medxai.inference import predict

    torch.manual_seed(1)
    image = torch.rand(3, 70, 50) * 255
    base = list(rgb_bundle.preprocessing["spatial_size"])
    bigger = [v + 16 for v in base]
    multi = _with(rgb_bundle, tta="flips", tta_sizes=[bigger])
    one = predict(_with(rgb_bundle, tta="flips"), image, device="cpu")
    cfg_big = _with(rgb_bundle, tta="flips")
    cfg_big.config["preprocessing"]["spatial_size"] = bigger
    other = predict(cfg_big, image, device="cpu")
    both = predict(multi, image, device="cpu")
    assert torch.allclose(both.probabilities, (one.probabilities + other.probabilities) / 2,
                          atol=1e-6)
    assert not torch.allclose(one.probabilities, other.probabilities, atol=1e-4)
    # tta="none" means one pass at the bundle's size
    single = predict(multi, image, device="cpu", tta="none")
    plain = predict(rgb_bundle, image, device="cpu", tta="none")
    assert torch.equal(single.probabilities, plain.probabilities)
    # the batch path gives the same result
    batched = predict_batch(multi, [image, image.flip(1)], device="cpu")
    assert torch.allclose(batched[0].probabilities, both.probabilities, atol=1e-5)
    assert torch.equal(batched[0].labels, both.labels)


def test_bad_tta_sizes_are_refused(rgb_bundle, tmp_path):
    bad = tmp_path / "b"
    shutil.copytree(rgb_bundle.path, bad)
    cfg_path = bad / "configs" / "inference.json"
    cfg = json.loads(cfg_path.read_text())
    _settings(cfg)["inference"]["tta_sizes"] = [[224]]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="tta_sizes"):
        load_bundle(bad)


def test_threshold_of_a_binary_bundle_sets_the_foreground_cut(rgb_bundle):
    from medxai.batch.runner import predict_batch
    from medxai.inference import predict

    torch.manual_seed(2)
    image = torch.rand(3, 60, 44) * 255
    plain = predict(rgb_bundle, image, device="cpu", tta="none")
    fg = plain.probabilities[1]
    cut = float(fg.median())  # half the pixels on each side: the cut must move the labels
    low = predict(_with(rgb_bundle, threshold=cut), image, device="cpu", tta="none")
    assert torch.equal(low.probabilities, plain.probabilities)
    assert torch.equal(low.labels[0], (fg > cut).to(torch.uint8))
    assert not torch.equal(low.labels, plain.labels)
    half = predict(_with(rgb_bundle, threshold=0.5), image, device="cpu", tta="none")
    assert torch.equal(half.labels, plain.labels)  # 0.5 is the argmax
    batched = predict_batch(_with(rgb_bundle, threshold=cut, tta="none"), [image], device="cpu")
    assert torch.equal(batched[0].labels, low.labels)


@pytest.mark.parametrize("value,match", [(1.5, "between 0 and 1"), ("0.4", "between 0 and 1"),
                                         (True, "between 0 and 1"), (0.4, "output channels")])
def test_bad_thresholds_are_refused(rgb_bundle, tmp_path, value, match):
    bad = tmp_path / "b"
    shutil.copytree(rgb_bundle.path, bad)
    cfg_path = bad / "configs" / "inference.json"
    cfg = json.loads(cfg_path.read_text())
    _settings(cfg)["inference"]["threshold"] = value
    if match == "output channels":  # checked before the weights load
        cfg["network_def"]["out_channels"] = 3
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=match):
        load_bundle(bad)


def _hippocampus_with(tmp_path, **inference):
    from medxai.models.registry import resolve_model

    dst = tmp_path / "hippo"
    shutil.copytree(resolve_model("hippocampus-unet"), dst)
    cfg_path = dst / "configs" / "inference.json"
    cfg = json.loads(cfg_path.read_text())
    _settings(cfg)["inference"].update(inference)
    cfg_path.write_text(json.dumps(cfg))
    return dst


def test_sliding_window_tta_over_named_axes_is_equivariant(tmp_path):
    """LR-mirror TTA of the sliding-window hippocampus model: two passes (identity and the
    left-right mirror of the model grid), and the averaged prediction of a mirrored input is
    exactly the mirrored prediction (what one mirror-averaged model must satisfy)."""
    from monai.data import MetaTensor

    from medxai.inference import predict

    plain = load_bundle(_hippocampus_with(tmp_path / "a", tta="none"))
    lr = load_bundle(_hippocampus_with(tmp_path / "b", tta="flips", tta_axes=[0]))
    assert lr.contract.inference.tta_axes == (0,) and plain.contract.inference.tta == "none"
    gen = torch.Generator().manual_seed(0)
    vol = torch.rand((1, 40, 56, 40), generator=gen)
    img = MetaTensor(vol, affine=torch.eye(4))
    mirrored = MetaTensor(vol.flip(1), affine=torch.eye(4))
    seen = []
    p = predict(lr, img, device="cpu", each_view=lambda i, prob: seen.append(prob))
    assert p.tta == "flips" and len(seen) == 2
    torch.testing.assert_close(p.probabilities, (seen[0] + seen[1]) / 2)
    q = predict(lr, mirrored, device="cpu")
    torch.testing.assert_close(q.probabilities, p.probabilities.flip(1), atol=1e-5, rtol=0)
    # without TTA the network alone is not mirror-equivariant, so the check above means something
    a = predict(plain, img, device="cpu").probabilities
    b = predict(plain, mirrored, device="cpu").probabilities
    assert float((b - a.flip(1)).abs().max()) > 1e-3


@pytest.mark.parametrize("axes", [[3], [], "0", [0.5]])
def test_bad_tta_axes_are_refused(tmp_path, axes):
    with pytest.raises(ModelError, match="tta_axes"):
        load_bundle(_hippocampus_with(tmp_path, tta="flips", tta_axes=axes))
