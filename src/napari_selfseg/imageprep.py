"""Turn whatever array a user has open into the float image a method trains on, or say clearly why not."""
from __future__ import annotations

import numpy as np


class InputError(ValueError):
    """The input cannot be segmented as given; the message says why and what to do."""


def as_channels_last(image: np.ndarray, rgb: bool | None = None) -> np.ndarray:
    """Return a 2D image as ``(Y, X, C)``: gray ``(Y, X)`` gets ``C = 1``, RGBA loses its alpha channel.

    ``rgb`` tells whether a trailing axis of 3 or 4 is colour (napari knows this from the layer); by
    default a trailing axis of 3 or 4 counts as colour.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        return image[..., None]
    if image.ndim == 3 and (rgb if rgb is not None else image.shape[-1] in (3, 4)):
        return image[..., :3] if image.shape[-1] == 4 else image
    raise InputError(
        f"expected a 2D image (Y, X) or (Y, X, RGB), got shape {image.shape}; "
        "pick one slice or time point of a volume first"
    )


def normalise(image: np.ndarray) -> np.ndarray:
    """Scale a ``(Y, X, C)`` image to float32 in [0, 1] per channel.

    uint8 images are divided by 255 (as the source papers do); any other type (uint16 microscopy,
    CT in Hounsfield units, floats) is stretched between its 0.5th and 99.5th percentiles, so a few
    hot pixels or the air around a body do not flatten the contrast.
    """
    if image.size == 0 or min(image.shape[:2]) < 2:
        raise InputError(f"image of shape {image.shape[:2]} is too small to segment (need at least 2x2)")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    data = image.astype(np.float32)
    if not np.isfinite(data).all():
        raise InputError("image contains NaN or infinite values; replace them (e.g. np.nan_to_num) first")
    out = np.empty_like(data)
    for c in range(data.shape[-1]):
        lo, hi = np.percentile(data[..., c], (0.5, 99.5))
        if hi <= lo:
            lo, hi = float(data[..., c].min()), float(data[..., c].max())
        scale = (hi - lo) or 1.0
        out[..., c] = np.clip((data[..., c] - lo) / scale, 0.0, 1.0)
    return out


def prepare_image(image: np.ndarray, rgb: bool | None = None) -> np.ndarray:
    """``(Y, X[, C])`` array of any numeric type -> ``(Y, X, C)`` float32 in [0, 1]."""
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if not (np.issubdtype(image.dtype, np.number)):
        raise InputError(f"cannot segment an image of dtype {image.dtype}")
    return normalise(as_channels_last(image, rgb))
