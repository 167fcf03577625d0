"""How far a saliency map can be trusted: deletion/insertion, energy in a mask, and the
model-parameter randomisation test.

* Deletion/insertion (Petsiuk et al. 2018, RISE): remove the most salient pixels first and watch
  the target fall (a faithful map makes it fall fast: low deletion AUC), or insert them first into
  a baseline image and watch it rise (high insertion AUC). A random pixel order gives the AUCs to
  beat.
* Energy in a mask: the share of the saliency mass inside a region (e.g. the predicted lesion).
* Randomisation sanity (Adebayo et al. 2018): a map that barely changes when the model's weights
  are replaced by random ones does not explain the model. Low rank correlation is good.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from medxai.errors import ExplainError
from medxai.explain._common import forward, make_baseline, prepare_input
from medxai.explain.hooks import frozen_model
from medxai.explain.layers import resolve_layer
from medxai.explain.methods import SaliencyMethod, get_method, run_method
from medxai.explain.targets import SegmentationTarget, _broadcast_roi

__all__ = ["deletion_insertion", "energy_in_mask", "randomisation_sanity", "spearman", "auc"]

SCORES = ("probability", "logit")


def auc(fractions: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Trapezoid area under ``values`` (``(..., T)``) over ``fractions`` (``(T,)``)."""
    widths = np.diff(fractions)
    return ((values[..., 1:] + values[..., :-1]) / 2 * widths).sum(axis=-1)


def _check_saliency(saliency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    expected = (x.shape[0], 1, *x.shape[2:])
    if not isinstance(saliency, torch.Tensor) or tuple(saliency.shape) != expected:
        found = tuple(saliency.shape) if isinstance(saliency, torch.Tensor) else type(saliency)
        raise ExplainError(f"saliency must have shape {expected} to match the input, got {found}")
    return saliency.detach().as_subclass(torch.Tensor).float()


def _dice(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-sample Dice of boolean ``(N, 1, *spatial)`` masks; 1 when both are empty."""
    inter = (pred & ref).flatten(1).sum(1).float()
    sizes = pred.flatten(1).sum(1).float() + ref.flatten(1).sum(1).float()
    return torch.where(sizes > 0, 2 * inter / sizes.clamp_min(1), torch.ones_like(sizes))


def deletion_insertion(
    net: nn.Module,
    x: torch.Tensor,
    saliency: torch.Tensor,
    target_label: int = 1,
    steps: int = 20,
    baseline: str | float = "blur",
    random_seed: int = 0,
    *,
    score: str = "probability",
    blur_sigma: float | None = None,
) -> dict[str, np.ndarray]:
    """Deletion and insertion curves of a saliency map, and those of a random pixel order.

    The region scored is the model's own mask for ``target_label`` on the unperturbed input. At
    step ``k`` of ``steps`` the ``round(k / steps * P)`` most salient of the ``P`` pixels (all
    channels) are replaced by the baseline (deletion), or are the only pixels taken from ``x`` in
    the baseline image (insertion). Ties are broken by pixel index (stable order).

    Args:
        net: segmentation network, logits ``(N, K, *spatial)``.
        x: ``(N, C, H, W[, D])``.
        saliency: ``(N, 1, H, W[, D])``, larger = more important.
        target_label: the class whose mask is scored.
        steps: number of perturbation steps (``steps + 1`` points including 0 and 1).
        baseline: ``"blur"`` (Gaussian blur), ``"zero"``, ``"mean"`` (per-channel) or a number.
        random_seed: seed of the random order (a private generator; global RNG untouched).
        score: ``"probability"`` (sum of the softmax probability of the label over the mask) or
            ``"logit"`` (Seg-Grad-CAM's sum of logits). Scores are divided by the unperturbed one.
        blur_sigma: blur in pixels for ``baseline="blur"``.

    Returns:
        ``fractions`` ``(T,)`` with ``T = steps + 1``; for each of ``deletion``, ``insertion``,
        ``random_deletion``, ``random_insertion``: ``<curve>_scores`` ``(N, T)`` (normalised),
        ``<curve>_dice`` ``(N, T)`` (Dice of the perturbed prediction vs the unperturbed mask),
        ``<curve>_auc`` ``(N,)`` and ``<curve>_dice_auc`` ``(N,)``. A faithful map has
        ``deletion_auc < random_deletion_auc`` and ``insertion_auc > random_insertion_auc``.

    Raises:
        ExplainError: shapes do not match, bad options, or the model predicts nothing of the
            label (or a non-positive logit sum) for a sample, so there is nothing to delete.
    """
    x = prepare_input(x)
    saliency = _check_saliency(saliency, x).to(x.device)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ExplainError(f"steps must be a positive integer, got {steps!r}")
    if score not in SCORES:
        raise ExplainError(f"unknown score {score!r}", hint=f"use one of {SCORES}")
    n, c, *spatial = x.shape
    pixels = int(np.prod(spatial))
    base = make_baseline(x, baseline, blur_sigma)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = [int(round(f * pixels)) for f in fractions]

    order = torch.argsort(saliency.flatten(1), dim=1, descending=True, stable=True)
    generator = torch.Generator(device="cpu").manual_seed(int(random_seed))
    random_order = torch.stack([torch.randperm(pixels, generator=generator)
                                for _ in range(n)]).to(x.device)

    with frozen_model(net), torch.no_grad():
        logits = forward(net, x)
        target = SegmentationTarget(target_label).frozen(logits)
        reference_mask = target.region

        def measure(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = forward(net, image)
            values = out.softmax(dim=1) if score == "probability" else out
            pred = out.argmax(dim=1, keepdim=True) == target_label
            return target(values).float(), _dice(pred, reference_mask)

        reference, _ = measure(x)
        bad = [i for i in range(n) if not reference[i] > 0]
        if bad:
            raise ExplainError(f"the model predicts no positive {score} for label {target_label} "
                               f"in sample(s) {bad}; deletion/insertion has nothing to measure",
                               hint="explain a label the model predicts")

        results: dict[str, np.ndarray] = {"fractions": fractions}
        for name, ranking in (("", order), ("random_", random_order)):
            for curve in ("deletion", "insertion"):
                scores, dices = [], []
                for k in counts:
                    chosen = torch.zeros((n, pixels), dtype=torch.bool, device=x.device)
                    chosen.scatter_(1, ranking[:, :k], True)
                    chosen = chosen.view(n, 1, *spatial)
                    if curve == "deletion":
                        image = torch.where(chosen, base, x)
                    else:
                        image = torch.where(chosen, x, base)
                    s, d = measure(image)
                    scores.append((s / reference).cpu().numpy())
                    dices.append(d.cpu().numpy())
                key = f"{name}{curve}"
                results[f"{key}_scores"] = np.stack(scores, axis=1).astype(np.float64)
                results[f"{key}_dice"] = np.stack(dices, axis=1).astype(np.float64)
                results[f"{key}_auc"] = auc(fractions, results[f"{key}_scores"])
                results[f"{key}_dice_auc"] = auc(fractions, results[f"{key}_dice"])
    return results


def energy_in_mask(saliency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of each sample's saliency mass inside ``mask`` (``(N,)`` float32, in [0, 1]).

    Args:
        saliency: ``(N, 1, *spatial)`` non-negative.
        mask: boolean, ``(*spatial)``, ``(1, *spatial)`` or ``(N, 1, *spatial)``.

    An all-zero map has no mass anywhere; its share is 0.
    """
    if not isinstance(saliency, torch.Tensor) or saliency.ndim < 3 or saliency.shape[1] != 1:
        raise ExplainError("saliency must be a tensor (N, 1, *spatial)")
    sal = saliency.detach().float().clamp_min(0)
    m = _broadcast_roi(mask, sal.shape[0], tuple(sal.shape[2:])).to(sal.device)
    inside = (sal * m).flatten(1).sum(1)
    total = sal.flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(total.dtype).tiny),
                       torch.zeros_like(total))


def _rank(values: np.ndarray) -> np.ndarray:
    """Ranks from 1 with ties given their average rank (as ``scipy.stats.rankdata``)."""
    sorter = np.argsort(values, kind="mergesort")
    inverse = np.empty(sorter.size, dtype=np.intp)
    inverse[sorter] = np.arange(sorter.size)
    ordered = values[sorter]
    first = np.r_[True, ordered[1:] != ordered[:-1]]
    dense = first.cumsum()[inverse]
    bounds = np.r_[np.nonzero(first)[0], len(first)]
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def spearman(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Spearman rank correlation of two maps (flattened); NaN when one of them is constant."""
    a = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64).ravel()
    b = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ExplainError(f"maps of different sizes: {a.size} and {b.size} values")
    ra, rb = _rank(a), _rank(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def _randomised_copy(net: nn.Module, seed: int, device: torch.device) -> nn.Module:
    """A deep copy of ``net`` with every parameter re-initialised (seeded), on ``device``.

    Re-initialisation runs on the CPU inside ``torch.random.fork_rng`` so that neither the global
    CPU nor any CUDA random state changes. Modules with ``reset_parameters`` use it (PyTorch's
    default initialisation, which also resets batch-norm statistics); other parameters are drawn
    from N(0, 0.02^2).
    """
    clone = copy.deepcopy(net).to("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        with torch.no_grad():
            for module in clone.modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()
                elif any(True for _ in module.parameters(recurse=False)):
                    for p in module.parameters(recurse=False):
                        p.normal_(0.0, 0.02)
    return clone.to(device)


def randomisation_sanity(
    net: nn.Module,
    x: torch.Tensor,
    method: str | SaliencyMethod = "gradcam",
    target_label: int = 1,
    *,
    roi: torch.Tensor | None = None,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """Model-parameter randomisation test (Adebayo et al. 2018).

    ``net`` is deep-copied (the user's model is never touched), all weights of the copy are
    re-initialised at random (seeded), and the map is computed again. Both maps explain the same
    target: the label's logits over the *original* model's predicted mask (or ``roi``), so the
    comparison does not depend on what the random model happens to predict.

    Args:
        net, x: as for the methods, ``x`` is ``(N, C, H, W[, D])``.
        method: a name in :data:`medxai.explain.METHODS` or a method callable.
        target_label: the class to explain.
        roi: optional boolean region of interest instead of the predicted mask.
        seed: seed of the re-initialisation.
        options: passed to the method (e.g. ``layer=``; a module is translated to its name).

    Returns:
        ``{"spearman": ndarray (N,), "saliency": (N,1,*spatial), "randomised_saliency": ...}``.
        A correlation near 1 means the map ignores the model's weights (bad); NaN where one of
        the two maps is constant (e.g. all zero).
    """
    x = prepare_input(x)
    fn = get_method(method)
    if isinstance(options.get("layer"), nn.Module):
        options["layer"] = resolve_layer(net, options["layer"])[0]
    if roi is not None:
        target = SegmentationTarget(target_label, roi)
    else:
        with frozen_model(net), torch.no_grad():
            target = SegmentationTarget(target_label).frozen(forward(net, x))
    original = run_method(fn, net, x, target, **options)
    randomised_net = _randomised_copy(net, seed, x.device)
    randomised = run_method(fn, randomised_net, x, target, **options)
    correlations = np.array([spearman(original[i], randomised[i]) for i in range(x.shape[0])])
    return {"spearman": correlations, "saliency": original, "randomised_saliency": randomised}
