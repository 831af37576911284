"""Post-processing steps any method can switch on; their switches are parameters like any other."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .params import param


@dataclass
class PostprocessParams:
    """Base class of every method's parameters: the post-processing switches (listed last in panels)."""

    border_components: bool = param(
        False, group="post-processing", label="split border regions",
        help="Give each connected region that touches the image border its own label (air around the body "
             "in CT, dark vignetting in dermoscopy); it can hurt where real structures touch the border (EM)")


def split_border_components(labels: np.ndarray, keep: tuple[int, ...] = ()) -> np.ndarray:
    """Relabel each connected component (face connectivity) touching the border of ``(Y, X)`` or
    ``(Z, Y, X)`` labels.

    Each such component gets a new id above the current maximum; interior regions keep theirs, and
    so do the ids in ``keep`` (e.g. 0, the background of a semantic map).
    """
    labels = np.asarray(labels)
    out = labels.astype(np.int64, copy=True)
    next_id = int(out.max(initial=0)) + 1
    for value in np.unique(labels):
        if value in keep:
            continue
        components, _ = ndimage.label(labels == value)
        faces = [np.take(components, i, axis=a).ravel() for a in range(labels.ndim) for i in (0, -1)]
        border_ids = np.unique(np.concatenate(faces))
        for cid in border_ids[border_ids > 0]:
            out[components == cid] = next_id
            next_id += 1
    return out


def postprocess(labels: np.ndarray, params: Any, per_slice: bool = False, semantic: bool = False) -> np.ndarray:
    """Apply the switched-on steps of ``params`` (a no-op for parameters without the switches).

    ``per_slice``: ``labels`` is a ``(N, Y, X)`` stack of independent planes, processed one by one.
    ``semantic``: 0 is background (a class map), left as it is.
    """
    if not getattr(params, "border_components", False):
        return labels
    keep = (0,) if semantic else ()
    if per_slice:
        return np.stack([split_border_components(plane, keep) for plane in labels])
    return split_border_components(labels, keep)
