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


def y_tree(shape=(24, 48, 64)):
    """An artery trunk along x (radius 3 voxels) that forks into two thinner children (radius 2), a Y."""
    z, y, x = np.indices(shape)
    trunk = ((z - 12) ** 2 + (y - 24) ** 2 <= 9) & (x < 31)
    upper = ((z - 12) ** 2 + (y - 24 - (x - 30) * 0.8) ** 2 <= 4) & (x >= 30) & (x < 55)
    lower = ((z - 12) ** 2 + (y - 24 + (x - 30) * 0.8) ** 2 <= 4) & (x >= 30) & (x < 55)
    return trunk, upper, lower


def test_coupling_hands_the_parent_class_down_to_a_weakly_misread_child():
    trunk, upper, lower = y_tree()
    labels = np.zeros(trunk.shape, np.uint8)
    labels[trunk | upper] = 1
    labels[lower] = 2  # the network calls one child vein, by a small margin
    pa = np.where(trunk | upper, 0.9, np.where(lower, 0.45, 0.0))
    pv = np.where(trunk | upper, 0.1, np.where(lower, 0.55, 0.0))
    alone = branch_consistent_labels((pa, pv), labels)
    assert (alone[lower] == 2).mean() > 0.8  # per branch: the child's own evidence decides
    coupled = branch_consistent_labels((pa, pv), labels, coupling=1.0)
    assert (coupled[trunk | upper | lower] == 1).mean() > 0.95
    assert np.array_equal(coupled > 0, labels > 0)


def test_coupling_does_not_merge_a_confident_vein_into_the_artery_it_touches():
    trunk, upper, lower = y_tree()
    labels = np.zeros(trunk.shape, np.uint8)
    labels[trunk | upper] = 1
    labels[lower] = 2
    pa = np.where(trunk | upper, 0.9, np.where(lower, 0.02, 0.0))
    pv = np.where(trunk | upper, 0.1, np.where(lower, 0.98, 0.0))
    coupled = branch_consistent_labels((pa, pv), labels, coupling=0.3)
    assert (coupled[lower] == 2).mean() > 0.8 and (coupled[trunk | upper] == 1).mean() > 0.9
