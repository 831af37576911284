"""Tests of napari_selfseg.metrics on small arrays whose scores are computed by hand in the comments."""

import math

import numpy as np
import pytest
from scipy.spatial.distance import directed_hausdorff

from napari_selfseg import metrics as m

# 4x4 pair used by several tests:
#   pred        gt
#   1 1 0 0     0 1 1 0
#   1 1 0 0     0 1 1 0
#   0 0 0 0     0 0 0 0
#   0 0 0 0     0 0 0 0
# |P| = 4, |G| = 4, |P∩G| = 2, |P∪G| = 6
# IoU = 2/6 = 1/3, Dice = 2*2/8 = 0.5, Hammoude = 2/3, XOR = (4+4-4)/4 = 1.0
# Every pixel of a 2x2 square is on its boundary; the squares are one column apart -> Hausdorff = 1.
PRED = np.zeros((4, 4), np.uint8)
PRED[:2, :2] = 1
GT = np.zeros((4, 4), np.uint8)
GT[:2, 1:3] = 1


def test_binary_scores_hand_computed():
    assert m.iou(PRED, GT) == pytest.approx(1 / 3)
    assert m.dice(PRED, GT) == pytest.approx(0.5)
    assert m.hammoude(PRED, GT) == pytest.approx(2 / 3)
    assert m.xor_error(PRED, GT) == pytest.approx(1.0)


def test_nonzero_values_are_foreground():
    # 255 and 7 are foreground just like 1; only the support of the masks matters.
    assert m.iou(PRED * 255, GT * 7) == pytest.approx(1 / 3)


def test_xor_can_exceed_one():
    # pred = whole 4x4 (16), gt = 2x2 (4): XOR = (16 + 4 - 2*4) / 4 = 3
    assert m.xor_error(np.ones((4, 4)), _square(4, 0, 0, 2)) == 3.0


def _square(n, y, x, size):
    a = np.zeros((n, n), bool)
    a[y:y + size, x:x + size] = True
    return a


def test_hausdorff_shift_in_pixels_and_spacing():
    assert m.hausdorff(PRED, GT) == pytest.approx(1.0)
    # The shift is along X; spacing (dy, dx) = (2, 3) -> 3 physical units.
    assert m.hausdorff(PRED, GT, spacing=(2.0, 3.0)) == pytest.approx(3.0)


def test_hausdorff_percentile_hand_computed():
    # 5x5: gt = 3x3 square at rows/cols 1..3 -> boundary = its 8-pixel ring (centre is interior);
    # pred = the single centre pixel (2, 2).
    # pred -> gt: 1 (to (1, 2)).  gt -> pred: 4 edge pixels at 1, 4 corners at sqrt(2).
    # HD = sqrt(2). 50th percentile of [1,1,1,1,s,s,s,s] (linear, position 3.5) = (1 + sqrt 2)/2.
    gt = _square(5, 1, 1, 3)
    pred = np.zeros((5, 5), bool)
    pred[2, 2] = True
    assert m.hausdorff(pred, gt) == pytest.approx(math.sqrt(2))
    assert m.hausdorff(pred, gt, percentile=50) == pytest.approx((1 + math.sqrt(2)) / 2)
    # Symmetric: swapping the arguments gives the same value.
    assert m.hausdorff(gt, pred) == pytest.approx(math.sqrt(2))


def test_hausdorff_is_between_boundaries_not_pixel_sets():
    # gt = full 5x5, pred = its one-pixel outer ring (hollow). Both boundaries are that ring -> 0.
    # (A pixel-set Hausdorff would give 2: the centre of gt is 2 pixels from the ring.)
    gt = np.ones((5, 5), bool)
    pred = gt.copy()
    pred[1:4, 1:4] = False
    assert m.hausdorff(pred, gt) == 0.0


def test_hausdorff_matches_brute_force_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(5):
        pred = rng.random((20, 24)) > 0.6
        gt = rng.random((20, 24)) > 0.5
        bp = np.argwhere(m._boundary(pred))
        bg = np.argwhere(m._boundary(gt))
        expected = max(directed_hausdorff(bp, bg)[0], directed_hausdorff(bg, bp)[0])
        assert m.hausdorff(pred, gt) == pytest.approx(expected)


def test_hausdorff_rejects_bad_arguments():
    with pytest.raises(ValueError, match="percentile"):
        m.hausdorff(PRED, GT, percentile=120)
    with pytest.raises(ValueError, match="spacing"):
        m.hausdorff(PRED, GT, spacing=(1.0, 1.0, 1.0))


def test_empty_prediction():
    empty = np.zeros((4, 4))
    # IoU = Dice = 0, Hammoude = 1, XOR = (0 + 4 - 0)/4 = 1, Hausdorff = inf
    assert m.iou(empty, GT) == 0.0
    assert m.dice(empty, GT) == 0.0
    assert m.hammoude(empty, GT) == 1.0
    assert m.xor_error(empty, GT) == 1.0
    assert m.hausdorff(empty, GT) == math.inf


def test_empty_ground_truth():
    empty = np.zeros((4, 4))
    assert m.iou(PRED, empty) == 0.0
    assert m.dice(PRED, empty) == 0.0
    assert m.xor_error(PRED, empty) == math.inf
    assert m.hausdorff(PRED, empty, percentile=95) == math.inf


def test_both_empty():
    empty = np.zeros((4, 4))
    assert m.iou(empty, empty) == 1.0
    assert m.dice(empty, empty) == 1.0
    assert m.hammoude(empty, empty) == 0.0
    assert m.xor_error(empty, empty) == 0.0
    assert m.hausdorff(empty, empty) == 0.0


def test_single_pixel():
    a = np.zeros((4, 4), bool)
    a[0, 0] = True
    b = np.zeros((4, 4), bool)
    b[3, 3] = True
    assert m.iou(a, a) == 1.0 and m.dice(a, a) == 1.0 and m.hausdorff(a, a) == 0.0
    # Disjoint single pixels: IoU 0, XOR = (1 + 1 - 0)/1 = 2, HD = |(3, 3)| = sqrt(18)
    assert m.iou(a, b) == 0.0
    assert m.xor_error(a, b) == 2.0
    assert m.hausdorff(a, b) == pytest.approx(math.sqrt(18))


def test_3d_input():
    # (Z, Y, X) = (3, 4, 4); gt = 2x2x2 cube at z 0..1, pred = the same cube shifted to z 1..2.
    # |P∩G| = 4, |P∪G| = 12 -> IoU 1/3, Dice 8/16 = 0.5; HD = 1 voxel, = 5 with dz = 5.
    gt = np.zeros((3, 4, 4), bool)
    gt[0:2, 1:3, 1:3] = True
    pred = np.zeros_like(gt)
    pred[1:3, 1:3, 1:3] = True
    assert m.iou(pred, gt) == pytest.approx(1 / 3)
    assert m.dice(pred, gt) == pytest.approx(0.5)
    assert m.hausdorff(pred, gt) == pytest.approx(1.0)
    assert m.hausdorff(pred, gt, spacing=(5.0, 1.0, 1.0)) == pytest.approx(5.0)
    assert m.binary_scores(pred.astype(int), gt, rule="foreground")["iou"] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "call",
    [
        lambda a, b: m.iou(a, b),
        lambda a, b: m.dice(a, b),
        lambda a, b: m.hammoude(a, b),
        lambda a, b: m.xor_error(a, b),
        lambda a, b: m.hausdorff(a, b),
        lambda a, b: m.nmi(a, b),
        lambda a, b: m.adjusted_rand(a, b),
        lambda a, b: m.best_overlap_foreground(a, b),
        lambda a, b: m.binary_scores(a, b),
        lambda a, b: m.binary_scores(a, b, rule="foreground"),
        lambda a, b: m.bsds_best_iou(a, b),
        lambda a, b: m.bsds_scores(a, [b]),
        lambda a, b: m.per_label_scores(a, b),
        lambda a, b: m.evaluate(a, b, "multiclass"),
    ],
)
def test_shape_mismatch_raises(call):
    with pytest.raises(ValueError, match="same shape"):
        call(np.ones((4, 4), int), np.ones((4, 5), int))


# --- label-map agreement -----------------------------------------------------------------------------


def test_nmi_and_ari_hand_computed():
    # Same partition with permuted label values -> 1.
    a = np.array([[0, 0], [1, 1]])
    assert m.nmi(a, 5 - a) == pytest.approx(1.0)
    assert m.adjusted_rand(a, 5 - a) == pytest.approx(1.0)
    # Rows vs columns on 2x2: contingency table all ones -> MI = 0 -> NMI = 0.
    # ARI: sum C(n_ij, 2) = 0, row/col sums C(2,2)*2 = 2 each, expected = 2*2/C(4,2) = 2/3,
    # max = 2 -> ARI = (0 - 2/3)/(2 - 2/3) = -0.5
    b = a.T
    assert m.nmi(a, b) == pytest.approx(0.0, abs=1e-12)
    assert m.adjusted_rand(a, b) == pytest.approx(-0.5)


def test_nmi_and_ari_match_sklearn_on_random_maps():
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rng = np.random.default_rng(3)
    for k_pred in (1, 2, 7, 60):
        for k_gt in (1, 3, 40):
            pred = rng.integers(0, k_pred, (30, 40))
            gt = rng.integers(0, k_gt, (30, 40)) * 3 - 5  # negative and sparse label values too
            assert m.nmi(pred, gt) == pytest.approx(normalized_mutual_info_score(gt.ravel(), pred.ravel()))
            assert m.adjusted_rand(pred, gt) == pytest.approx(adjusted_rand_score(gt.ravel(), pred.ravel()))


def test_nmi_accepts_3d():
    a = np.zeros((2, 3, 4), int)
    a[1] = 3
    assert m.nmi(a, a + 1) == pytest.approx(1.0)


# --- rule (a): best overlap ---------------------------------------------------------------------------

# labels          gt
# 0 0 1 1         0 1 1 1
# 0 0 1 1         0 1 1 1
# 2 2 2 2         0 0 0 0
# 2 2 2 2         0 0 0 0
# overlap with gt: label 0 -> 2, label 1 -> 4, label 2 -> 0  => foreground = label 1 (4 px)
# |P∩G| = 4, |P| = 4, |G| = 6: Dice 8/10 = 0.8, IoU 4/6, Hammoude 1/3, XOR (4+6-8)/6 = 1/3
# HD: pred->gt all 0; gt->pred: (0,1),(1,1) at 1, the 4 others at 0; 95th pct of
# [0,0,0,0,1,1] (position 4.75) = 1.
LABELS = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])
GT_A = np.zeros((4, 4), bool)
GT_A[:2, 1:] = True


def test_best_overlap_foreground_picks_largest_intersection():
    expected = LABELS == 1
    np.testing.assert_array_equal(m.best_overlap_foreground(LABELS, GT_A), expected)


def test_best_overlap_label_zero_is_a_cluster():
    # gt = top-left 2x2 = exactly cluster 0 -> that cluster is the foreground, IoU 1.
    gt = _square(4, 0, 0, 2)
    np.testing.assert_array_equal(m.best_overlap_foreground(LABELS, gt), LABELS == 0)
    assert m.binary_scores(LABELS, gt)["iou"] == 1.0


def test_best_overlap_tie_goes_to_smallest_label_and_empty_gt_gives_empty():
    labels = np.array([[3, 3], [9, 9]])
    gt = np.array([[0, 1], [0, 1]])  # 1 pixel each of labels 3 and 9
    np.testing.assert_array_equal(m.best_overlap_foreground(labels, gt), labels == 3)
    assert not m.best_overlap_foreground(labels, np.zeros((2, 2))).any()


def test_binary_scores_best_overlap_hand_computed():
    s = m.binary_scores(LABELS, GT_A, rule="best-overlap")
    assert s["dsc"] == pytest.approx(0.8)
    assert s["iou"] == pytest.approx(4 / 6)
    assert s["hammoude"] == pytest.approx(1 / 3)
    assert s["xor"] == pytest.approx(1 / 3)
    assert s["hd95"] == pytest.approx(1.0)


def test_binary_scores_foreground_rule():
    # labels > 0 -> 12 px (rows 0-1 cols 2-3 and rows 2-3); |P∩G| = 4, |G| = 6:
    # IoU = 4/(12+6-4) = 4/14, XOR = (12+6-8)/6 = 10/6
    s = m.binary_scores(LABELS, GT_A, rule="foreground")
    assert s["iou"] == pytest.approx(4 / 14)
    assert s["xor"] == pytest.approx(10 / 6)
    with pytest.raises(ValueError, match="rule"):
        m.binary_scores(LABELS, GT_A, rule="nearest")


def test_all_one_label():
    # A single cluster covers everything; gt = 2x2 in 4x4.
    # Foreground = whole image: IoU 4/16, Dice 8/20, XOR (16+4-8)/4 = 3; NMI = ARI = 0.
    labels = np.zeros((4, 4), int)
    gt = _square(4, 1, 1, 2)
    s = m.binary_scores(labels, gt)
    assert s["iou"] == pytest.approx(0.25)
    assert s["dsc"] == pytest.approx(0.4)
    assert s["xor"] == pytest.approx(3.0)
    assert m.nmi(labels, gt) == pytest.approx(0.0, abs=1e-12)
    assert m.adjusted_rand(labels, gt) == pytest.approx(0.0, abs=1e-12)
    # BSDS: one component vs segments {2x2 (4 px), rest (12 px)}: IoUs 4/16 and 12/16 -> mean 0.5
    assert m.bsds_best_iou(labels, gt.astype(int) + 1) == pytest.approx(0.5)


# --- rule (b): BSDS best IoU --------------------------------------------------------------------------


def test_bsds_identical_up_to_renumbering():
    gt = np.array([[1, 1, 2], [3, 3, 2]])
    assert m.bsds_best_iou(gt * 10 + 4, gt) == pytest.approx(1.0)


def test_bsds_splits_connected_components_and_counts_label_zero():
    # pred uses label 1 for two diagonal quadrants and label 0 for the other two; gt numbers the
    # 4 quadrants 1..4. After splitting into components every quadrant matches exactly -> 1.0.
    # (Without the split: IoU 4/8 for each quadrant -> 0.5; with 0 as background: 2 of 4 quadrants
    # unmatched -> 0.5.)
    pred = np.kron(np.array([[1, 0], [0, 1]]), np.ones((2, 2), int))
    gt = np.kron(np.array([[1, 2], [3, 4]]), np.ones((2, 2), int))
    assert m.bsds_best_iou(pred, gt) == pytest.approx(1.0)


def test_bsds_uses_4_connectivity():
    # pred diagonals: with 4-connectivity every pixel is its own component. gt segments are the two
    # diagonals (2 px each): best IoU = 1/2 for both -> 0.5 (8-connectivity would give 1.0).
    pred = np.array([[1, 0], [0, 1]])
    gt = np.array([[1, 2], [2, 1]])
    assert m.bsds_best_iou(pred, gt) == pytest.approx(0.5)


def test_bsds_halves_hand_computed_and_scores():
    # pred: left/right halves of 4x4; gt: top/bottom halves. Each gt half meets each pred half in
    # 4 px: IoU = 4/(8+8-4) = 1/3 -> mean 1/3.
    pred = np.repeat(np.array([[0, 0, 1, 1]]), 4, axis=0)
    gt_tb = np.repeat(np.array([[1], [1], [2], [2]]), 4, axis=1)
    assert m.bsds_best_iou(pred, gt_tb) == pytest.approx(1 / 3)
    s = m.bsds_scores(pred, [pred + 1, gt_tb])
    assert s["per_annotation"] == pytest.approx([1.0, 1 / 3])
    assert s["mean"] == pytest.approx(2 / 3)
    assert s["best"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one"):
        m.bsds_scores(pred, [])


def _bsds_reference(labels, gt):
    """Loop implementation of the protocol, for checking the vectorised one."""
    from skimage.measure import label

    comps = label(labels + 1, background=0, connectivity=1)
    scores = []
    for g in np.unique(gt):
        gm = gt == g
        scores.append(max(
            np.logical_and(comps == c, gm).sum() / np.logical_or(comps == c, gm).sum()
            for c in np.unique(comps)
        ))
    return float(np.mean(scores))


def test_bsds_matches_loop_reference_on_random_maps():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (12, 15))
    gt = np.kron(rng.integers(1, 5, (3, 5)), np.ones((4, 3), int))
    assert m.bsds_best_iou(labels, gt) == pytest.approx(_bsds_reference(labels, gt))


def test_bsds_sparse_path_agrees_with_dense(monkeypatch):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 6, (64, 64))  # many tiny components
    gt = rng.integers(1, 40, (64, 64))
    dense = m.bsds_best_iou(labels, gt)
    monkeypatch.setattr(m, "_MAX_DENSE_CELLS", 0)
    assert m.bsds_best_iou(labels, gt) == pytest.approx(dense)


# --- multi-class --------------------------------------------------------------------------------------

# pred            gt
# 0 0 1 1         0 0 0 0
# 0 0 1 1         0 5 5 0
# 0 0 2 2         0 5 5 0
# 0 0 2 2         0 0 7 7
# gt 5 (4 px): overlaps pred 0 by 2 (IoU 2/(8+4-2) = 0.2), pred 1 by 1 (1/7), pred 2 by 1 (1/7)
#   -> pred 0, IoU 0.2, Dice 4/12 = 1/3
# gt 7 (2 px): only pred 2, IoU 2/(4+2-2) = 0.5, Dice 4/6 = 2/3
PRED_MC = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 2, 2]])
GT_MC = np.array([[0, 0, 0, 0], [0, 5, 5, 0], [0, 5, 5, 0], [0, 0, 7, 7]])


def test_per_label_scores_hand_computed():
    rows = m.per_label_scores(PRED_MC, GT_MC)
    assert [(r["gt_label"], r["pred_label"], r["gt_pixels"]) for r in rows] == [(5, 0, 4), (7, 2, 2)]
    assert [r["iou"] for r in rows] == pytest.approx([0.2, 0.5])
    assert [r["dice"] for r in rows] == pytest.approx([1 / 3, 2 / 3])


# --- evaluate -----------------------------------------------------------------------------------------


def test_evaluate_rules():
    assert m.evaluate(LABELS, GT_A, "best-overlap")["dsc"] == pytest.approx(0.8)
    assert m.evaluate(LABELS, GT_A, "foreground")["iou"] == pytest.approx(4 / 14)

    pred = np.repeat(np.array([[0, 0, 1, 1]]), 4, axis=0)
    s = m.evaluate(pred, [pred + 1, pred.T + 1], "bsds")
    assert s == pytest.approx({"bsds_mean": 2 / 3, "bsds_best": 1.0, "n_annotations": 2})
    assert m.evaluate(pred, pred + 1, "bsds")["n_annotations"] == 1  # a single array is one annotation

    mc = m.evaluate(PRED_MC, GT_MC, "multiclass")
    assert mc["mean_label_iou"] == pytest.approx(0.35)
    assert mc["mean_label_dice"] == pytest.approx(0.5)
    assert mc["n_gt_labels"] == 2
    assert set(mc) == {"nmi", "ari", "mean_label_iou", "mean_label_dice", "n_gt_labels"}
    assert math.isnan(m.evaluate(PRED_MC, np.zeros((4, 4), int), "multiclass")["mean_label_iou"])

    with pytest.raises(ValueError, match="unknown rule"):
        m.evaluate(LABELS, GT_A, "panoptic")


def test_all_outputs_are_plain_python_numbers():
    # Tables and JSON writers want float/int, not numpy scalars.
    for value in m.evaluate(LABELS, GT_A, "best-overlap").values():
        assert type(value) is float
    row = m.per_label_scores(PRED_MC, GT_MC)[0]
    assert type(row["gt_label"]) is int and type(row["pred_label"]) is int


def test_huge_and_negative_label_values():
    # Label values far larger than the image (e.g. hashed ids) or negative must not be bincounted.
    pred = np.array([[10**12, 10**12], [-3, -3]], dtype=np.int64)
    gt = np.array([[1, 1], [0, 0]])
    rows = m.per_label_scores(pred, gt)
    assert rows[0]["pred_label"] == 10**12 and rows[0]["iou"] == 1.0
    np.testing.assert_array_equal(m.best_overlap_foreground(pred, gt), gt > 0)
    assert m.bsds_best_iou(pred, gt) == 1.0
