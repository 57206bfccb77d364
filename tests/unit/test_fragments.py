"""hipas_core.sts.fragments: a small piece of one class against the other class's tree joins it."""

from __future__ import annotations

import numpy as np

from hipas_core.sts.fragments import attach_fragments


def _two_trees() -> np.ndarray:
    """An artery rod along x and a vein rod beside it, apart (uint8 (Z, Y, X))."""
    labels = np.zeros((12, 20, 60), dtype=np.uint8)
    labels[4:7, 3:6, 2:58] = 1
    labels[4:7, 13:16, 2:58] = 2
    return labels


def test_a_vein_stretch_inside_an_artery_becomes_artery_and_the_mask_is_kept():
    labels = _two_trees()
    labels[4:7, 3:6, 28:32] = 2  # a short stretch of the artery called vein: it cuts the artery in two
    before = labels.copy()
    out = attach_fragments(labels)
    assert np.array_equal(labels, before)  # input not modified
    assert np.array_equal(out > 0, labels > 0)
    assert (out[4:7, 3:6, 2:58] == 1).all() and (out[4:7, 13:16, 2:58] == 2).all()


def test_pieces_that_touch_nothing_and_large_components_stay():
    labels = _two_trees()
    labels[9:11, 8:10, 30:32] = 1  # an isolated artery speck between the trees, touching nothing
    labels[4:7, 6:13, 40:42] = 2  # a vein bridge to the artery: part of the (main) vein component
    out = attach_fragments(labels)
    assert np.array_equal(out, labels)


def test_a_chain_of_pieces_is_handed_on():
    labels = _two_trees()
    labels[4:7, 3:6, 50:54] = 2  # vein piece inside the artery's end
    labels[4:7, 3:6, 54:58] = 1  # and the artery's tip beyond it, cut off by the vein piece
    labels[4:7, 3:6, 56:58] = 2  # a second vein piece at the very end
    out = attach_fragments(labels)
    assert (out[4:7, 3:6, 2:58] == 1).all()


def test_empty_and_single_class_labels_are_returned_unchanged():
    empty = np.zeros((4, 4, 4), dtype=np.uint8)
    assert np.array_equal(attach_fragments(empty), empty)
    only_artery = _two_trees() * (_two_trees() == 1)
    assert np.array_equal(attach_fragments(only_artery), only_artery)
