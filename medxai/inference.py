"""Device choice, whole-image and sliding-window prediction, inversion to the input grid.

The prediction of a bundle's network for an image read by :func:`medxai.read_image` comes back on
the image's own grid: class probabilities ``(K, *spatial)`` and a label map ``(1, *spatial)``,
with the input's affine.
"""

from __future__ import annotations

import contextlib
import math
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medxai.choices import DEVICE_CHOICES, TTA_CHOICES
from medxai.errors import InputError, ModelError, ModelMismatchError
from medxai.preprocessing.model_grid import (
    ModelGrid,
    bundle_model_grid,
    from_model_grid,
    to_model_grid,
)

__all__ = [
    "resolve_device",
    "autocast_context",
    "Prediction",
    "predict",
    "predict_batch",
    "labels_from_foreground",
    "foreground_labeller",
    "view_blocks",
    "sliding_window_logits",
    "check_input_fits",
    "ModelRunner",
    "MedxaiRunner",
    "MonaiRunner",
    "runner_for",
    "Prepared",
    "prepare_input",
    "restore_output",
]


#: ``each_view(i, prob)``: sees the ``(K, *spatial)`` probabilities of one test-time
#: augmentation view of image ``i`` on its own grid. A hook with ``takes_foreground`` true
#: also has ``foreground(i, fg)``: whole-image predictions of a two-class model then hand it
#: the ``(1, *spatial)`` foreground probability alone (half the work of bringing every view
#: back; :class:`medxai.uncertainty.ViewCollector`).
EachView = Callable[[int, torch.Tensor], None]
#: At most this many bytes of test-time augmentation views are brought back onto an image's
#: grid in one inversion (an image's views go together: one MONAI inversion instead of one per
#: view; 8 foreground views of a 512x512 photo are 8 MiB).
VIEW_BLOCK_BYTES = 64 << 20
#: ``identity_forward(x)``: the logits of the network for the identity view ``x``
#: ``(N, C, *spatial)`` of the model's own input size, run in place of the network (e.g.
#: :class:`medxai.explain.KeptForward`, which keeps the pass for the saliency's backward pass).
IdentityForward = Callable[[torch.Tensor], torch.Tensor]


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda[:N]|mps`` into a device; ``auto`` prefers CUDA, then MPS, then CPU.

    Raises:
        InputError: the spec is unknown or names a device this machine does not have.
    """
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError as exc:
        raise InputError(f"unknown device {spec!r}", hint=f"use one of {DEVICE_CHOICES}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                "CUDA was asked for but no CUDA device is available",
                hint="use --device cpu, or install a CUDA build of torch",
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(
                f"{spec} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif dev.type == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise InputError("MPS was asked for but is not available here", hint="use --device cpu")
    elif dev.type != "cpu":
        raise InputError(f"unsupported device {spec!r}", hint=f"use one of {DEVICE_CHOICES}")
    return dev


def autocast_context(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision (float16 autocast) on CUDA; nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


@dataclass
class Prediction:
    """A segmentation on the input's grid.

    Attributes:
        probabilities: ``(K, *spatial)`` float32 softmax scores, K = number of labels incl. 0.
        labels: ``(1, *spatial)`` uint8 label map (argmax, or the bundle's ``threshold`` for a
            binary model; then the bundle's post-processing).
        affine: the input's 4x4 RAS affine (MONAI convention).
        seconds: wall time of the forward passes (and their inversion).
        tta: the test-time augmentation used (``none``, ``flips``, ``dihedral``).
        segments: ``(N, *spatial)`` bool overlapping segments, one per foreground label in
            order of value, when a MONAI bundle's postprocessing folds overlapping binary
            channels into the label map (BraTS); written as overlapping DICOM SEG segments.
        grid: a whole-image prediction's :class:`~medxai.preprocessing.model_grid.ModelGrid` of
            the model's own input size (what :func:`restore_output` needs to bring other maps
            of that grid, e.g. a saliency map, back onto the input without preparing the image
            again); None for other predictions.
    """

    probabilities: torch.Tensor
    labels: torch.Tensor
    affine: torch.Tensor
    seconds: float
    tta: str = "none"
    segments: torch.Tensor | None = None
    grid: ModelGrid | None = field(default=None, repr=False, compare=False)


def tta_mode(inference: dict[str, Any], override: str | None = None) -> str:
    """The test-time augmentation a bundle's ``inference`` section asks for (``tta``, or the
    older ``tta_flips: true``), unless ``override`` names one of :data:`TTA_CHOICES`."""
    mode = override or inference.get("tta") or ("flips" if inference.get("tta_flips") else "none")
    if mode not in TTA_CHOICES:
        raise InputError(
            f"unknown test-time augmentation {mode!r}", hint=f"use one of {', '.join(TTA_CHOICES)}"
        )
    return mode


def _tta_views(
    spatial_dims: int, mode: str, axes: Sequence[int] | None = None
) -> list[tuple[int, tuple[int, ...], bool]]:
    """The views as ``(quarter turns in the first two spatial axes, flipped axes, transposed)``.

    ``flips``: the identity and one flip per spatial axis (only the model-grid axes in ``axes``
    when given: e.g. ``(0,)``, left-right in RAS, for a model whose labels mean anterior and
    posterior). ``dihedral`` (2D only): the 8 symmetries of the square (4 quarter turns, with
    and without a transpose) - for models trained with 90-degree turns and flips, as medxai
    trains pictures.
    """
    if mode == "none":
        return [(0, (), False)]
    if mode == "flips" or spatial_dims != 2:
        flipped = range(spatial_dims) if axes is None else axes
        return [(0, (), False)] + [(0, (2 + int(d),), False) for d in flipped]
    return [(k, (), t) for t in (False, True) for k in range(4)]


def _view(x: torch.Tensor, k: int, flips: tuple[int, ...], transpose: bool) -> torch.Tensor:
    if transpose:
        x = x.transpose(2, 3)
    if k:
        x = torch.rot90(x, k, (2, 3))
    return x.flip(flips) if flips else x


def _unview(x: torch.Tensor, k: int, flips: tuple[int, ...], transpose: bool) -> torch.Tensor:
    if flips:
        x = x.flip(flips)
    if k:
        x = torch.rot90(x, -k, (2, 3))
    return x.transpose(2, 3) if transpose else x


def check_input_fits(bundle: Any, image: torch.Tensor, source: str | None = None) -> None:
    """Raise :class:`ModelMismatchError` when ``image`` (C, *spatial) cannot go to ``bundle``
    (its runner's :meth:`~ModelRunner.check_input`: a MONAI bundle whose own preprocessing
    makes the network's channels from the input's fits, e.g. ``RepeatChanneld``)."""
    runner_for(bundle).check_input(image, source)


def _check_medxai_input(bundle: Any, image: torch.Tensor, source: str | None = None) -> None:
    """:func:`check_input_fits` of medxai's own form: dimensions, channels."""
    meta = getattr(image, "meta", {}) or {}
    spatial = tuple(image.shape[1:])
    want_dims = bundle.spatial_dims
    effective_dims = sum(1 for s in spatial if s > 1) if want_dims == 2 else len(spatial)
    if want_dims == 2 and len(spatial) == 3 and spatial[2] > 1:
        raise ModelMismatchError(
            f"model {bundle.name!r} segments 2D {_channels_word(bundle.in_channels)} pictures, but "
            f"this input is a volume of {spatial[0]}x{spatial[1]}x{spatial[2]} voxels "
            f"(modality {meta.get('modality', 'unknown')})",
            path=source,
            hint="choose a 3D model with --model (see `medxai models`)",
        )
    if want_dims == 3 and (len(spatial) < 3 or effective_dims < 3):
        raise ModelMismatchError(
            f"model {bundle.name!r} segments 3D volumes, but this input is a 2D image "
            f"{'x'.join(map(str, spatial))}",
            path=source,
            hint="choose a 2D model with --model (see `medxai models`)",
        )
    if image.shape[0] != bundle.in_channels:
        raise ModelMismatchError(
            f"model {bundle.name!r} expects {_channels_word(bundle.in_channels)} input "
            f"({bundle.in_channels} channel(s)), this input has {image.shape[0]}",
            path=source,
            hint="choose a model made for this kind of image",
        )


def _channels_word(n: int) -> str:
    return {1: "greyscale", 3: "RGB colour"}.get(n, f"{n}-channel")


def _squeeze_to_model_dims(image: torch.Tensor, spatial_dims: int) -> tuple[torch.Tensor, bool]:
    """A 2D model takes ``(C, I, J)``; a single-slice ``(C, I, J, 1)`` input is squeezed."""
    if spatial_dims == 2 and image.ndim == 4:
        return image[..., 0], True
    return image, False


def _forward_tta(
    net: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    mode: str,
    each: Callable[[torch.Tensor], None] | None = None,
    axes: Sequence[int] | None = None,
    identity: IdentityForward | None = None,
) -> torch.Tensor:
    """Softmax of ``net(x)`` averaged over the test-time augmentation views of ``mode``
    (see :func:`_tta_views`); ``x`` is ``(N, C, *spatial)``. ``each`` sees every view's
    softmax, brought back to ``x``'s orientation; ``identity``, when given, runs the identity
    view instead of ``net``."""
    total = None
    views = _tta_views(x.ndim - 2, mode, axes)
    for view in views:
        run = identity if identity is not None and view == (0, (), False) else net
        prob = _unview(torch.softmax(run(_view(x, *view)).float(), dim=1), *view)
        if each is not None:
            each(prob)
        total = prob if total is None else total + prob
    assert total is not None
    return total / len(views)


def tta_sizes(bundle: Any, tta: str) -> list[Sequence[int] | None]:
    """Input sizes of a whole-image model's passes: ``None`` (the bundle's ``spatial_size``) and,
    unless ``tta`` is ``none``, the extra sizes of ``inference.tta_sizes`` (multi-scale TTA)."""
    extra = bundle.contract.inference.tta_sizes
    if tta == "none" or bundle.contract.inference.mode != "whole_image":
        return [None]
    return [None] + [[int(v) for v in size] for size in extra]


#: :func:`prepare_input`'s result: the model-ready tensor and its :class:`ModelGrid`
Prepared = tuple[torch.Tensor, ModelGrid]


def prepare_input(bundle: Any, image: torch.Tensor, size: Sequence[int] | None = None) -> Prepared:
    """Model-ready ``(1, C, *spatial)`` float tensor for ``image`` and the
    :class:`~medxai.preprocessing.model_grid.ModelGrid` that :func:`restore_output` inverts.

    Intensity normalised as ``preprocessing.intensity`` says, then the bundle's model-grid chain
    of MONAI invertible transforms (:func:`medxai.preprocessing.bundle_model_grid`):
    whole-image models resized to ``preprocessing.spatial_size`` (or ``size``); sliding-window
    models (3D) reoriented to RAS and resampled to ``preprocessing.spacing`` when the bundle
    gives one.
    """
    from medxai.preprocessing.intensity import ScaleIntensityFromBundle

    intensity = ScaleIntensityFromBundle(bundle.contract.grid.intensity)
    x, grid = to_model_grid(bundle_model_grid(bundle, size), image, intensity)
    return x[None].float(), grid


def restore_output(prob: torch.Tensor, state: ModelGrid) -> torch.Tensor:
    """Bring ``(K, *model_spatial)`` class scores back onto the input's grid (MONAI's inverse of
    the model-grid chain that :func:`prepare_input` ran)."""
    return from_model_grid(prob, state)


def _argmax_channels(prob: torch.Tensor) -> torch.Tensor:
    """``prob.argmax(0, keepdim=True)`` as uint8, by a running maximum over the few classes:
    the same labels (first maximum wins on ties) but 10-15x faster on the CPU than torch's
    argmax over the outer axis (benchmarks/bench_argmax.py)."""
    best = prob[0].clone()
    labels = torch.zeros(prob.shape[1:], dtype=torch.uint8)
    for k in range(1, prob.shape[0]):
        better = prob[k] > best
        labels[better] = k
        torch.maximum(best, prob[k], out=best)
    return labels[None]


#: networks held by an open :func:`network_on` block, with its device: a block inside it finds
#: the network ready (eval mode, on the device, in its layout) and leaves it as it is
_HELD: weakref.WeakKeyDictionary[torch.nn.Module, torch.device] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def network_on(net: torch.nn.Module, device: torch.device) -> Iterator[torch.nn.Module]:
    """``net`` in eval mode on ``device`` for the block, in the memory layout it runs fastest
    in there (:func:`_use_channels_last`); its mode, device and layout are restored after, also
    when the block raises.

    A caller that runs the network for many images (``medxai batch``'s pipeline, ``segment``
    with one model) holds it in one outer block: the blocks of each prediction inside it then
    cost nothing, where each would otherwise convert the layout there and back (about 5 ms of
    CPU for the bundled photo model) and walk every module twice (about 1 ms)."""
    if _HELD.get(net) == device and not net.training and _on(net, device):
        yield net
        return
    was_training = net.training
    first = next(net.parameters(), None)
    original_device = first.device if first is not None else torch.device("cpu")
    channels_last = outer = False
    try:
        net.eval()
        _move(net, device)
        channels_last = _use_channels_last(net, device)
        if channels_last:
            _memory_format(net, torch.channels_last)
        outer = net not in _HELD
        if outer:
            _HELD[net] = device
        yield net
    finally:
        if outer:
            _HELD.pop(net, None)
        if channels_last:
            _memory_format(net, torch.contiguous_format)
        net.train(was_training)
        _move(net, original_device)


def _on(net: torch.nn.Module, device: torch.device) -> bool:
    """Whether ``net``'s first parameter is on ``device`` (a held network moved away inside its
    block is set up again)."""
    first = next(net.parameters(), None)
    if first is None or first.device == device:
        return True
    # "cuda" (no index) is where .to("cuda") put it
    return device.index is None and first.device.type == device.type


def _use_channels_last(net: torch.nn.Module, device: torch.device) -> bool:
    """Whether ``net`` runs in the channels-last memory format here: a 2D MONAI ``UNet`` (the
    bundled models' network) on the CPU, stored channels-first. oneDNN's convolutions take the
    channels innermost: the bundled 2D U-Nets' forward passes take 10-16 % less CPU time, with
    a backward pass 6-13 % less (``benchmarks/bench_channels_last.py``). Other networks keep
    their layout: one whose forward pass reshapes its activations with ``view`` fails on
    channels-last tensors, and the bundled 3D U-Net's prediction took 14 % longer in
    ``channels_last_3d``; a network the caller stored channels-last is left as it is."""
    from monai.networks.nets import UNet

    if device.type != "cpu" or type(net) is not UNet or getattr(net, "dimensions", 0) != 2:
        return False
    return not any(
        w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
        for w in (m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    )


def _memory_format(net: torch.nn.Module, fmt: torch.memory_format) -> None:
    """``net``'s 4D parameters and buffers in ``fmt`` (the same values; the layout alone
    changes). Outside inference mode, so that the parameters stay usable by autograd (a
    saliency's backward pass) after an inference-mode block converted them."""
    with torch.inference_mode(False), torch.no_grad():
        net.to(memory_format=fmt)  # type: ignore[call-overload]  # documented; not in the stub


def _move(net: torch.nn.Module, device: torch.device) -> None:
    """``net.to(device)``, skipped when every parameter and buffer is there already (``to``
    walks every module: a few ms per call of a UNet, once per image in ``segment``)."""
    # one walk over the modules' own tensors (parameters() and buffers() walk them twice)
    found = False
    for module in net.modules():
        for t in (*module._parameters.values(), *module._buffers.values()):
            if t is None:
                continue
            if t.device != device:
                net.to(device)
                return
            found = True
    if not found:
        net.to(device)


def whole_image_probabilities(
    bundle: Any,
    images: Sequence[torch.Tensor],
    device: torch.device,
    tta: str,
    each_view: EachView | None = None,
    identity_forward: IdentityForward | None = None,
    grids: list[ModelGrid] | None = None,
    prepared: Sequence[Prepared | None] | None = None,
) -> list[torch.Tensor]:
    """``(K, *spatial)`` probabilities of a whole-image model for each image, on its own grid.

    The images go through the network together (one batch per input size), with the ``tta``
    views; with the bundle's ``tta_sizes`` (multi-scale TTA) each size's probabilities are
    brought back to the image's grid and averaged there. The network must already be in eval
    mode on ``device`` (:func:`network_on`). ``each_view(i, prob)``, when given, sees every
    view (every size and augmentation) of image ``i`` on its grid (the uncertainty samples).
    ``identity_forward``, when given, runs the identity view of the model's own size (the
    batch of all images) in place of the network. ``grids``, when given, gets each image's
    :class:`ModelGrid` of the model's own input size. ``prepared``, when given, holds an image's
    :func:`prepare_input` for the model's own size where it was made already (e.g. by a batch's
    decode thread), None where not.
    """
    net = bundle.network
    passes = []  # per input size: (probabilities (N, K, ...), undo states)
    with torch.inference_mode(), autocast_context(device):
        for size in tta_sizes(bundle, tta):
            ready = prepared if size is None and prepared is not None else [None] * len(images)
            inputs = [
                pre if pre is not None else prepare_input(bundle, img, size)
                for img, pre in zip(images, ready, strict=True)
            ]
            x = torch.cat([p[0] for p in inputs])
            states = [p[1] for p in inputs]
            # each image's views on the model grid, brought back together after the passes
            kept: list[list[torch.Tensor]] = [[] for _ in images]
            hook = None
            if each_view is not None:

                def hook(prob: torch.Tensor, kept: list[list[torch.Tensor]] = kept) -> None:
                    for i, views in enumerate(kept):
                        views.append(prob[i])

            axes = bundle.contract.inference.tta_axes
            identity = identity_forward if size is None else None
            probs = _forward_tta(net, x.to(device), tta, hook, axes, identity).float().cpu()
            passes.append((probs, states))
            if grids is not None and size is None:
                grids.extend(states)
            if each_view is not None:
                for i, views in enumerate(kept):
                    _hand_views(each_view, i, views, states[i], images[i])
                    views.clear()
    out = []
    for i in range(len(images)):
        prob = restore_output(passes[0][0][i], passes[0][1][i])
        for p, states in passes[1:]:
            prob = prob + restore_output(p[i], states[i])
        out.append(prob / len(passes) if len(passes) > 1 else prob)
    return out


def _hand_views(
    each_view: EachView, i: int, views: list[torch.Tensor], state: ModelGrid, image: torch.Tensor
) -> None:
    """``views`` (each ``(K, *model_spatial)``) of image ``i`` back onto its grid, handed to
    ``each_view`` in order. Every class: one inversion per view, as the prediction's own. Only
    the foreground channel of a two-class model, when the hook takes it: the views go back
    together, in blocks of at most :data:`VIEW_BLOCK_BYTES` (one MONAI inversion per block),
    which gives each view the values of its own inversion: the resize treats each channel
    alone, except that torch's 2D CPU kernel takes another path for exactly three channels, so
    no block has three (:func:`view_blocks`)."""
    if not views:
        return
    foreground = bool(getattr(each_view, "takes_foreground", False)) and views[0].shape[0] == 2
    if not foreground:
        for v in views:
            each_view(i, restore_output(v.float().cpu(), state))
        return
    view_bytes = max(1, math.prod(int(n) for n in image.shape[1:]) * 4)
    start = 0
    for size in view_blocks(len(views), VIEW_BLOCK_BYTES // view_bytes):
        block = torch.cat([v[1:2].float().cpu() for v in views[start : start + size]])
        restored = restore_output(block, state)
        for j in range(size):
            each_view.foreground(i, restored[j : j + 1])  # type: ignore[attr-defined]
        start += size


def view_blocks(n: int, most: int) -> list[int]:
    """Sizes of blocks of at most ``most`` (at least 1) of ``n`` one-channel views, none of
    exactly three (torch's bilinear resize takes another path for three channels, whose values
    differ in the last bit: measured on torch 2.13 for 1..8 channels and five photo sizes)."""
    most = max(1, most)
    sizes = []
    while n > 0:
        size = min(most, n)
        size = 2 if size == 3 else size
        sizes.append(size)
        n -= size
    return sizes


def labels_from_probabilities(bundle: Any, prob: torch.Tensor) -> torch.Tensor:
    """The ``(1, *spatial)`` uint8 label map of ``(K, *spatial)`` probabilities, then the bundle's
    post-processing. The label map is the argmax, or, for a binary bundle with
    ``inference.threshold`` t, the foreground where its probability exceeds t (t = 0.5 is the
    argmax)."""
    from medxai.postprocess import postprocess_labels

    threshold = bundle.contract.inference.threshold
    if threshold is not None and prob.shape[0] == 2:
        return labels_from_foreground(bundle, prob[1:2])
    return postprocess_labels(_argmax_channels(prob), dict(bundle.contract.clean_up))


def labels_from_foreground(bundle: Any, foreground: torch.Tensor) -> torch.Tensor:
    """The label map of a binary bundle with ``inference.threshold`` t from its ``(1,
    *spatial)`` foreground probability alone: the foreground where it exceeds t, then the
    bundle's post-processing (:func:`labels_from_probabilities` of both channels).

    Raises:
        ModelError: the bundle has no threshold (its label map is the argmax of every class).
    """
    return foreground_labeller(bundle)(foreground)


def foreground_labeller(bundle: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """:func:`labels_from_foreground` for ``bundle`` as a function of the foreground alone, with
    the bundle's threshold and post-processing read once (for the test-time augmentation
    views: ``bundle.contract`` is parsed on each access)."""
    from medxai.postprocess import mask_clean_up

    spec = bundle.contract
    threshold = spec.inference.threshold
    if threshold is None:
        raise ModelError(
            f"model {bundle.name!r} has no foreground threshold; its label map needs every "
            "class's probability"
        )
    # the clean-up of the one foreground value, on the thresholded mask itself (the label map
    # postprocess_labels gives, without its passes over a uint8 copy: nine maps per photo)
    clean_up = mask_clean_up(dict(spec.clean_up), 1)

    def labels(foreground: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(clean_up(_above(foreground[0], threshold)))[None]

    return labels


def _above(t: torch.Tensor, threshold: float) -> np.ndarray:
    """``(t > threshold).numpy()``: by numpy for a CPU float32/float64 tensor (8x faster than
    torch's comparison on one thread), the threshold cast to the tensor's type first, as torch
    casts a Python scalar."""
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and not t.requires_grad:
        a = t.numpy()
        return np.greater(a, a.dtype.type(threshold))
    return (t > threshold).cpu().numpy()


def predict(
    bundle: Any,
    image: torch.Tensor,
    *,
    device: str | torch.device = "auto",
    roi_size: Sequence[int] | None = None,
    overlap: float | None = None,
    sw_batch_size: int | None = None,
    tta: str | None = None,
    source: str | None = None,
    each_view: EachView | None = None,
    identity_forward: IdentityForward | None = None,
) -> Prediction:
    """Segment ``image`` (``(C, I, J[, K])`` from :func:`medxai.read_image`) with ``bundle``.

    Whole-image models resize the picture to the model's size and the probabilities back
    (bilinear, before the argmax). Sliding-window models run MONAI's
    ``sliding_window_inference`` with gaussian blending; windows go to ``device`` and are
    stitched on the CPU, so device memory holds only ``sw_batch_size`` windows. The bundle's
    roi size, overlap, batch size and test-time augmentation (``tta``: ``none``, ``flips`` or
    ``dihedral``, whole-image mode) are used unless given here. The label map gets the bundle's
    ``postprocessing`` (:mod:`medxai.postprocess`); the probabilities are the network's.
    ``each_view(0, prob)`` sees each test-time augmentation view on the input grid
    (whole-image models; :mod:`medxai.uncertainty`). ``identity_forward`` runs the identity
    view of a whole-image model in place of the network (see :func:`predict_batch`).

    Returns:
        a :class:`Prediction` on the input's grid (same spatial shape and affine).
    """
    return runner_for(bundle).predict(
        image,
        resolve_device(device),
        window=(roi_size, overlap, sw_batch_size),
        tta=tta,
        source=source,
        each_view=each_view,
        identity_forward=identity_forward,
    )


def sliding_window_logits(
    bundle: Any,
    net: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    dev: torch.device,
    window: tuple[Sequence[int], float | None, int | None],
) -> torch.Tensor:
    """Logits of ``net`` over ``x`` (``(1, C, *spatial)`` on the model grid) by MONAI's
    ``sliding_window_inference``: ``window`` is (roi size, overlap, windows per pass; None for
    the bundle's own), the bundle's blending, windows on ``dev``, stitched on the CPU."""
    from monai.inferers import sliding_window_inference

    roi, overlap, sw_batch_size = window
    spec = bundle.contract.inference
    logits = sliding_window_inference(
        x,
        roi_size=list(roi),
        sw_batch_size=int(sw_batch_size or spec.sw_batch_size),
        predictor=net,
        overlap=float(overlap if overlap is not None else spec.overlap),
        mode=spec.blend_mode,
        sw_device=dev,
        device=torch.device("cpu"),
        progress=False,
    )
    # a segmentation network has one output head: MONAI gives back a tensor
    assert isinstance(logits, torch.Tensor)
    return logits


def _predict_sliding_window(
    bundle: Any,
    image: torch.Tensor,
    dev: torch.device,
    window: tuple[Sequence[int] | None, float | None, int | None],
    tta: str = "none",
    each_view: EachView | None = None,
) -> Prediction:
    """:func:`predict` for a sliding-window model: ``window`` is (roi size, overlap, windows
    per pass), each None for the bundle's own. With test-time augmentation (``flips``, over
    the bundle's ``tta_axes`` of the model grid when it names them) the whole sliding-window
    pass runs once per view and the softmax is averaged on the model grid."""
    roi_size, overlap, sw_batch_size = window
    net = bundle.network
    spec = bundle.contract.inference
    t0 = time.perf_counter()
    with network_on(net, dev), torch.inference_mode(), autocast_context(dev):
        x, state = prepare_input(bundle, image)
        roi = list(roi_size or spec.roi_size or x.shape[2:])
        if len(roi) != x.ndim - 2:
            raise InputError(
                f"roi size {roi} has {len(roi)} values; the model is {x.ndim - 2}D",
                hint="e.g. --roi-size 96,96,96",
            )

        def windows(v: torch.Tensor) -> torch.Tensor:
            return sliding_window_logits(bundle, net, v, dev, (roi, overlap, sw_batch_size))

        hook = None
        if each_view is not None:

            def hook(p: torch.Tensor) -> None:
                each_view(0, restore_output(p[0].float().cpu(), state))

        mean = _forward_tta(windows, x, tta, hook, spec.tta_axes)
    prob = restore_output(mean[0].float(), state)
    labels = labels_from_probabilities(bundle, prob)
    affine = getattr(image, "affine", torch.eye(4))
    return Prediction(
        probabilities=prob,
        labels=labels,
        affine=torch.as_tensor(affine),
        seconds=time.perf_counter() - t0,
        tta=tta,
    )


def predict_batch(
    bundle: Any,
    images: Sequence[torch.Tensor],
    *,
    device: str | torch.device = "auto",
    tta: str | None = None,
    sources: Sequence[str | None] | None = None,
    each_view: EachView | None = None,
    identity_forward: IdentityForward | None = None,
    prepared: Sequence[Prepared | None] | None = None,
) -> list[Prediction]:
    """:func:`predict` for several images of a whole-image model, in one forward pass per
    test-time augmentation view (and per ``tta_sizes`` size); :func:`predict` itself goes
    through here with one image.

    Each image is prepared on its own (intensity, resize to the model's ``spatial_size``), the
    batch ``(N, C, *spatial)`` goes through the network, and each result is brought back onto its
    own image's grid; ``seconds`` is the batch's time shared equally. ``each_view(i, prob)``
    sees every test-time augmentation view of image ``i`` on its grid. ``identity_forward``
    (e.g. :class:`medxai.explain.KeptForward`) runs the identity view of the model's own input
    size, the batch of all images, in place of the network (``tta`` none: the only view).
    ``prepared``: each image's :func:`prepare_input` where it was made already (None where not).

    Raises:
        ModelError: the bundle is not a whole-image model (sliding-window models take one
            image at a time: :func:`predict`).
        ModelMismatchError: an image does not fit the model (checked before any work).
    """
    if not runner_for(bundle).batches:
        raise ModelError(
            f"model {bundle.name!r} is not a whole-image model; predict one image at a time"
        )
    names = list(sources) if sources is not None else [None] * len(images)
    for img, src in zip(images, names):
        check_input_fits(bundle, img, src)
    if not images:
        return []
    dev = resolve_device(device)
    mode = tta_mode(bundle.inference, tta)
    t0 = time.perf_counter()
    grids: list[ModelGrid] = []
    with network_on(bundle.network, dev):
        probs = whole_image_probabilities(
            bundle, images, dev, mode, each_view, identity_forward, grids, prepared
        )
    out = []
    for img, prob, grid in zip(images, probs, grids):
        labels = labels_from_probabilities(bundle, prob)
        affine = torch.as_tensor(getattr(img, "affine", torch.eye(4)))
        out.append(
            Prediction(
                probabilities=prob, labels=labels, affine=affine, seconds=0.0, tta=mode, grid=grid
            )
        )
    each = (time.perf_counter() - t0) / len(images)
    for p in out:
        p.seconds = each
    return out


def _one_hot(labels: torch.Tensor, n: int) -> torch.Tensor:
    """``(n, *spatial)`` float32 one-hot of a ``(1, *spatial)`` label map."""
    out = torch.zeros((n, *labels.shape[1:]), dtype=torch.float32)
    return out.scatter_(0, labels.long().clamp(0, n - 1), 1.0)


def _layered_labels(bundle: Any, prob: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
    """The label map of a MONAI bundle with medxai's extras on top, when its config asks for
    them (``medxai.inference.threshold``, ``medxai.postprocessing``): the threshold cuts the
    bundle's inverted probabilities (not its argmax), the clean-up runs on the label map."""
    from medxai.postprocess import postprocess_labels

    contract = bundle.contract
    if contract.inference.threshold is not None and prob is not None and prob.shape[0] == 2:
        return labels_from_probabilities(bundle, prob)
    if any(contract.clean_up.values()):
        return postprocess_labels(labels, dict(contract.clean_up))
    return labels


def _predict_monai(
    bundle: Any,
    image: torch.Tensor,
    dev: torch.device,
    *,
    roi_size: Sequence[int] | None,
    overlap: float | None,
    sw_batch_size: int | None,
    source: str | None,
) -> Prediction:
    """A MONAI model-zoo bundle's own preprocessing, inferer and postprocessing
    (:meth:`medxai.models.monai_bundle.MonaiBundle.run_full`). The probabilities are the bundle's
    activations after its ``Invertd`` when it inverts them, else the label map one-hot."""
    bundle.check_input(image, source)
    x, squeezed = _squeeze_to_model_dims(image, bundle.spatial_dims)
    t0 = time.perf_counter()
    out = bundle.run_full(
        x, dev, roi_size=roi_size, overlap=overlap, sw_batch_size=sw_batch_size, source=source
    )
    prob, labels, segments = out.probabilities, out.labels, out.segments
    labels = _layered_labels(bundle, prob, labels)
    if prob is None:
        n = max([lab.value for lab in bundle.contract.labels] + [int(labels.max())]) + 1
        prob = _one_hot(labels, n)
    if squeezed:
        prob, labels = prob[..., None], labels[..., None]
        segments = segments[..., None] if segments is not None else None
    affine = getattr(image, "affine", torch.eye(4))
    return Prediction(
        probabilities=prob,
        labels=labels,
        affine=torch.as_tensor(affine),
        seconds=time.perf_counter() - t0,
        tta="none",
        segments=segments,
    )


#: why a MONAI bundle's prediction takes no test-time augmentation views or dropout passes
MONAI_VIEWS_REFUSAL = (
    "a MONAI model-zoo bundle runs its own inferer: medxai takes no test-time "
    "augmentation views or dropout passes of it"
)


class ModelRunner:
    """How a bundle's network meets an image: onto the model grid, through the network, back onto
    the input's grid. Every caller (prediction, saliency, uncertainty, batch) goes through the
    runner of :func:`runner_for`, so that one path serves every model.

    Two runners exist, and both run a bundle's MONAI keys (``preprocessing``, ``inferer``,
    ``postprocessing``) with the same result: :class:`MonaiRunner` runs them as written (any
    bundle, by MONAI's transforms and inferer), :class:`MedxaiRunner` runs medxai's own bundles,
    whose MONAI keys are generated from their ``medxai`` block, by medxai's fused equivalent of
    those keys (equal to the bit, ``tests/test_runners.py``; 2-3x faster per picture, and it
    batches pictures and layers test-time augmentation, the threshold and the clean-up on the
    network's output: docs/bundles.md "One path").

    Attributes:
        name: ``medxai`` or ``monai`` (report.json, ``describe``).
        batches: several whole images go through the network in one pass (:func:`predict_batch`).
        views_refusal: why the prediction takes no test-time augmentation views or dropout
            passes (:mod:`medxai.uncertainty`), None when it can.
        keeps_forward: the prediction's identity view can be the saliency's forward pass
            (:func:`medxai.pipeline.saliency_forward`).
        regions: the saliency can target a user region brought onto the model grid.
    """

    name = ""
    batches = False
    views_refusal: str | None = None
    keeps_forward = False
    regions = False

    def __init__(self, bundle: Any) -> None:
        self.bundle = bundle

    def model_input(self, image: torch.Tensor, source: str | None = None) -> tuple[Any, Any]:
        """``(1, C, *model_spatial)`` float input for ``image`` and the state that
        :meth:`to_input_grid` needs."""
        raise NotImplementedError

    def to_input_grid(self, t: torch.Tensor, state: Any) -> torch.Tensor:
        """``(K, *model_spatial)`` maps (scores, saliency) back onto the input's grid."""
        raise NotImplementedError

    def predict(
        self,
        image: torch.Tensor,
        dev: torch.device,
        *,
        window: tuple[Sequence[int] | None, float | None, int | None],
        tta: str | None,
        source: str | None,
        each_view: EachView | None,
        identity_forward: IdentityForward | None,
    ) -> Prediction:
        """:func:`predict` of one image (``window``: roi size, overlap, windows per pass)."""
        raise NotImplementedError

    def check_input(self, image: torch.Tensor, source: str | None = None) -> None:
        """Raise :class:`ModelMismatchError` when ``image`` cannot go to the model."""
        raise NotImplementedError


class MedxaiRunner(ModelRunner):
    """medxai's own bundles: its model-grid chain (:func:`prepare_input`, :func:`restore_output`),
    whole-image batches or MONAI's sliding window, with TTA, threshold and clean-up."""

    name = "medxai"
    regions = True

    def __init__(self, bundle: Any) -> None:
        super().__init__(bundle)
        whole = bundle.contract.inference.mode == "whole_image"
        self.batches = whole
        self.keeps_forward = whole

    def model_input(self, image: torch.Tensor, source: str | None = None) -> tuple[Any, Any]:
        return prepare_input(self.bundle, image)

    def check_input(self, image: torch.Tensor, source: str | None = None) -> None:
        _check_medxai_input(self.bundle, image, source)

    def to_input_grid(self, t: torch.Tensor, state: Any) -> torch.Tensor:
        return restore_output(t, state)

    def predict(
        self,
        image: torch.Tensor,
        dev: torch.device,
        *,
        window: tuple[Sequence[int] | None, float | None, int | None],
        tta: str | None,
        source: str | None,
        each_view: EachView | None,
        identity_forward: IdentityForward | None,
    ) -> Prediction:
        bundle = self.bundle
        if self.batches:
            return predict_batch(
                bundle,
                [image],
                device=dev,
                tta=tta,
                sources=[source],
                each_view=each_view,
                identity_forward=identity_forward,
            )[0]
        check_input_fits(bundle, image, source)
        mode = tta_mode(bundle.inference, tta)
        return _predict_sliding_window(bundle, image, dev, window, mode, each_view)


class MonaiRunner(ModelRunner):
    """Any MONAI bundle (:class:`medxai.models.monai_bundle.MonaiBundle`): its own
    preprocessing from its ``LoadImaged`` on, its inferer, its postprocessing with ``Invertd``."""

    name = "monai"
    views_refusal = MONAI_VIEWS_REFUSAL

    def model_input(self, image: torch.Tensor, source: str | None = None) -> tuple[Any, Any]:
        return self.bundle.model_input(image, source)

    def check_input(self, image: torch.Tensor, source: str | None = None) -> None:
        self.bundle.check_input(image, source)

    def to_input_grid(self, t: torch.Tensor, state: Any) -> torch.Tensor:
        return self.bundle.to_input_grid(t, state)

    def predict(
        self,
        image: torch.Tensor,
        dev: torch.device,
        *,
        window: tuple[Sequence[int] | None, float | None, int | None],
        tta: str | None,
        source: str | None,
        each_view: EachView | None,
        identity_forward: IdentityForward | None,
    ) -> Prediction:
        roi_size, overlap, sw_batch_size = window
        return _predict_monai(
            self.bundle,
            image,
            dev,
            roi_size=roi_size,
            overlap=overlap,
            sw_batch_size=sw_batch_size,
            source=source,
        )


def runner_for(bundle: Any) -> ModelRunner:
    """The runner of ``bundle``: :class:`MonaiRunner` for a bundle loaded from its MONAI keys
    (:func:`medxai.models.monai_bundle.load_monai_bundle`, contract form ``monai``; it loads
    medxai's own bundles too), :class:`MedxaiRunner` for medxai's own form
    (:func:`medxai.models.bundle.load_bundle`). The one place where the two differ."""
    contract = getattr(bundle, "contract", None)
    if contract is not None and contract.form == "monai":
        return MonaiRunner(bundle)
    return MedxaiRunner(bundle)
