"""The holdout split: hidden rows are gradable because every identity keeps a labeled image."""

import numpy as np
import pytest

from cpl.data.holdout import holdout_split


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.9])
def test_split_partitions_rows_and_keeps_every_identity(fraction):
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(40), rng.integers(1, 9, size=40))
    keep, hide = holdout_split(labels, fraction, seed=7)
    assert np.array_equal(np.sort(np.concatenate([keep, hide])), np.arange(len(labels)))
    assert np.intersect1d(keep, hide).size == 0
    assert set(labels[keep]) == set(labels)  # every class keeps >= 1 labeled image
    for cls in np.unique(labels):
        n = int((labels == cls).sum())
        assert int((labels[hide] == cls).sum()) == min(round(fraction * n), n - 1)


def test_split_is_deterministic_per_seed():
    labels = np.repeat(np.arange(30), 4)
    a, b, c = (holdout_split(labels, 0.5, seed=s) for s in (1, 1, 2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])
    assert len(a[1]) == 60  # half of 4 per identity
