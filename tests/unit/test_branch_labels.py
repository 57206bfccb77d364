"""Branch-consistent artery/vein labels on small synthetic tubes."""

from __future__ import annotations

import numpy as np

from hipas_core.sts.branch_labels import branch_consistent_labels


def two_tubes(shape=(30, 40, 60)):
    z, y, x = np.indices(shape)
    artery = ((z - 10) ** 2 + (y - 12) ** 2) <= 6
    vein = ((z - 20) ** 2 + (y - 28) ** 2) <= 6
    labels = np.zeros(shape, np.uint8)
    labels[artery], labels[vein] = 1, 2
    return labels, artery, vein, x


def test_a_flip_halfway_along_a_vessel_is_undone_and_the_vessel_mask_kept():
    labels, artery, vein, x = two_tubes()
    pa, pv = np.where(artery, 0.8, 0.1), np.where(vein, 0.8, 0.1)
    flip = artery & (x > 25) & (x < 32)  # the network says "vein", barely, for 6 mm of the artery
    noisy = labels.copy()
    noisy[flip] = 2
    pa[flip], pv[flip] = 0.45, 0.55
    before = (noisy.copy(), pa.copy(), pv.copy())
    fixed = branch_consistent_labels((pa, pv), noisy)
    assert np.array_equal(fixed, labels)
    assert np.array_equal(noisy, before[0]) and np.array_equal(pa, before[1]) and np.array_equal(pv, before[2])


def test_a_branch_the_network_confidently_calls_vein_stays_vein():
    labels, artery, vein, x = two_tubes()
    pa, pv = np.where(artery, 0.2, 0.1), np.where(vein | artery, 0.9, 0.1)  # the whole "artery" reads vein
    called = np.where(labels > 0, 2, 0).astype(np.uint8)
    assert np.array_equal(branch_consistent_labels(np.stack([pa, pv]), called), called)


def test_empty_labels_stay_empty():
    empty = np.zeros((8, 8, 8), np.uint8)
    assert not branch_consistent_labels(np.zeros((2, 8, 8, 8)), empty).any()
