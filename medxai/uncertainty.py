"""Where a segmentation is unsure, and how much to trust it as a whole.

Two sources of samples of the class probabilities ``(K, *spatial)`` on the input grid:

- ``tta``: the test-time augmentation views the prediction already runs (flips, the dihedral
  group, ``tta_sizes``), each brought back onto the input grid: the same passes as the
  prediction, collected through the ``each_view`` hook of :func:`medxai.inference.predict`.
- ``mc-dropout``: N extra passes with the network's dropout layers in train mode and everything
  else (batch norm) in eval mode (Gal and Ghahramani 2016), the identity view only, with a fixed
  seed, so the same input gives the same map.

From the samples:

- the **uncertainty map**: the predictive entropy of the mean probability,
  ``H(p) = -sum_k p_k log p_k``, divided by ``log K`` so that it lies in [0, 1] (1: every class
  equally likely); for ``tta`` the mean is the prediction's own probabilities;
- the **variance map**: the variance across samples of the foreground probability (for K > 2
  the mean of the foreground classes' variances), in [0, 0.25];
- the **quality scores** of the case (:func:`quality_scores`); the one in report.json, the SR
  and the batch manifest is ``quality_score``, the expected (soft) Dice of the mean probability
  against the delivered label map (:data:`QUALITY_DEFINITION`), chosen by measurement on ISIC
  2018 val (``scripts/quality_auroc.py``, docs/uncertainty.md).

Layer: above :mod:`medxai.inference` (it uses its public preparation and restoration), below
:mod:`medxai.outputs` and the pipeline.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from medxai.choices import UNCERTAINTY_CHOICES
from medxai.errors import InputError
from medxai.inference import (
    Prediction,
    autocast_context,
    foreground_labeller,
    labels_from_probabilities,
    network_on,
    predict,
    prepare_input,
    resolve_device,
    restore_output,
    runner_for,
    sliding_window_logits,
    tta_mode,
)
from medxai.labelmaps import present_values

__all__ = [
    "UNCERTAINTY_CHOICES",
    "QUALITY_DEFINITION",
    "DEFAULT_MC_SAMPLES",
    "SampleAccumulator",
    "ViewCollector",
    "Uncertainty",
    "uncertainty_method",
    "dropout_layers",
    "mc_dropout_samples",
    "normalised_entropy",
    "quality_scores",
    "summarise",
    "estimate",
    "tta_accumulator",
    "border_band",
]

#: Half-width (pixels/voxels of the input grid) of the band around the predicted border
#: (``border_uncertainty``; on ISIC val wider bands ranked bad cases better, none as well as
#: ``expected_dice``: docs/uncertainty.md).
BORDER_WIDTH = 1.0
#: Monte-Carlo dropout passes when not given (``--mc-samples``).
DEFAULT_MC_SAMPLES = 8

#: What ``quality_score`` is, as report.json states it.
QUALITY_DEFINITION = (
    "expected Dice: the soft Dice of the mean class probability against the delivered label "
    "map, 2 sum(p_l * [y = l]) / (sum p_l + sum [y = l]), averaged over the foreground labels "
    "present (0..1, higher = better; it is the Dice the segmentation would have if the "
    "probabilities were calibrated). Nothing segmented: 1 - the mean normalised entropy over "
    "the image. Chosen among 13 candidates by the AUROC for 'case Dice < 0.8' on ISIC 2018 val "
    "(docs/uncertainty.md)"
)

_DROPOUT_TYPES = (
    torch.nn.Dropout,
    torch.nn.Dropout1d,
    torch.nn.Dropout2d,
    torch.nn.Dropout3d,
    torch.nn.AlphaDropout,
    torch.nn.FeatureAlphaDropout,
)


# ---------------------------------------------------------------------------------------------
# which method
# ---------------------------------------------------------------------------------------------


def dropout_layers(net: torch.nn.Module) -> list[torch.nn.Module]:
    """The dropout layers of ``net`` with a drop probability above 0."""
    return [
        m for m in net.modules() if isinstance(m, _DROPOUT_TYPES) and float(getattr(m, "p", 0)) > 0
    ]


def uncertainty_method(
    bundle: Any, requested: str | None = None, tta: str | None = None
) -> tuple[str | None, str]:
    """The uncertainty method for ``bundle`` (``tta``, ``mc-dropout`` or None) and why.

    ``requested`` None (the default) means ``tta`` when the model runs with test-time
    augmentation (its own, or ``tta`` given here) and none otherwise. A method that cannot be
    used for this model gives None with the reason, never an error: the segmentation stands
    without an uncertainty map.

    Raises:
        InputError: ``requested`` is not one of :data:`UNCERTAINTY_CHOICES`.
    """
    if requested is not None and requested not in UNCERTAINTY_CHOICES:
        raise InputError(
            f"unknown uncertainty method {requested!r}",
            hint=f"use one of {', '.join(UNCERTAINTY_CHOICES)}",
        )
    if requested == "none":
        return None, "not asked for (--uncertainty none)"
    refusal = runner_for(bundle).views_refusal
    if refusal is not None:
        return None, refusal
    # whole-image and sliding-window predictions both hand their TTA views to each_view
    mode = tta_mode(bundle.inference, tta)
    dropout = bool(dropout_layers(bundle.network))
    if requested is None:
        if mode != "none":
            return "tta", f"the model runs with {mode} test-time augmentation"
        hint = " (--uncertainty mc-dropout: its network has dropout)" if dropout else ""
        return None, (
            f"the model runs without test-time augmentation{hint}"
            if dropout
            else "the model runs without test-time augmentation and its network has no dropout"
        )
    if requested == "tta":
        if mode != "none":
            return "tta", f"asked for; the model runs with {mode} test-time augmentation"
        return None, (
            "--uncertainty tta asked for, but the model runs without test-time augmentation"
            " (give --tta flips with it, or use --uncertainty mc-dropout)"
        )
    if not dropout:
        return None, "--uncertainty mc-dropout asked for, but the network has no dropout layer"
    return "mc-dropout", "asked for; the network has dropout"


# ---------------------------------------------------------------------------------------------
# samples
# ---------------------------------------------------------------------------------------------


@dataclass
class Samples:
    """What the passes left: the mean and variance of the class probabilities over ``n``
    samples, and each sample's label map (after the bundle's post-processing).
    ``foreground_only``: the mean and variance are of a binary model's foreground class alone,
    ``(1, *spatial)`` (test-time augmentation views of a thresholded model: the label maps and
    the variance map need nothing else)."""

    method: str
    n: int
    mean: torch.Tensor  # (K, *spatial) float32; (1, *spatial) when foreground_only
    variance: torch.Tensor  # (K, *spatial) float32; (1, *spatial) when foreground_only
    labels: torch.Tensor  # (n, *spatial) uint8
    foreground_only: bool = False


class SampleAccumulator:
    """Collects probability samples ``(K, *spatial)`` of one image, keeping only running sums
    and each sample's label map (a few bytes per pixel, whatever the number of samples).

    ``to_labels`` turns one sample into its ``(1, *spatial)`` label map (the bundle's argmax or
    threshold, and post-processing: :func:`medxai.inference.labels_from_probabilities`).
    ``foreground_labels``, when given, does the same from a binary model's ``(1, *spatial)``
    foreground probability alone (:func:`medxai.inference.foreground_labeller`): then
    :meth:`add_foreground` takes such samples instead (one kind per accumulator).
    """

    def __init__(
        self,
        to_labels: Callable[[torch.Tensor], torch.Tensor],
        foreground_labels: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self._to_labels = to_labels
        self._foreground_labels = foreground_labels
        self._foreground: bool | None = None  # which kind of sample came first
        self._sum: torch.Tensor | None = None
        self._sq: torch.Tensor | None = None
        self._labels: list[torch.Tensor] = []
        self._pending: list[cf.Future[None]] = []  # samples being added in another thread

    @property
    def takes_foreground(self) -> bool:
        """Whether :meth:`add_foreground` can be used."""
        return self._foreground_labels is not None

    def add(self, prob: torch.Tensor) -> None:
        """One sample: ``(K, *spatial)`` class probabilities."""
        self._add(prob, self._to_labels, False)

    def add_foreground(self, foreground: torch.Tensor) -> None:
        """One sample of a binary model: its ``(1, *spatial)`` foreground probability."""
        if self._foreground_labels is None:
            raise InputError("this accumulator needs every class's probability (add)")
        self._add(foreground, self._foreground_labels, True)

    def _add(
        self, prob: torch.Tensor, to_labels: Callable[[torch.Tensor], torch.Tensor], fg: bool
    ) -> None:
        if self._foreground is not None and self._foreground != fg:
            raise InputError(
                "samples of every class and of the foreground alone cannot be mixed in one "
                "accumulator"
            )
        self._foreground = fg
        p = prob.detach().float().cpu()
        if self._sum is None or self._sq is None:
            self._sum, self._sq = p.clone(), p * p
        else:
            self._sum += p
            self._sq.addcmul_(p, p)
        self._labels.append(to_labels(p)[0].to(torch.uint8))

    def defer(self, adding: cf.Future[None]) -> None:
        """A sample being added in another thread (:class:`ViewCollector`'s ``pool``): waited
        for, and its error raised, before the samples are counted or finished."""
        self._pending.append(adding)

    def _settle(self) -> None:
        pending, self._pending = self._pending, []
        for adding in pending:
            adding.result()

    def __len__(self) -> int:
        self._settle()
        return len(self._labels)

    def finish(self, method: str) -> Samples:
        self._settle()
        if self._sum is None or self._sq is None:
            raise InputError("no samples were collected for the uncertainty map")
        n = len(self._labels)
        mean = self._sum / n
        variance = (self._sq / n - mean * mean).clamp_min(0)
        return Samples(
            method=method,
            n=n,
            mean=mean.float(),
            variance=variance.float(),
            labels=torch.stack(self._labels),
            foreground_only=bool(self._foreground),
        )


class ViewCollector:
    """The ``each_view`` hook of :func:`medxai.inference.predict` / ``predict_batch`` for one
    :class:`SampleAccumulator` per image (``i``: the image's place in the batch). It takes a
    binary model's foreground probability alone when every accumulator does
    (``takes_foreground``, :data:`medxai.inference.EachView`).

    With ``pool`` (an executor of one thread, so that an image's views arrive in order), the
    accumulators take their views in that thread: each view's label map and sums are made off
    the caller's thread (a batch's network thread), and :meth:`SampleAccumulator.finish` waits
    for them."""

    def __init__(
        self, accumulators: Sequence[SampleAccumulator], pool: cf.Executor | None = None
    ) -> None:
        self._accumulators = list(accumulators)
        self._pool = pool
        self.takes_foreground = all(a.takes_foreground for a in self._accumulators)

    def __call__(self, i: int, prob: torch.Tensor) -> None:
        self._give(self._accumulators[i], self._accumulators[i].add, prob)

    def foreground(self, i: int, fg: torch.Tensor) -> None:
        self._give(self._accumulators[i], self._accumulators[i].add_foreground, fg)

    def _give(
        self, acc: SampleAccumulator, add: Callable[[torch.Tensor], None], sample: torch.Tensor
    ) -> None:
        if self._pool is None:
            add(sample)
        else:
            acc.defer(self._pool.submit(add, sample))


@contextlib.contextmanager
def _dropout_on(net: torch.nn.Module) -> Iterator[None]:
    """Dropout layers in train mode (everything else as it is: eval) for the block."""
    layers = dropout_layers(net)
    before = [m.training for m in layers]
    try:
        for m in layers:
            m.train()
        yield
    finally:
        for m, was in zip(layers, before):
            m.train(was)


def mc_dropout_samples(
    bundle: Any,
    image: torch.Tensor,
    device: str | torch.device = "auto",
    *,
    samples: int = DEFAULT_MC_SAMPLES,
    seed: int = 0,
    roi_size: Sequence[int] | None = None,
    overlap: float | None = None,
    sw_batch_size: int | None = None,
) -> Samples:
    """``samples`` stochastic passes of ``bundle`` over ``image`` with dropout on (batch norm in
    eval mode), each brought back onto the input grid. The dropout masks come from a generator
    seeded with ``seed`` (the global torch RNG is left as it was): the same seed gives the same
    samples on the same device.

    Whole-image models: the identity view at the model's ``spatial_size``, all samples in one
    batch. Sliding-window models: ``samples`` sliding-window passes.

    Raises:
        InputError: ``samples`` < 2, or the network has no dropout layer.
    """
    if samples < 2:
        raise InputError(f"MC dropout needs at least 2 samples, got {samples}")
    net = bundle.network
    if not dropout_layers(net):
        raise InputError(f"model {bundle.name!r} has no dropout layer for MC dropout")
    dev = resolve_device(device)
    acc = SampleAccumulator(lambda p: labels_from_probabilities(bundle, p))
    spec = bundle.contract.inference
    devices = [dev.index or 0] if dev.type == "cuda" else []
    with (
        network_on(net, dev),
        _dropout_on(net),
        torch.random.fork_rng(devices=devices),
        torch.inference_mode(),
        autocast_context(dev),
    ):
        torch.manual_seed(seed)
        x, state = prepare_input(bundle, image)
        x = x.to(dev)
        if spec.mode == "whole_image":
            for start in range(0, samples, 8):
                count = min(8, samples - start)
                prob = torch.softmax(net(x.expand(count, *x.shape[1:])).float(), dim=1).cpu()
                for p in prob:
                    acc.add(restore_output(p, state))
        else:
            roi = list(roi_size or spec.roi_size or x.shape[2:])
            for _ in range(samples):
                logits = sliding_window_logits(bundle, net, x, dev, (roi, overlap, sw_batch_size))
                acc.add(restore_output(torch.softmax(logits.float(), dim=1)[0], state))
    return acc.finish("mc-dropout")


def tta_accumulator(bundle: Any) -> SampleAccumulator:
    """An accumulator for the test-time augmentation views of one image of ``bundle``; pass
    ``ViewCollector([acc])`` (or ``lambda i, p: acc.add(p)``) as
    :func:`medxai.inference.predict`'s ``each_view``. For a binary bundle with a foreground
    threshold it also takes the foreground probability alone (:meth:`SampleAccumulator.
    add_foreground`), which is all its label maps and variance map need."""
    thresholded = bundle.contract.inference.threshold is not None
    return SampleAccumulator(
        lambda p: labels_from_probabilities(bundle, p),
        foreground_labeller(bundle) if thresholded else None,
    )


# ---------------------------------------------------------------------------------------------
# maps and scores
# ---------------------------------------------------------------------------------------------


def normalised_entropy(prob: torch.Tensor) -> torch.Tensor:
    """``(1, *spatial)`` predictive entropy of ``(K, *spatial)`` probabilities divided by
    ``log K``: 0 where one class has probability 1, 1 where all K are equally likely."""
    k = prob.shape[0]
    if k < 2:
        return torch.zeros((1, *prob.shape[1:]), dtype=torch.float32)
    flat = prob.reshape(k, -1)
    n = flat.shape[1]
    out = torch.empty(n, dtype=torch.float32, device=prob.device)
    log_k = math.log(k)
    # float64 throughout, in place on one copy per block of pixels that stays in the CPU's
    # cache (a new tensor per step over the whole map took twice the time; the same
    # operations per element, so the same values); one block on another device
    block = _ENTROPY_BLOCK if prob.device.type == "cpu" else max(n, 1)
    for start in range(0, n, block):
        stop = start + block
        p = flat[:, start:stop].to(torch.float64, copy=True).clamp_(0, 1)
        p /= p.sum(0, keepdim=True).clamp_min_(1e-12)
        terms = p.clamp_min(1e-300).log_().mul_(p)  # p log p
        terms.masked_fill_(~(p > 0), 0.0)
        h = -(terms.sum(0))
        out[start:stop] = (h / log_k).clamp_(0, 1)
    return out.reshape(1, *prob.shape[1:])


#: pixels per block of :func:`normalised_entropy`
_ENTROPY_BLOCK = 1 << 16


def _foreground_variance(variance: torch.Tensor, foreground_only: bool = False) -> torch.Tensor:
    """``(1, *spatial)``: the foreground probability's variance (mean over foreground classes;
    ``foreground_only``: ``variance`` is already the foreground class's)."""
    if foreground_only:
        return variance[:1].clone()
    if variance.shape[0] < 2:
        return variance[:1].clone()
    return variance[1:].mean(0, keepdim=True)


def border_band(labels: np.ndarray, width: float = 1.0) -> np.ndarray:
    """The pixels/voxels closer than ``width`` (in pixels) to a boundary between labels; width
    1: those with a face neighbour of another label (both sides of every boundary).

    Not :func:`medxai.explain.targets.border_band` (a cube dilation minus erosion of one binary
    mask, the saliency target): this band follows every boundary between labels, by Euclidean
    distance, and the border scores of docs/uncertainty.md were measured with it.
    """
    ring = _face_boundary(labels)
    if width <= 1 or not ring.any():
        return ring
    return ndimage.distance_transform_edt(~ring) < width


def _face_boundary(labels: np.ndarray) -> np.ndarray:
    """The pixels/voxels with a face neighbour of another label: ``grey_dilation !=
    grey_erosion`` over the face-connected footprint (scipy's ``reflect`` edges: the array's
    border is no boundary), by comparing each axis's neighbours in place, without the two
    filters' passes."""
    lab = np.asarray(labels)
    ring = np.zeros(lab.shape, dtype=bool)
    for axis in range(lab.ndim):
        lo = [slice(None)] * lab.ndim
        hi = [slice(None)] * lab.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        differ = lab[tuple(lo)] != lab[tuple(hi)]
        ring[tuple(lo)] |= differ
        ring[tuple(hi)] |= differ
    return ring


def _value_masks(final: np.ndarray, values: Sequence[int]) -> dict[int, tuple[np.ndarray, int]]:
    """``{value: (final == value, its pixel count)}``: the delivered map's side of the view
    agreement, computed once for all views."""
    out = {}
    for v in values:
        mask = final == v
        out[v] = (mask, int(np.count_nonzero(mask)))
    return out


def _mean_dice_of(
    sample: np.ndarray, final: dict[int, tuple[np.ndarray, int]], values: Sequence[int]
) -> float:
    """Mean Dice (:func:`medxai.overlap.dice`) of ``sample`` against the delivered map over the
    labels of ``values`` present in either (1 when neither has any), from pixel counts: the
    same float32 ratio as MONAI's
    ``compute_dice`` (``float32(2 |s∩f|) / float32(|s| + |f|)``, 1 when neither has the label;
    :func:`medxai.overlap.dice`), averaged as it averaged them, without its one-hot tensors
    (12 ms a photo for the 8 views)."""
    scores = []
    for v in values:
        mask, n_final = final[v]
        s = sample == v
        n_sample = int(np.count_nonzero(s))
        if n_final == 0 and n_sample == 0:
            continue  # absent from both: not averaged
        both = int(np.count_nonzero(s & mask)) if n_final and n_sample else 0
        scores.append(np.float32(2 * both) / np.float32(n_final + n_sample))
    if not scores:
        return 1.0
    return float(torch.tensor(np.asarray(scores, dtype=np.float32)).double().mean())


def quality_scores(
    entropy: torch.Tensor,
    labels: torch.Tensor,
    probabilities: torch.Tensor,
    sample_labels: torch.Tensor | None = None,
    *,
    border_width: float = BORDER_WIDTH,
) -> dict[str, float | None]:
    """The per-case scores of a segmentation and its uncertainty map.

    Args:
        entropy: ``(1, *spatial)`` normalised predictive entropy (:func:`normalised_entropy`).
        labels: ``(1, *spatial)`` the delivered label map.
        probabilities: ``(K, *spatial)`` the mean class probabilities.
        sample_labels: ``(n, *spatial)`` each sample's label map (TTA view or dropout pass).
        border_width: half-width in pixels of the band around the predicted border.

    Returns:
        ``border_uncertainty`` (mean entropy on the predicted border; None without a border),
        ``mean_uncertainty`` (over the image), ``uncertainty_per_area`` (sum of entropy over
        the number of foreground pixels; None without foreground), ``expected_dice`` (soft Dice
        of the mean probabilities against the label map, mean over the foreground labels
        present), ``view_agreement`` (mean Dice of each sample's label map against the
        delivered one; None without samples), and ``quality_score`` (``expected_dice``, or
        1 - ``mean_uncertainty`` when nothing is segmented: :data:`QUALITY_DEFINITION`).
    """
    h = entropy[0].double().numpy()
    lab = labels[0].numpy()
    border = border_band(lab, border_width)
    fg = lab > 0
    present = present_values(lab, background=False)
    mean_u = float(h.mean())
    border_u = float(h[border].mean()) if border.any() else None
    per_area = float(h.sum() / fg.sum()) if fg.any() else None
    soft = []
    for v in present:
        if v < probabilities.shape[0]:
            p = probabilities[v].double().numpy()
            m = lab == v
            soft.append(2.0 * float(p[m].sum()) / (float(p.sum()) + float(m.sum())))
    expected_dice = float(np.mean(soft)) if soft else None
    agreement = None
    if sample_labels is not None and len(sample_labels):
        values = sorted(set(present) | set(present_values(sample_labels, background=False)))
        final = _value_masks(lab, values)
        agreement = float(np.mean([_mean_dice_of(s.numpy(), final, values) for s in sample_labels]))
    quality = expected_dice if expected_dice is not None else 1.0 - mean_u
    return {
        "quality_score": round(quality, 6),
        "border_uncertainty": border_u,
        "mean_uncertainty": mean_u,
        "uncertainty_per_area": per_area,
        "expected_dice": expected_dice,
        "view_agreement": agreement,
    }


@dataclass
class Uncertainty:
    """The uncertainty of one segmentation.

    Attributes:
        method: ``tta`` or ``mc-dropout``.
        samples: the number of samples (views or dropout passes).
        entropy: ``(1, *spatial)`` float32 normalised predictive entropy in [0, 1].
        variance: ``(1, *spatial)`` float32 variance of the foreground probability in [0, 0.25].
        scores: :func:`quality_scores`.
        seed: the MC dropout seed (None for ``tta``).
    """

    method: str
    samples: int
    entropy: torch.Tensor
    variance: torch.Tensor
    scores: dict[str, float | None] = field(default_factory=dict)
    seed: int | None = None

    @property
    def quality_score(self) -> float | None:
        return self.scores.get("quality_score")

    def report(self) -> dict[str, Any]:
        """The ``uncertainty`` section of report.json (maps summarised, not listed)."""
        return {
            "method": self.method,
            "samples": self.samples,
            "seed": self.seed,
            "map": "normalised predictive entropy of the mean probability, H(p)/log(K), 0..1",
            "variance_map": "variance of the foreground probability across the samples",
            "entropy_max": round(float(self.entropy.max()), 6),
            "entropy_mean": round(float(self.entropy.mean()), 6),
        }


def summarise(samples: Samples, prediction: Prediction, *, seed: int | None = None) -> Uncertainty:
    """The :class:`Uncertainty` of ``prediction`` from ``samples``: for ``tta`` the entropy of
    the prediction's own (mean) probabilities, for ``mc-dropout`` of the dropout passes' mean;
    the scores against the delivered label map."""
    if samples.foreground_only and samples.method != "tta":
        raise InputError(
            f"{samples.method} samples of the foreground class alone: the entropy needs the "
            "mean of every class"
        )
    mean = prediction.probabilities if samples.method == "tta" else samples.mean
    if tuple(mean.shape[1:]) != tuple(prediction.labels.shape[1:]):
        raise InputError(
            f"the samples' grid {tuple(mean.shape[1:])} is not the prediction's "
            f"{tuple(prediction.labels.shape[1:])}"
        )
    entropy = normalised_entropy(mean)
    scores = quality_scores(entropy, prediction.labels, mean, samples.labels)
    return Uncertainty(
        method=samples.method,
        samples=samples.n,
        entropy=entropy,
        variance=_foreground_variance(samples.variance, samples.foreground_only),
        scores=scores,
        seed=seed,
    )


def estimate(
    bundle: Any,
    image: torch.Tensor,
    prediction: Prediction,
    method: str,
    device: str | torch.device = "auto",
    *,
    views: SampleAccumulator | None = None,
    mc_samples: int = DEFAULT_MC_SAMPLES,
    seed: int = 0,
    tta: str | None = None,
    roi_size: Sequence[int] | None = None,
    overlap: float | None = None,
    sw_batch_size: int | None = None,
) -> Uncertainty:
    """The :class:`Uncertainty` of ``prediction`` (of ``image`` by ``bundle``) by ``method``.

    ``tta``: the views ``views`` collected while predicting (``predict(..., each_view=...)``);
    without them (a prediction made elsewhere) the views are run again, which costs one more
    prediction. ``mc-dropout``: :func:`mc_dropout_samples` with ``mc_samples`` and ``seed``.

    Raises:
        InputError: an unknown method, or MC dropout on a network without dropout.
    """
    if method == "tta":
        if views is None or len(views) == 0:
            views = tta_accumulator(bundle)
            collector = views
            predict(bundle, image, device=device, tta=tta, each_view=ViewCollector([collector]))
        return summarise(views.finish("tta"), prediction)
    if method == "mc-dropout":
        samples = mc_dropout_samples(
            bundle,
            image,
            device,
            samples=mc_samples,
            seed=seed,
            roi_size=roi_size,
            overlap=overlap,
            sw_batch_size=sw_batch_size,
        )
        return summarise(samples, prediction, seed=seed)
    raise InputError(
        f"unknown uncertainty method {method!r}",
        hint=f"use one of {', '.join(m for m in UNCERTAINTY_CHOICES if m != 'none')}",
    )
