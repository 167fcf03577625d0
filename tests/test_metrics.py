"""Metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medxai.training.metrics import binary_metrics, isic_thresholded_jaccard, summarise


def test_perfect_and_both_empty() -> None:
    m = np.zeros((10, 10), bool)
    m[2:5, 3:7] = True
    r = binary_metrics(m, m)
    assert r["dice"] == r["iou"] == r["pixel_accuracy"] == r["sensitivity"] == r["specificity"] == 1
    assert r["hd95"] == 0 and r["isic_score"] == 1
    e = binary_metrics(np.zeros((4, 4)), np.zeros((4, 4)))
    assert e["dice"] == 1 and e["iou"] == 1 and e["hd95"] == 0 and math.isnan(e["sensitivity"])


def test_disjoint_and_one_empty() -> None:
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[0:2, 0:2] = True
    b[5:7, 5:7] = True
    r = binary_metrics(a, b)
    assert r["dice"] == 0 and r["iou"] == 0 and r["isic_score"] == 0
    assert r["pixel_accuracy"] == pytest.approx(92 / 100)
    assert r["sensitivity"] == 0 and r["specificity"] == pytest.approx(92 / 96)
    r = binary_metrics(np.zeros((10, 10)), b)
    assert r["dice"] == 0 and math.isnan(r["hd95"])


def test_partial_overlap_exact_values() -> None:
    p = np.zeros((10, 10), bool)
    t = np.zeros((10, 10), bool)
    p[0:4, 0:5] = True  # 20 px
    t[2:6, 0:5] = True  # 20 px, overlap 10
    r = binary_metrics(p, t)
    assert r["dice"] == pytest.approx(2 * 10 / 40)
    assert r["iou"] == pytest.approx(10 / 30)
    assert r["sensitivity"] == pytest.approx(10 / 20)
    assert r["specificity"] == pytest.approx(70 / 80)


def test_hd95_on_a_known_shift_in_mm() -> None:
    t = np.zeros((40, 40, 10), bool)
    t[10:20, 10:20, 2:8] = True
    p = np.roll(t, 3, axis=0)  # shifted 3 voxels along i
    assert binary_metrics(p, t)["hd95"] == pytest.approx(3.0)
    assert binary_metrics(p, t, spacing=(2.0, 1.0, 1.0))["hd95"] == pytest.approx(6.0)


def test_isic_threshold_and_summary() -> None:
    assert isic_thresholded_jaccard(0.64) == 0 and isic_thresholded_jaccard(0.65) == 0.65
    s = summarise([{"dice": 1.0, "hd95": math.nan}, {"dice": 0.5, "hd95": 2.0}])
    assert s["dice"]["mean"] == 0.75 and s["hd95"]["n"] == 1 and s["hd95"]["mean"] == 2.0


def test_the_one_dice_and_its_rule_for_empty_masks() -> None:
    """medxai.overlap.dice: MONAI's compute_dice; a class absent from both maps scores 1, a
    class predicted where the truth has none 0. Training validation, evaluation, the uncertainty
    view agreement and the faithfulness curves all call it."""
    import torch
    from monai.metrics import compute_dice

    from medxai.overlap import dice
    from medxai.training.validation import dice_per_case

    empty = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    some = empty.clone()
    some[0, 0, :2, :2] = True  # 4 px
    other = empty.clone()
    other[0, 0, 1:3, :2] = True  # 4 px, 2 shared
    assert dice(empty, empty).tolist() == [[1.0]]
    assert dice(some, empty).tolist() == [[0.0]] and dice(empty, some).tolist() == [[0.0]]
    assert dice(some, other).tolist() == [[0.5]]
    # class maps: 0 background, 1 in both, 2 nowhere, 3 predicted only
    pred = torch.tensor([[[[0, 1, 1, 3]]]])
    truth = torch.tensor([[[[0, 1, 0, 0]]]])
    scores = dice(pred, truth, num_classes=4, include_background=False)
    assert scores.tolist() == [[pytest.approx(2 / 3), 1.0, 0.0]]
    assert dice_per_case(pred, truth, 4).tolist() == [pytest.approx((2 / 3 + 1 + 0) / 3)]
    # MONAI's own: the same numbers with ignore_empty=False (with True the empty class is NaN)
    ref = compute_dice(pred, truth, include_background=False, ignore_empty=False, num_classes=4)
    assert torch.equal(scores, ref)
    assert torch.isnan(compute_dice(pred, truth, include_background=False, num_classes=4)[0, 1])
    # evaluation scores a pair of numpy masks with the same rule
    assert binary_metrics(np.zeros((3, 3)), np.zeros((3, 3)))["dice"] == 1.0
