"""Small operations on integer label maps shared by the engine, the API and the panels."""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def smallest_dtype(max_label: int) -> np.dtype:
    """uint8 / uint16 / uint32 for label ids up to ``max_label`` (napari draws the small ones fastest)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_label <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _dense(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary ids to 0..n-1; returns (dense map, the original id of each dense id)."""
    labels = np.asarray(labels)
    if labels.size and labels.min() >= 0 and labels.max() < 4 * labels.size + 1024:
        present = np.flatnonzero(np.bincount(labels.ravel()))
        lookup = np.zeros(int(labels.max()) + 1, dtype=np.int64)
        lookup[present] = np.arange(len(present))
        return lookup[labels], present
    ids, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape), ids


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel to 1..n, the largest region first (ties by original id): the same partition -> same ids."""
    dense, _ = _dense(labels)
    sizes = np.bincount(dense.ravel())
    order = np.lexsort((np.arange(len(sizes)), -sizes))
    new_id = np.empty(len(sizes), dtype=np.int64)
    new_id[order] = np.arange(1, len(sizes) + 1)
    return new_id[dense]


def match_labels(labels: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Relabel ``labels`` so each cluster takes the id of the ``reference`` cluster it overlaps most.

    A one-to-one assignment maximising the total overlap (Hungarian); clusters left unmatched get the
    smallest ids not used by a match. Keeps colours steady between frames of a live training.
    Both arrays have the same shape; ids of the result start at 1.
    """
    if labels.shape != reference.shape:
        return canonical_labels(labels)
    dense, _ = _dense(labels)
    ref_dense, ref_ids = _dense(reference)
    n, m = int(dense.max()) + 1, len(ref_ids)
    overlap = np.bincount((dense * m + ref_dense).ravel(), minlength=n * m).reshape(n, m)
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    new_id = np.zeros(n, dtype=np.int64)
    keep = overlap[rows, cols] > 0
    new_id[rows[keep]] = ref_ids[cols[keep]]
    used = set(int(i) for i in new_id[rows[keep]]) | {0}
    free = (i for i in range(1, n + m + 2) if i not in used)
    for cluster in np.flatnonzero(new_id == 0):
        new_id[cluster] = next(free)
    return new_id[dense]


def resize_labels(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resize of a ``(y, x)`` label map to ``shape`` (no new ids, no blending)."""
    if labels.shape == tuple(shape):
        return labels
    index = np.ix_(*[
        np.minimum((np.arange(out) + 0.5) * (inp / out), inp - 1).astype(np.intp)
        for inp, out in zip(labels.shape, shape)
    ])
    return labels[index]


def ground_truth(labels: np.ndarray, unannotated_slices: bool = False) -> np.ndarray:
    """Ground truth as the engine takes it: int64 with -1 = unlabelled, 0 = background.

    A binary mask stored as 0 / v (0 / 255, 0 / 1, bool) becomes 0 / 1; multi-class ids are kept.
    ``unannotated_slices``: ``labels`` is a stack a user painted (a napari Labels layer), so a plane
    along the first axis with no nonzero pixel was not annotated and becomes -1 as a whole.
    """
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError(f"ground truth must hold integer class ids, got {labels.dtype} values")
    out = labels.astype(np.int64)
    values = np.unique(out[out >= 0])
    if len(values) == 2 and values[0] == 0 and values[1] > 1:
        out[out == values[1]] = 1
    if unannotated_slices and out.ndim >= 3:
        annotated = (out > 0).reshape(out.shape[0], -1).any(axis=1)
        out[~annotated] = -1
    return out
