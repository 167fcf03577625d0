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
