"""The saliency's forward pass is the prediction's identity test-time augmentation view
(:func:`medxai.pipeline.saliency_forward`, :class:`medxai.explain.KeptForward`): the same maps
and the same prediction as with a forward pass of its own, one network pass fewer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medxai.inference import predict, predict_batch
from medxai.io.readers import load_image
from medxai.models.bundle import load_bundle
from medxai.pipeline import SegmentOptions, saliency_forward, saliency_maps, segment_loaded
from tests.conftest import ROOT
from tests.fixtures_pacs import make_test_bundle

CPU = torch.device("cpu")
PHOTO = ROOT / "sample_data" / "dermoscopy.dcm"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory):
    # the batch test bundle's hand-set weights give Grad-CAM++ an all-zero map (its gradients
    # are negative at the default layer): seeded random weights make every method's map non-empty
    bundle = load_bundle(make_test_bundle(tmp_path_factory.mktemp("reuse") / "model"))
    torch.manual_seed(3)
    for module in bundle.network.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return bundle


def _count_forwards(net: torch.nn.Module) -> tuple[list[int], object]:
    calls: list[int] = []
    handle = net.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "hirescam", "layercam"])
@pytest.mark.parametrize("target", ["segment", "border"])
def test_kept_forward_gives_todays_map_and_prediction(bundle, method, target) -> None:
    loaded = load_image(PHOTO)
    opts = SegmentOptions(explain=method, explain_target=target, device="cpu")
    calls, handle = _count_forwards(bundle.network)
    try:
        before = predict(bundle, loaded.image, device=CPU)
        n_predict = len(calls)
        maps_before = saliency_maps(bundle, loaded, opts, CPU, before)
        n_before = len(calls)
        kept = saliency_forward(bundle, opts, CPU)
        assert kept is not None
        after = predict(bundle, loaded.image, device=CPU, identity_forward=kept)
        maps_after = saliency_maps(bundle, loaded, opts, CPU, after, kept)
        n_after = len(calls) - n_before
    finally:
        handle.remove()
    assert n_predict == 3 and n_before == 4  # flips TTA: 3 views, then Grad-CAM's own pass
    assert n_after == 3  # the saliency ran no forward pass of its own
    assert torch.equal(before.probabilities, after.probabilities)
    assert torch.equal(before.labels, after.labels)
    assert maps_before.keys() == maps_after.keys() == {1}
    assert torch.equal(maps_before[1], maps_after[1])
    assert 0.9 < float(maps_after[1].max()) <= 1.0  # normalised, then resized back


def test_kept_forward_of_a_batch_gives_each_images_map(bundle, tmp_path: Path) -> None:
    from medxai.samples import make_dermoscopy_photo, write_dermoscopy_dicom

    loaded = []
    for i, (w, h) in enumerate([(48, 40), (64, 48), (40, 56)]):
        rgb, _ = make_dermoscopy_photo(w, h, seed=20 + i)
        loaded.append(load_image(write_dermoscopy_dicom(rgb, tmp_path / f"p{i}.dcm")))
    opts = SegmentOptions(explain="gradcam", device="cpu")
    kept = saliency_forward(bundle, opts, CPU)
    preds = predict_batch(bundle, [x.image for x in loaded], device=CPU, identity_forward=kept)
    for i, (img, pred) in enumerate(zip(loaded, preds)):
        alone = saliency_maps(bundle, img, opts, CPU, pred)
        reused = saliency_maps(bundle, img, opts, CPU, pred, kept, i)
        assert reused[1].shape == (1, *img.image.shape[1:])
        np.testing.assert_allclose(reused[1].numpy(), alone[1].numpy(), atol=1e-5)
    kept.release()
    assert not kept.ran


def test_segment_loaded_reuses_the_identity_view(bundle, tmp_path: Path) -> None:
    loaded = load_image(PHOTO)
    opts = SegmentOptions(explain="gradcam", device="cpu", formats=["nifti", "json"])
    calls, handle = _count_forwards(bundle.network)
    try:
        res = segment_loaded(loaded, bundle, tmp_path, opts, name="reuse")
    finally:
        handle.remove()
    assert len(calls) == 3  # the 3 TTA views; Grad-CAM ran backward only
    assert res.report["saliency"]["method"] == "gradcam"
    reference = saliency_maps(bundle, loaded, opts, CPU, predict(bundle, loaded.image, device=CPU))
    import nibabel as nib

    written = np.asarray(nib.load(tmp_path / "reuse" / "saliency_lesion.nii.gz").dataobj)
    np.testing.assert_allclose(written[..., 0] if written.ndim == 3 else written,
                               reference[1][0].numpy().reshape(written.shape[:2]), atol=1e-4)


@pytest.mark.parametrize(
    "options, device",
    [
        ({"explain": "smoothgrad"}, "cpu"),  # no forward pass to share
        ({"explain": "gradcam", "explain_target": "missed"}, "cpu"),  # needs the prediction
        ({"explain": "gradcam", "explain_roi": (0, 0, 8, 8)}, "cpu"),
        ({"explain": None}, "cpu"),
        ({"explain": "gradcam"}, "cuda"),  # the prediction runs in mixed precision there
    ],
)
def test_saliency_forward_only_where_the_map_is_the_same(bundle, options, device) -> None:
    assert saliency_forward(bundle, SegmentOptions(**options), torch.device(device)) is None


class _InPlaceNet(torch.nn.Module):
    """Two convolutions, the first followed by an in-place ReLU, then a 2-class head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.act = torch.nn.ReLU(inplace=True)
        self.b = torch.nn.Conv2d(6, 6, 3, padding=1)
        self.head = torch.nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.act(self.a(x))))


def _recorded_convolutions(out: torch.Tensor) -> int:
    seen, todo, n = set(), [out.grad_fn], 0
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        n += type(node).__name__ == "ConvolutionBackward0"
        todo.extend(f for f, _ in node.next_functions)
    return n


@pytest.mark.parametrize("layer", ["a", "b", "a,b"])
def test_kept_forward_records_from_the_layers_on_and_gives_the_methods_maps(layer: str) -> None:
    """The kept pass starts its graph at the hooked layers (nothing before them is recorded:
    the first convolution's input needs no gradient) and still gives seg_grad_cam's maps, with
    an in-place operation right after a hooked layer and one hooked layer after another."""
    from medxai.explain import KeptForward, seg_grad_cam

    net = _InPlaceNet().eval()
    x = torch.rand(2, 3, 16, 16)
    kept = KeptForward(net, layer)
    logits = kept(x)
    assert torch.equal(logits, net(x).detach())
    # the graph holds no node of what runs before the first hooked layer: the convolutions
    # recorded are those after it (3 when the whole pass is recorded)
    assert _recorded_convolutions(kept._logits) == {"a": 2, "b": 1, "a,b": 2}[layer]
    got = kept.saliency("gradcam", 1)
    want = seg_grad_cam(net, x, 1, layer=layer)
    assert torch.equal(got, want)
