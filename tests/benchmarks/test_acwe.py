"""The active-contour benchmark's scoring: the side figure leaves out defective ground truth, the main keeps it."""
import numpy as np

from benchmarks.acwe import _scores


def test_scores_leave_defective_slices_out_of_the_side_figure_only():
    truth = np.zeros((2, 20, 20), bool)
    truth[:, 5:15, 5:15] = True
    pred = truth.astype(np.int64)
    pred[1] = 0
    pred[1, :, :10] = 1  # a poor guess on slice 1
    scores = _scores(pred, truth, valid=[True, False])
    assert scores["dsc_valid"] == 1.0 and scores["n_valid"] == 1
    assert scores["dsc_border"] < 1.0  # the main figure still counts the defective slice
