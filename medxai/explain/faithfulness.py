"""How far a saliency map can be trusted: deletion/insertion, energy in a mask, and the
model-parameter randomisation test.

* Deletion/insertion (Petsiuk et al. 2018, RISE): remove the most salient pixels first and watch
  the target fall (a faithful map makes it fall fast: low deletion AUC), or insert them first into
  a baseline image and watch it rise (high insertion AUC). A random pixel order gives the AUCs to
  beat.
* Energy in a mask: the share of the saliency mass inside a region (e.g. the predicted lesion).
* Randomisation sanity (Adebayo et al. 2018): a map that barely changes when the model's weights
  are replaced by random ones does not explain the model. Low rank correlation is good.

Informativeness (does the map say more than the mask?):

* :func:`redundancy`: Pearson correlation of the map with the model's probability or mask. Near 1
  the map only repeats the segmentation.
* :func:`context_share`: the share of the saliency mass outside the mask (1 - energy in mask):
  the context the model used.
* :func:`sparseness` (Gini index, Chalasani et al. 2020) and :func:`complexity` (entropy of the
  map as a distribution, Bhatt et al. 2020), as Quantus computes them (tested against Quantus).
* :func:`lesion_energy_ratio`: energy inside a reference (true) mask divided by that mask's area
  share: 1 is what a uniform map gets; above 1 the map is about the lesion.
"""

from __future__ import annotations

import copy
import functools
import warnings
from typing import Any

import numpy as np
import torch
from scipy import stats
from scipy.integrate import trapezoid
from torch import nn

from medxai.errors import ExplainError
from medxai.explain._common import forward, make_baseline, prepare_input
from medxai.explain.hooks import frozen_model
from medxai.explain.layers import resolve_layer
from medxai.explain.methods import SaliencyMethod, get_method, run_method
from medxai.explain.targets import SegmentationTarget, _broadcast_roi, make_target
from medxai.overlap import dice

__all__ = [
    "deletion_insertion",
    "energy_in_mask",
    "randomisation_sanity",
    "spearman",
    "auc",
    "redundancy",
    "context_share",
    "sparseness",
    "complexity",
    "lesion_energy_ratio",
    "informativeness",
]

SCORES = ("probability", "logit")


def auc(fractions: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Trapezoid area under ``values`` (``(..., T)``) over ``fractions`` (``(T,)``)."""
    return np.asarray(trapezoid(values, fractions, axis=-1))


def _check_saliency(saliency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    expected = (x.shape[0], 1, *x.shape[2:])
    if not isinstance(saliency, torch.Tensor) or tuple(saliency.shape) != expected:
        found = tuple(saliency.shape) if isinstance(saliency, torch.Tensor) else type(saliency)
        raise ExplainError(f"saliency must have shape {expected} to match the input, got {found}")
    return saliency.detach().as_subclass(torch.Tensor).float()


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
    target: SegmentationTarget | None = None,
    insertion: bool = True,
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
        target: the question the map answered (its region is computed on the unperturbed input
            and kept); default the label's predicted segment. A target with sign -1 (``missed``)
            is scored by ``1 - probability`` (or the negated logits) over its region.
        insertion: also trace the insertion curves (``False`` halves the cost; their keys are
            then absent).

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
    random_order = torch.stack([torch.randperm(pixels, generator=generator) for _ in range(n)]).to(
        x.device
    )

    with frozen_model(net), torch.no_grad():
        logits = forward(net, x)
        question = target if target is not None else SegmentationTarget(target_label)
        target_label = question.label
        reference_mask = question.predicted(logits)
        fixed = question.frozen(logits)
        region = fixed.region.to(x.device).float()  # type: ignore[union-attr]

        def measure(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = forward(net, image)
            if score == "probability":
                values = fixed.probability(out)
                if fixed.polarity < 0:
                    values = 1 - values
            else:
                values = out[:, target_label : target_label + 1] * fixed.polarity
            pred = question.predicted(out)
            return (values * region).flatten(1).sum(1).float(), dice(pred, reference_mask)[:, 0]

        reference, _ = measure(x)
        bad = [i for i in range(n) if not reference[i] > 0]
        if bad:
            raise ExplainError(
                f"the {fixed.name} target of label {target_label} has no positive "
                f"{score} in sample(s) {bad}; deletion/insertion has nothing to "
                "measure",
                hint="explain a label and region the model predicts",
            )

        results: dict[str, np.ndarray] = {"fractions": fractions}
        for name, ranking in (("", order), ("random_", random_order)):
            for curve in ("deletion", "insertion") if insertion else ("deletion",):
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
    return _energy_and_total(saliency, mask)[0]


def _energy_and_total(
    saliency: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`energy_in_mask` and each sample's total mass (non-negative part), from one
    float32 copy of the maps."""
    if not isinstance(saliency, torch.Tensor) or saliency.ndim < 3 or saliency.shape[1] != 1:
        raise ExplainError("saliency must be a tensor (N, 1, *spatial)")
    sal = saliency.detach().float().clamp_min(0)
    m = _broadcast_roi(mask, sal.shape[0], tuple(sal.shape[2:])).to(sal.device)
    inside = (sal * m).flatten(1).sum(1)
    total = sal.flatten(1).sum(1)
    share = torch.where(
        total > 0, inside / total.clamp_min(torch.finfo(total.dtype).tiny), torch.zeros_like(total)
    )
    return share, total


def spearman(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Spearman rank correlation of two maps (flattened, ``scipy.stats.spearmanr``); NaN when one
    of them is constant."""
    a = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64).ravel()
    b = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ExplainError(f"maps of different sizes: {a.size} and {b.size} values")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)  # NaN says it
        return float(stats.spearmanr(a, b).statistic)


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
    target: str | SegmentationTarget | None = None,
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
        target: the question (region name or :class:`SegmentationTarget`); its region is that of
            the original model.
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
    chosen = make_target(target_label, target, roi)
    if isinstance(chosen.region, torch.Tensor):
        target = chosen
    else:
        with frozen_model(net), torch.no_grad():
            target = chosen.frozen(forward(net, x))
    original = run_method(fn, net, x, target, **options)
    randomised_net = _randomised_copy(net, seed, x.device)
    randomised = run_method(fn, randomised_net, x, target, **options)
    correlations = np.array([spearman(original[i], randomised[i]) for i in range(x.shape[0])])
    return {"spearman": correlations, "saliency": original, "randomised_saliency": randomised}


# --- informativeness ---------------------------------------------------------------------------


def _flat(values: torch.Tensor | np.ndarray, n: int | None = None) -> np.ndarray:
    # torch converts to float64 itself: np.asarray(tensor, dtype=float64) took 5 ms for a
    # 512x512 mask (numpy's element-wise path through __array__)
    arr = (
        values.detach().cpu().double().numpy()
        if isinstance(values, torch.Tensor)
        else np.asarray(values, dtype=np.float64)
    )
    return arr.reshape(arr.shape[0] if n is None else n, -1)


def _flat_copy(values: torch.Tensor | np.ndarray, n: int) -> np.ndarray:
    """:func:`_flat` of ``values`` in memory of its own (converting to float64 made it, else a
    copy)."""
    if isinstance(values, torch.Tensor) and values.dtype != torch.float64:
        return _flat(values, n)
    return _flat(values, n).copy()


def _flat_native(values: torch.Tensor, as_float64: np.ndarray) -> np.ndarray:
    """``values`` as ``(N, -1)`` in their own floating type where that is what
    ``as_float64`` (:func:`_flat` of them) was converted from, else ``as_float64``."""
    if values.dtype in (torch.float32, torch.float16):
        return values.detach().cpu().numpy().reshape(as_float64.shape)
    return as_float64


def redundancy(saliency: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """Pearson correlation per sample between a map and the model's output (``(N,)``).

    Args:
        saliency: ``(N, 1, *spatial)``.
        reference: the label's probability or (boolean) mask, ``(N, 1, *spatial)``.

    NaN where either is constant (as ``scipy.stats.pearsonr``). Near 1: the map repeats the
    output.

    numpy's centred dot product rather than ``scipy.stats.pearsonr(axis=1)``: the same values
    (tested against it), but pearsonr took about 11 ms for one 512x512 map against about 1.5 ms,
    and report.json computes it twice per image in batch work (benchmarks/bench_outputs_cost.py).
    """
    a = _flat(saliency).astype(np.float64)
    b = _flat(reference, a.shape[0]).astype(np.float64)
    if a.shape != b.shape:
        raise ExplainError(f"map and reference differ in size: {a.shape} vs {b.shape}")
    return _pearson(_centred(a), _centred(b))


def _centred(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`redundancy`'s side of one operand: constant rows, the rows centred in place, and
    their squared norms."""
    constant = x.max(1) == x.min(1)
    x -= x.mean(1, keepdims=True)
    return constant, x, np.einsum("ij,ij->i", x, x)


def _pearson(
    a: tuple[np.ndarray, np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> np.ndarray:
    (const_a, ca, aa), (const_b, cb, bb) = a, b
    den = np.sqrt(aa * bb)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.clip(np.einsum("ij,ij->i", ca, cb) / den, -1.0, 1.0)
    return np.where(const_a | const_b | (den == 0), np.nan, r)


def context_share(saliency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of the saliency mass *outside* ``mask`` (``(N,)``, 1 - :func:`energy_in_mask`);
    0 for an all-zero map."""
    inside = energy_in_mask(saliency, mask)
    total = saliency.detach().float().clamp_min(0).flatten(1).sum(1).to(inside.device)
    return torch.where(total > 0, 1 - inside, torch.zeros_like(inside))


def sparseness(saliency: torch.Tensor | np.ndarray) -> np.ndarray:
    """Gini index of each map's absolute values (Chalasani et al. 2020), ``(N,)`` in [0, 1].

    Computed as Quantus' ``Sparseness`` (values divided by their maximum, 1e-7 added): 0 for a
    uniform map, towards 1 when the mass sits on few pixels.
    """
    return _sparseness(_flat(saliency))


def _sparseness(values: np.ndarray) -> np.ndarray:
    """:func:`sparseness` of the rows of ``values`` (any float type; float32 sorts faster).

    The absolute values are sorted first, in their own type, and only then made float64,
    divided by the row's maximum and shifted by 1e-7: each of those steps keeps the order
    (it is non-decreasing), so the sorted result is exactly the sort of the transformed values
    (the earlier order of the steps; the same figures, tested), at about half the time of
    sorting 262144 float64 values of a 512x512 map.
    """
    a = np.sort(np.abs(values), axis=1).astype(np.float64)
    for row, peak in zip(a, a[:, -1].copy(), strict=True):
        if peak > 0:
            row /= peak
    a += 1e-7
    p = a.shape[1]
    return (_gini_weights(p) * a).sum(1) / (p * a.sum(1))


@functools.lru_cache(maxsize=8)
def _gini_weights(p: int) -> np.ndarray:
    """``2 * rank - p - 1`` for the ranks ``1..p`` (float64, as numpy would cast them)."""
    ranks = np.arange(1, p + 1)[None]
    weights = (2 * ranks - p - 1).astype(np.float64)
    weights.flags.writeable = False
    return weights


def complexity(saliency: torch.Tensor | np.ndarray) -> np.ndarray:
    """Entropy (nats) of each map's absolute values as a distribution over pixels (Bhatt et al.
    2020), ``(N,)``, as Quantus' ``Complexity`` computes it: ``log(P)`` for a uniform map of ``P``
    pixels, lower when the mass is concentrated."""
    a = np.abs(_flat(saliency))
    peak = a.max(1, keepdims=True)
    a = np.where(peak > 0, a / np.where(peak > 0, peak, 1), a)
    total = a.sum(1, keepdims=True)
    a = a / np.where(total > 0, total, 1)
    return -(a * np.log(a + 1e-12)).sum(1)


def lesion_energy_ratio(saliency: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Energy inside ``mask`` divided by the mask's share of the image (``(N,)``).

    1 is what a uniform map scores; 2 means twice the mass a uniform map would put there. NaN for
    an empty mask.
    """
    share = energy_in_mask(saliency, mask).cpu().numpy().astype(np.float64)
    m = _broadcast_roi(mask, saliency.shape[0], tuple(saliency.shape[2:]))
    area = m.flatten(1).float().mean(1).cpu().numpy().astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(area > 0, share / np.where(area > 0, area, 1), np.nan)


def informativeness(
    saliency: torch.Tensor,
    probability: torch.Tensor,
    mask: torch.Tensor,
    reference_mask: torch.Tensor | None = None,
    *,
    with_complexity: bool = True,
) -> dict[str, np.ndarray]:
    """All informativeness measures of maps ``(N, 1, *spatial)`` at once, each ``(N,)``.

    Args:
        saliency: the maps.
        probability: the model's probability of the label, same shape.
        mask: the model's (boolean) mask of the label, same shape.
        reference_mask: optional true mask, for ``lesion_energy_ratio``.
        with_complexity: False leaves ``complexity`` out (report.json does not give it).

    Returns:
        ``corr_probability``, ``corr_mask`` (:func:`redundancy`), ``energy_in_mask``,
        ``context_share``, ``sparseness``, ``complexity`` and, with a reference mask,
        ``lesion_energy_ratio``: the values of those functions called one by one (tested
        equal), with the maps' share of the work (conversion to float64, centring, their mass)
        done once (report.json computes them for every label of every image).
    """
    inside, total = _energy_and_total(saliency, mask)
    total = total.to(inside.device)
    flat = _flat(saliency)
    n = flat.shape[0]
    sal = _centred(flat.astype(np.float64))
    # _centred works in place: on a copy of its own (a float64 tensor's array is its memory)
    prob = _flat_copy(probability, n)
    reference = _flat_copy(mask, n)  # a boolean mask: 0.0 / 1.0, as mask.float() gave
    if prob.shape != flat.shape or reference.shape != flat.shape:
        raise ExplainError(f"map and reference differ in size: {flat.shape} vs {prob.shape}")
    out = {
        "corr_probability": _pearson(sal, _centred(prob)),
        "corr_mask": _pearson(sal, _centred(reference)),
        "energy_in_mask": inside.cpu().numpy().astype(np.float64),
        "context_share": torch.where(total > 0, 1 - inside, torch.zeros_like(inside))
        .cpu()
        .numpy()
        .astype(np.float64),
        "sparseness": _sparseness(_flat_native(saliency, flat)),
    }
    if with_complexity:
        out["complexity"] = complexity(saliency)
    if reference_mask is not None:
        out["lesion_energy_ratio"] = lesion_energy_ratio(saliency, reference_mask)
    return out
