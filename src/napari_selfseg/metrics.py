"""Segmentation quality metrics (numpy / scipy / scikit-image / scikit-learn only).

Conventions used throughout:

* Binary masks: any value ``> 0`` (or ``True``) is foreground. Shapes are ``(Y, X)`` or ``(Z, Y, X)``
  (any dimensionality works); prediction and ground truth must have the same shape, otherwise a
  ``ValueError`` is raised.
* Label maps: integer arrays of any shape, every distinct value is one cluster / segment. Unless a
  function says otherwise, label ``0`` is an ordinary cluster id, not "background".
* Edge cases (documented per function): both masks empty -> IoU = Dice = 1, Hammoude = XOR = 0,
  Hausdorff = 0; exactly one mask empty -> Hausdorff = ``inf``; empty ground truth with a non-empty
  prediction -> XOR = ``inf`` (its denominator is ``|G|``).

Two matching protocols are provided for unsupervised (cluster) predictions:

(a) *best-overlap* (spatially guided clustering papers, PH2 / binary medical sets): the predicted
    cluster sharing the most pixels with the ground-truth foreground becomes the foreground, see
    :func:`best_overlap_foreground` and :func:`binary_scores`.
(b) *BSDS500 best-IoU* (differentiable feature clustering papers): predicted labels are split into
    connected components and each ground-truth segment is scored by its best IoU with any component,
    see :func:`bsds_best_iou` and :func:`bsds_scores`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse
from skimage.measure import label as connected_components
from sklearn.metrics import mutual_info_score

__all__ = [
    "iou",
    "dice",
    "hammoude",
    "xor_error",
    "hausdorff",
    "nmi",
    "adjusted_rand",
    "best_overlap_foreground",
    "binary_scores",
    "bsds_best_iou",
    "bsds_scores",
    "per_label_scores",
    "evaluate",
    "RULES",
]

RULES = ("best-overlap", "foreground", "bsds", "multiclass")

# Dense contingency tables above this many cells would cost too much memory (e.g. a noisy label map
# with ~1e5 connected components against ~100 GT segments); beyond it a sparse np.unique path is used.
_MAX_DENSE_CELLS = 1 << 24


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _check_same_shape(a: np.ndarray, b: np.ndarray, names: str = "pred and gt") -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape, got {a.shape} and {b.shape}")


def _as_masks(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    _check_same_shape(pred, gt)
    return pred > 0, gt > 0


def _overlap_counts(pred, gt) -> tuple[int, int, int]:
    """Return ``(|P|, |G|, |P ∩ G|)`` as Python ints."""
    p, g = _as_masks(pred, gt)
    return int(p.sum()), int(g.sum()), int(np.logical_and(p, g).sum())


def _dense_ids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary label values to ``0..n-1``; returns ``(values, ids)`` with ``ids`` shaped like input."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    if labels.dtype.kind in "iu" and labels.size and labels.min() >= 0 and labels.max() <= labels.size:
        # Small non-negative ints (the usual case): a bincount lookup is O(N), np.unique sorts (O(N log N)).
        present = np.bincount(labels.ravel()) > 0
        lookup = np.cumsum(present) - 1
        return np.flatnonzero(present).astype(labels.dtype), lookup[labels]
    values, ids = np.unique(labels, return_inverse=True)
    return values, ids.reshape(labels.shape)


def _contingency(a_ids: np.ndarray, b_ids: np.ndarray, n_a: int, n_b: int):
    """Sparse contingency table of two dense-id maps: ``(rows, cols, counts)`` of non-zero cells."""
    key = a_ids.ravel().astype(np.int64) * n_b + b_ids.ravel()
    if n_a * n_b <= _MAX_DENSE_CELLS:
        table = np.bincount(key, minlength=n_a * n_b)
        cells = np.flatnonzero(table)
        counts = table[cells]
    else:
        cells, counts = np.unique(key, return_counts=True)
    return cells // n_b, cells % n_b, counts


def _pairwise_iou(a_ids, b_ids, n_a, n_b):
    """IoU of every overlapping (a, b) pair: ``(rows, cols, intersections, ious)``; areas from bincount."""
    rows, cols, inter = _contingency(a_ids, b_ids, n_a, n_b)
    area_a = np.bincount(a_ids.ravel(), minlength=n_a)
    area_b = np.bincount(b_ids.ravel(), minlength=n_b)
    union = area_a[rows] + area_b[cols] - inter
    return rows, cols, inter, inter / union


# --------------------------------------------------------------------------------------------------
# binary overlap scores
# --------------------------------------------------------------------------------------------------
def iou(pred, gt) -> float:
    """Intersection over union (Jaccard index) of two binary masks.

    Parameters
    ----------
    pred, gt : array_like, shape (Y, X) or (Z, Y, X) (any shape, identical)
        Masks; values ``> 0`` are foreground.

    Returns
    -------
    float
        ``|P ∩ G| / |P ∪ G|`` in [0, 1]. Both masks empty -> 1.0 (perfect agreement on "nothing").
    """
    p, g, inter = _overlap_counts(pred, gt)
    union = p + g - inter
    return 1.0 if union == 0 else inter / union


def dice(pred, gt) -> float:
    """Dice similarity coefficient (DSC, F1) of two binary masks.

    Parameters
    ----------
    pred, gt : array_like, same shape
        Masks; values ``> 0`` are foreground.

    Returns
    -------
    float
        ``2 |P ∩ G| / (|P| + |G|)`` in [0, 1]. Both masks empty -> 1.0.
    """
    p, g, inter = _overlap_counts(pred, gt)
    return 1.0 if p + g == 0 else 2.0 * inter / (p + g)


def hammoude(pred, gt) -> float:
    """Hammoude distance ``1 - IoU`` of two binary masks, in [0, 1]. Both empty -> 0.0."""
    return 1.0 - iou(pred, gt)


def xor_error(pred, gt) -> float:
    """XOR error ``(|P| + |G| - 2 |P ∩ G|) / |G|``: mislabelled pixels relative to the GT size.

    Parameters
    ----------
    pred, gt : array_like, same shape
        Masks; values ``> 0`` are foreground.

    Returns
    -------
    float
        ``>= 0`` and unbounded above (a prediction much larger than the GT gives values > 1).
        Both masks empty -> 0.0. Empty GT with a non-empty prediction -> ``inf`` (division by ``|G| = 0``).
    """
    p, g, inter = _overlap_counts(pred, gt)
    wrong = p + g - 2 * inter
    if g == 0:
        return 0.0 if wrong == 0 else float("inf")
    return wrong / g


# --------------------------------------------------------------------------------------------------
# Hausdorff distance
# --------------------------------------------------------------------------------------------------
def _boundary(mask: np.ndarray) -> np.ndarray:
    """Inner boundary: foreground pixels with a face-connected background neighbour.

    The array border counts as background, so an object touching the image edge has a boundary there.
    A single pixel (or a one-pixel-thin object) is entirely boundary.
    """
    structure = ndi.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndi.binary_erosion(mask, structure=structure, border_value=0)


def _directed_distances(src: np.ndarray, dst: np.ndarray, spacing) -> np.ndarray:
    """Distance from every pixel of ``src`` to the nearest pixel of ``dst`` (Euclidean, scaled by spacing)."""
    # EDT of the complement gives, at each pixel, the distance to the nearest dst pixel: O(N), not O(|src|·|dst|).
    dist_to_dst = ndi.distance_transform_edt(~dst, sampling=spacing)
    return dist_to_dst[src]


def hausdorff(pred, gt, percentile: float = 100.0, spacing: Sequence[float] | None = None) -> float:
    """Symmetric (percentile) Hausdorff distance between the boundaries of two binary masks.

    Distances are measured between *boundary* pixels (foreground pixels with a face-connected
    background neighbour, the array border counting as background), as in medpy / MONAI, so a
    prediction that lies strictly inside the GT still has a non-zero distance.

    Parameters
    ----------
    pred, gt : array_like, shape (Y, X) or (Z, Y, X), same shape
        Masks; values ``> 0`` are foreground.
    percentile : float, default 100
        100 gives the classic Hausdorff distance (maximum); 95 gives HD95. Each directed distance set
        (pred -> gt and gt -> pred) is reduced with this percentile and the larger of the two returned.
    spacing : sequence of float, optional
        Pixel size per axis (e.g. ``(dz, dy, dx)`` in mm); the result is then in those units.
        Default: pixel units (spacing 1 on every axis).

    Returns
    -------
    float
        Both masks empty -> 0.0; exactly one empty -> ``inf``.
    """
    p, g = _as_masks(pred, gt)
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    if spacing is not None and len(spacing) != p.ndim:
        raise ValueError(f"spacing needs one value per axis ({p.ndim}), got {tuple(spacing)}")
    has_p, has_g = p.any(), g.any()
    if not has_p and not has_g:
        return 0.0
    if not has_p or not has_g:
        return float("inf")
    # Cropping to the bounding box of both masks changes nothing (every pixel just outside it is
    # background, as the array border is) but makes the distance transforms far cheaper on volumes.
    box = ndi.find_objects((p | g).view(np.uint8))[0]
    bp, bg = _boundary(p[box]), _boundary(g[box])
    d_pg = _directed_distances(bp, bg, spacing)
    d_gp = _directed_distances(bg, bp, spacing)
    return float(max(np.percentile(d_pg, percentile), np.percentile(d_gp, percentile)))


# --------------------------------------------------------------------------------------------------
# label-map agreement
# --------------------------------------------------------------------------------------------------
def _label_contingency(pred, gt) -> sparse.csr_matrix:
    """Sparse contingency table, GT labels as rows and predicted labels as columns (int64 counts)."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    _check_same_shape(pred, gt)
    gt_values, gt_ids = _dense_ids(gt)
    pred_values, pred_ids = _dense_ids(pred)
    rows, cols, counts = _contingency(gt_ids, pred_ids, len(gt_values), len(pred_values))
    shape = (len(gt_values), len(pred_values))
    return sparse.csr_matrix((counts.astype(np.int64), (rows, cols)), shape=shape)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(pred, gt) -> float:
    """Normalized mutual information of two label maps of any (identical) shape, in [0, 1].

    Label values are arbitrary (permutation invariant). Same definition and special cases as
    :func:`sklearn.metrics.normalized_mutual_info_score` (arithmetic normalisation): two maps that each
    hold a single label score 1.0. The contingency table is built here with an O(N) bincount and
    handed to :func:`sklearn.metrics.mutual_info_score`, because sklearn's own label path sorts the
    labels several times (seconds on a 240x240x155 volume).
    """
    table = _label_contingency(pred, gt)
    if table.shape[0] == table.shape[1] <= 1:  # no split in either map (or no pixels): perfect match
        return 1.0
    mi = mutual_info_score(None, None, contingency=table.astype(np.float64))
    if mi <= 0:
        return 0.0
    h_gt = _entropy(np.ravel(table.sum(axis=1)))
    h_pred = _entropy(np.ravel(table.sum(axis=0)))
    return float(mi / ((h_gt + h_pred) / 2))


def adjusted_rand(pred, gt) -> float:
    """Adjusted Rand index of two label maps of any (identical) shape, in [-0.5, 1], 0 ~ chance.

    Same definition and special cases as :func:`sklearn.metrics.adjusted_rand_score` (its pair
    confusion formula, evaluated on an O(N) contingency table): identical partitions, including two
    single-label maps, score 1.0.
    """
    table = _label_contingency(pred, gt)
    n = int(table.sum())
    gt_sizes, pred_sizes = np.ravel(table.sum(axis=1)), np.ravel(table.sum(axis=0))
    sum_squares = int((table.data.astype(np.int64) ** 2).sum())
    # Python ints: pair counts of large volumes overflow int64 when multiplied below.
    tp = sum_squares - n
    fp = int(table.dot(pred_sizes).sum()) - sum_squares
    fn = int(table.T.dot(gt_sizes).sum()) - sum_squares
    tn = n * n - fp - fn - sum_squares
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


# --------------------------------------------------------------------------------------------------
# matching rule (a): best-overlap cluster becomes the foreground
# --------------------------------------------------------------------------------------------------
def best_overlap_foreground(labels, gt_mask) -> np.ndarray:
    """Foreground mask from a cluster map: the cluster overlapping the GT foreground most.

    Parameters
    ----------
    labels : array_like of int, shape (Y, X) or (Z, Y, X)
        Predicted cluster ids. Label 0 is an ordinary cluster (clustering methods have no background).
    gt_mask : array_like, same shape
        Ground-truth foreground (values ``> 0``).

    Returns
    -------
    ndarray of bool, same shape
        ``labels == c`` where ``c`` maximises the pixel count of ``(labels == c) & gt_mask``. Ties go to
        the smallest label value. If the GT is empty no cluster overlaps it and the result is all False.
    """
    labels = np.asarray(labels)
    gt = np.asarray(gt_mask)
    _check_same_shape(labels, gt, "labels and gt_mask")
    gt = gt > 0
    if not gt.any():
        return np.zeros(labels.shape, dtype=bool)
    values, ids = _dense_ids(labels)
    overlap = np.bincount(ids[gt], minlength=len(values))
    return ids == int(np.argmax(overlap))


def binary_scores(labels, gt_mask, rule: str = "best-overlap", spacing=None) -> dict[str, float]:
    """Binary scores of a predicted label map against a GT mask.

    Parameters
    ----------
    labels : array_like of int, shape (Y, X) or (Z, Y, X)
        Predicted clusters (rule ``"best-overlap"``) or a mask / labels where ``> 0`` is foreground
        (rule ``"foreground"``).
    gt_mask : array_like, same shape
        Ground-truth foreground (values ``> 0``).
    rule : {"best-overlap", "foreground"}
        How the predicted foreground is chosen, see :func:`best_overlap_foreground`.
    spacing : sequence of float, optional
        Pixel size per axis for ``hd95`` (physical units); default pixel units.

    Returns
    -------
    dict
        ``dsc``, ``iou``, ``hammoude``, ``xor``, ``hd95`` (edge cases as in the individual functions).
    """
    if rule == "best-overlap":
        pred = best_overlap_foreground(labels, gt_mask)
    elif rule == "foreground":
        pred = np.asarray(labels) > 0
    else:
        raise ValueError(f"rule must be 'best-overlap' or 'foreground', got {rule!r}")
    gt = np.asarray(gt_mask) > 0
    _check_same_shape(pred, gt, "labels and gt_mask")
    return {
        "dsc": dice(pred, gt),
        "iou": iou(pred, gt),
        "hammoude": hammoude(pred, gt),
        "xor": xor_error(pred, gt),
        "hd95": hausdorff(pred, gt, percentile=95.0, spacing=spacing),
    }


# --------------------------------------------------------------------------------------------------
# matching rule (b): BSDS500 best IoU over connected components
# --------------------------------------------------------------------------------------------------
def _component_ids(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Split a label map into face-connected components; every label (0 included) forms regions."""
    _, ids = _dense_ids(labels)
    # Shift by one so that no value is skimage's background (0): label 0 becomes a region too.
    components = connected_components(ids + 1, background=0, connectivity=1)
    return components - 1, int(components.max())


def _best_iou_per_gt_segment(comp_ids, n_comp, gt_segmentation) -> float:
    gt_segmentation = np.asarray(gt_segmentation)
    _check_same_shape(comp_ids, gt_segmentation, "labels and gt segmentation")
    _, gt_ids = _dense_ids(gt_segmentation)
    n_gt = int(gt_ids.max()) + 1
    _, cols, _, ious = _pairwise_iou(comp_ids, gt_ids, n_comp, n_gt)
    best = np.zeros(n_gt)
    np.maximum.at(best, cols, ious)
    return float(best.mean())


def bsds_best_iou(labels, gt_segmentation) -> float:
    """BSDS500 mean best IoU, as used by the differentiable feature clustering papers.

    The predicted label map is split into connected components (4-connectivity in 2D, face
    connectivity in 3D; label 0 is a region like any other). For every GT segment (every distinct
    value of ``gt_segmentation``) the best IoU over all predicted components is taken; the result is
    the unweighted mean over GT segments.

    Parameters
    ----------
    labels : array_like of int, shape (Y, X)
        Predicted label map.
    gt_segmentation : array_like of int, same shape
        One human segmentation (BSDS ``Segmentation`` field, regions numbered from 1).

    Returns
    -------
    float
        In (0, 1]; 1.0 when the components reproduce the GT segments exactly.
    """
    comp_ids, n_comp = _component_ids(np.asarray(labels))
    return _best_iou_per_gt_segment(comp_ids, n_comp, gt_segmentation)


def bsds_scores(labels, gt_segmentations: Sequence) -> dict:
    """:func:`bsds_best_iou` against each of several human annotations of one image.

    Returns
    -------
    dict
        ``per_annotation`` (list of float, in annotation order), ``mean`` (their mean) and ``best``
        (the best annotation's score).
    """
    if len(gt_segmentations) == 0:
        raise ValueError("gt_segmentations must hold at least one annotation")
    comp_ids, n_comp = _component_ids(np.asarray(labels))  # computed once, shared by all annotations
    scores = [_best_iou_per_gt_segment(comp_ids, n_comp, gt) for gt in gt_segmentations]
    return {"per_annotation": scores, "mean": float(np.mean(scores)), "best": float(np.max(scores))}


# --------------------------------------------------------------------------------------------------
# multi-class
# --------------------------------------------------------------------------------------------------
def per_label_scores(pred_labels, gt_labels) -> list[dict]:
    """Best-matching predicted label for every GT label ``> 0`` (rows for a metrics table).

    Parameters
    ----------
    pred_labels : array_like of int, shape (Y, X) or (Z, Y, X)
        Predicted label map; every value (0 included) is a candidate match.
    gt_labels : array_like of int, same shape
        Ground-truth labels; 0 is background and gets no row.

    Returns
    -------
    list of dict
        One dict per GT label in increasing order with ``gt_label``, ``pred_label`` (max IoU, ties to
        the smallest value), ``iou``, ``dice`` and ``gt_pixels``. A GT label that overlaps no
        prediction cannot happen (every pixel has a predicted label), so IoU is always > 0.
    """
    pred, gt = np.asarray(pred_labels), np.asarray(gt_labels)
    _check_same_shape(pred, gt, "pred_labels and gt_labels")
    pred_values, pred_ids = _dense_ids(pred)
    gt_values, gt_ids = _dense_ids(gt)
    rows, cols, _, ious = _pairwise_iou(pred_ids, gt_ids, len(pred_values), len(gt_values))
    gt_area = np.bincount(gt_ids.ravel(), minlength=len(gt_values))
    results = []
    for col, gt_value in enumerate(gt_values):
        if gt_value <= 0:
            continue
        here = np.flatnonzero(cols == col)
        best = here[np.argmax(ious[here])]  # rows are sorted, so argmax ties go to the smallest label
        best_iou = float(ious[best])
        results.append({
            "gt_label": gt_value.item(),
            "pred_label": pred_values[rows[best]].item(),
            "iou": best_iou,
            "dice": 2 * best_iou / (1 + best_iou),  # Dice and IoU of the same pair are monotone-related
            "gt_pixels": int(gt_area[col]),
        })
    return results


# --------------------------------------------------------------------------------------------------
# one call for a results table
# --------------------------------------------------------------------------------------------------
def evaluate(pred, gt, rule: str, spacing=None) -> dict[str, float]:
    """Flat dict of numbers for one prediction, following a data set's evaluation protocol.

    Parameters
    ----------
    pred : array_like of int
        Predicted label map, shape (Y, X) or (Z, Y, X).
    gt : array_like or list of array_like
        Ground truth: a mask (``"best-overlap"``, ``"foreground"``), one segmentation or a list of
        annotations (``"bsds"``), a label map (``"multiclass"``).
    rule : {"best-overlap", "foreground", "bsds", "multiclass"}
        ``"best-overlap"`` / ``"foreground"``: :func:`binary_scores` (dsc, iou, hammoude, xor, hd95).
        ``"bsds"``: ``bsds_mean``, ``bsds_best``, ``n_annotations``.
        ``"multiclass"``: ``nmi``, ``ari``, ``mean_label_iou``, ``mean_label_dice``, ``n_gt_labels``
        (means over GT labels > 0; NaN when the GT has none).
    spacing : sequence of float, optional
        Pixel size per axis, used for hd95 only.
    """
    if rule in ("best-overlap", "foreground"):
        return binary_scores(pred, gt, rule=rule, spacing=spacing)
    if rule == "bsds":
        annotations = list(gt) if isinstance(gt, (list, tuple)) else [gt]
        scores = bsds_scores(pred, annotations)
        return {"bsds_mean": scores["mean"], "bsds_best": scores["best"], "n_annotations": len(annotations)}
    if rule == "multiclass":
        rows = per_label_scores(pred, gt)
        return {
            "nmi": nmi(pred, gt),
            "ari": adjusted_rand(pred, gt),
            "mean_label_iou": float(np.mean([r["iou"] for r in rows])) if rows else float("nan"),
            "mean_label_dice": float(np.mean([r["dice"] for r in rows])) if rows else float("nan"),
            "n_gt_labels": len(rows),
        }
    raise ValueError(f"unknown rule {rule!r}; expected one of {RULES}")
