"""Which 2D plane of a layer the user is looking at, and writing label planes back (GUI thread only)."""
from __future__ import annotations

import numpy as np

from ..imageprep import InputError


def spatial_shape(layer) -> tuple[int, ...]:
    """Shape of a napari Image layer without its RGB(A) axis (full resolution if multiscale)."""
    data = layer.data[0] if layer.multiscale else layer.data
    return tuple(data.shape[:-1]) if layer.rgb else tuple(data.shape)


def displayed_index(viewer, layer) -> tuple[int, ...]:
    """Index of the displayed 2D plane in ``layer``'s data: one integer per leading (non-YX) axis."""
    shape = spatial_shape(layer)
    lead = len(shape) - 2
    if lead <= 0:
        return ()
    point = np.asarray(viewer.dims.point)[-len(shape):]
    data_point = np.asarray(layer.world_to_data(point))
    index = np.clip(np.round(data_point[:lead]).astype(int), 0, np.asarray(shape[:lead]) - 1)
    return tuple(int(i) for i in index)


def image_plane(layer, index: tuple[int, ...]) -> np.ndarray:
    """The ``(Y, X)`` or ``(Y, X, C)`` plane at ``index`` as a numpy array (reads only that plane of lazy data)."""
    data = layer.data[0] if layer.multiscale else layer.data
    return np.asarray(data[index])


def training_input(layer, index: tuple[int, ...], inputs: str) -> tuple[np.ndarray, tuple[int, ...], int]:
    """What a method of ``inputs`` kind trains on, given the displayed plane ``index`` of an Image layer.

    Returns ``(data, prefix, preview)``: a plane for plane methods (prefix = ``index``); the stack of
    planes along the last non-YX axis for stack and volume methods (prefix = the other leading axes,
    e.g. the time point; preview = the displayed slice). A 2D image is a stack of one for stack methods.
    """
    if inputs == "plane":
        return image_plane(layer, index), index, 0
    if not index:
        if inputs == "volume":
            raise InputError("this method segments 3D volumes; the image is 2D")
        return image_plane(layer, ())[None], (), 0
    return image_plane(layer, index[:-1]), index[:-1], index[-1]


def apply_units(shape: tuple[int, ...], index: tuple[int, ...], inputs: str, scope: str) -> list[tuple[int, ...]]:
    """Indices of the parts of an image of spatial ``shape`` that one prediction each labels.

    ``scope``: "displayed" (the displayed plane ``index``; a whole volume for volume methods), "slices"
    (every slice of the displayed time point: the last non-YX axis) or "all" (every time point, i.e. the
    whole layer). Plane methods predict planes; stack and volume methods whole stacks (``index[:-1]``),
    normalised together as in training.
    """
    if len(shape) <= 2:
        return [()]
    if inputs == "plane" or (inputs == "stack" and scope == "displayed"):
        if scope == "displayed":
            return [index]
        if scope == "slices":
            return [index[:-1] + (z,) for z in range(shape[-3])]
        return list(np.ndindex(*shape[:-2]))
    return [index[:-1]] if scope != "all" else list(np.ndindex(*shape[:-3]))


MIN_REGION = 16  # pixels: the smallest side a visible region may have to train on


def visible_region(layer) -> tuple[slice, slice] | None:
    """The ``(Y, X)`` part of ``layer``'s displayed plane inside the canvas (from napari's corner pixels,
    updated on each draw), or None when all of the plane is in view."""
    shape = spatial_shape(layer)[-2:]
    corners = np.asarray(layer.corner_pixels)[:, -2:].astype(float)
    if layer.multiscale:  # corner pixels are in the shown level's pixels: back to full resolution
        factor = np.asarray(layer.downsample_factors[layer.data_level])[-2:]
        corners = np.stack([corners[0] * factor, (corners[1] + 1) * factor - 1])
    corners = np.round(corners).astype(int)
    start = np.clip(corners[0], 0, shape)
    stop = np.clip(corners[1] + 1, 0, shape)
    if tuple(start) == (0, 0) and tuple(stop) == tuple(shape):
        return None
    if np.any(stop - start < MIN_REGION):
        raise InputError(f"only {stop[0] - start[0]}x{stop[1] - start[1]} pixels of '{layer.name}' are in view: "
                         f"zoom out or pan to the image (at least {MIN_REGION}x{MIN_REGION})")
    return slice(int(start[0]), int(stop[0])), slice(int(start[1]), int(stop[1]))


def label_plane(layer, index: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray | None:
    """The part at ``index`` of a Labels layer when it matches the image's spatial ``shape``, else None.

    ``index`` may select a plane or, for stack methods, a whole stack (fewer leading indices).
    """
    data = layer.data
    if tuple(data.shape) == tuple(shape):
        return np.asarray(data[index])
    if tuple(data.shape) == tuple(shape[-2:]) and len(index) == len(shape) - 2:  # a 2D layer over a stack
        return np.asarray(data)
    return None


def write_plane(layer, index: tuple[int, ...], labels: np.ndarray,
                region: tuple[slice, slice] | None = None, layer_list=None) -> None:
    """Write a label plane (or its ``region``) into a Labels layer in place and redraw it (no validation,
    no undo history).

    ``layer_list``: the viewer's layer list, given for an intermediate frame of a streamed training; the
    list then hears nothing of it (its thumbnail and row stay as they were). Why: with software OpenGL
    every repaint outside the canvas composites the whole window once more, ~10 ms per frame taken from
    training; the panel lets the list update with its once-a-second readouts and the final frame.
    """
    plane = layer.data[index] if index else layer.data
    plane[region or ...] = labels
    if layer_list is None:
        layer.refresh()
        return
    with layer_list.events.blocker():
        try:
            layer.refresh(thumbnail=False, extent=False, highlight=False)
        except TypeError:  # napari without refresh's keywords
            layer.refresh()
