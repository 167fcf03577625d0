"""present_values / value_counts: the same answer as np.unique for every label map dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medxai.labelmaps import present_values, value_counts


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16, np.uint32, np.uint64]
)
def test_same_as_numpy_unique(dtype) -> None:
    rng = np.random.default_rng(0)
    arr = rng.choice([0, 1, 3, 7], size=(13, 11, 5)).astype(dtype)
    values, counts = np.unique(arr, return_counts=True)
    assert present_values(arr) == [int(v) for v in values]
    assert present_values(arr, background=False) == [int(v) for v in values if v != 0]
    assert value_counts(arr) == {int(v): int(c) for v, c in zip(values, counts)}
    assert present_values(torch.from_numpy(arr.astype(np.int64))) == [int(v) for v in values]


def test_other_maps_fall_back_to_unique() -> None:
    assert present_values(np.array([[True, False]])) == [0, 1]
    assert present_values(np.array([-2, 0, 5])) == [-2, 0, 5]  # negative: no histogram
    assert present_values(np.array([0, 70000])) == [0, 70000]  # large: no histogram
    assert value_counts(np.array([0, 70000, 70000])) == {0: 1, 70000: 2}
    assert present_values(np.zeros((0, 3), np.uint8)) == []
    assert present_values(np.zeros((4, 4), np.uint8), background=False) == []


def test_counted_in_pieces(monkeypatch) -> None:
    """Large maps are counted a piece at a time: the same counts."""
    import medxai.labelmaps as lm

    monkeypatch.setattr(lm, "_CHUNK", 7)
    arr = np.random.default_rng(2).choice([0, 2, 5], size=(9, 10)).astype(np.uint8)
    values, counts = np.unique(arr, return_counts=True)
    assert value_counts(arr) == {int(v): int(c) for v, c in zip(values, counts)}
    assert present_values(arr) == [int(v) for v in values]
