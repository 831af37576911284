"""Turn whatever array a user has open into the float image a method trains on, or say clearly why not."""
from __future__ import annotations

import numpy as np


class InputError(ValueError):
    """The input cannot be segmented as given; the message says why and what to do."""


# Preparing an image holds the input, a float32 copy and the float32 result at once (input bytes + 8 per
# value); an input that cannot even be prepared in the free memory is refused before it is loaded.
WORK_BYTES_PER_VALUE = 8


def available_memory() -> int:
    """Bytes of memory free for a new array now (psutil's "available")."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(image) -> None:
    """Raise :class:`InputError` when ``image`` (any array-like with ``shape``: numpy, dask, zarr) is too big
    to prepare in the free memory. Reads only ``shape``, so a lazy array is not loaded to check it."""
    shape = tuple(int(n) for n in getattr(image, "shape", np.shape(image)))
    values = float(np.prod(shape, dtype=np.float64)) if shape else 1.0
    itemsize = np.dtype(getattr(image, "dtype", np.float64)).itemsize
    need, free = values * (itemsize + WORK_BYTES_PER_VALUE), available_memory()
    if need > free:
        raise InputError(
            f"image of shape {shape} needs about {_bytes(need)} to segment but only {_bytes(free)} of memory is "
            "free: crop it, downsample it or pick one slice first"
        )


def _bytes(n: float) -> str:
    """A byte count for people: 3.2 GiB, 140 MiB, 12 KiB."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1024:.0f} KiB"


def check_dtype(dtype) -> None:
    """Raise :class:`InputError` for data that is not real numbers (complex, text, objects)."""
    dtype = np.dtype(dtype)
    if dtype == bool:
        return
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        kind = "complex numbers" if np.issubdtype(dtype, np.complexfloating) else f"dtype {dtype}"
        raise InputError(f"cannot segment an image of {kind}; convert it to real intensities first "
                         "(e.g. np.abs for a complex image)")


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


UNCLIPPED_BOUND = 100.0  # |value| cap of an unclipped stretch: keeps a bright tail, never overflows float32


def normalise(image: np.ndarray, clip: bool = True) -> np.ndarray:
    """Scale a ``(..., Y, X, C)`` image or stack to float32 in [0, 1] per channel (over all planes).

    uint8 images are divided by 255 (as the source papers do); any other type (uint16 microscopy,
    CT in Hounsfield units, floats) is stretched between its 0.5th and 99.5th percentiles, so a few
    hot pixels or the air around a body do not flatten the contrast. ``clip=False`` keeps the values
    outside the percentiles (below 0, above 1; bounded at +-:data:`UNCLIPPED_BOUND`).
    """
    if image.size == 0 or min(image.shape[-3:-1]) < 2:
        raise InputError(f"image of shape {image.shape[:-1]} is too small to segment (need at least 2x2 pixels)")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise InputError("image contains NaN or infinite values; replace them (e.g. np.nan_to_num) first")
    data = _as_float32(image)
    out = np.empty_like(data)
    for c in range(data.shape[-1]):
        lo, hi = np.percentile(data[..., c], (0.5, 99.5))
        if hi <= lo:
            lo, hi = float(data[..., c].min()), float(data[..., c].max())
        scale = (hi - lo) or 1.0
        low, high = (0.0, 1.0) if clip else (-UNCLIPPED_BOUND, UNCLIPPED_BOUND)
        out[..., c] = np.clip((data[..., c] - lo) / scale, low, high)
    return out


def as_uint8(image: np.ndarray) -> np.ndarray:
    """``image`` as uint8 on the scale :func:`normalise` gives it (uint8 unchanged), so that parts of it
    are normalised exactly as the whole (``normalise`` passes uint8 through)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    channels = image if image.ndim == 3 and image.shape[-1] in (3, 4) else image[..., None]
    scaled = np.round(normalise(channels) * 255).astype(np.uint8)
    return scaled if channels is image else scaled[..., 0]


def _as_float32(image: np.ndarray) -> np.ndarray:
    """float32 copy; finite values beyond float32's range (float64 up to 1e308) are scaled down first, which
    the percentile stretch that follows does not see (it is invariant to scale)."""
    if image.dtype.itemsize > 4 and np.issubdtype(image.dtype, np.floating):
        peak = float(np.max(np.abs(image), initial=0.0))
        if peak > 1e37:
            return (image / peak).astype(np.float32)
    return image.astype(np.float32)


def prepare_image(image: np.ndarray, rgb: bool | None = None) -> np.ndarray:
    """``(Y, X[, C])`` array of any numeric type -> ``(Y, X, C)`` float32 in [0, 1]."""
    check_memory(image)
    image = np.asarray(image)
    check_dtype(image.dtype)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    return normalise(as_channels_last(image, rgb))


def prepare_stack(stack: np.ndarray, rgb: bool | None = None, clip: bool = True) -> np.ndarray:
    """``(N, Y, X[, C])`` stack or volume of any numeric type -> ``(N, Y, X, C)`` float32 in [0, 1]
    (``clip=False``: see :func:`normalise`).

    All planes share one normalisation (a slice of air stays dark next to a slice of tissue).
    """
    check_memory(stack)
    stack = np.asarray(stack)
    check_dtype(stack.dtype)
    if stack.dtype == bool:
        stack = stack.astype(np.uint8) * 255
    colour = stack.ndim == 4 and (rgb if rgb is not None else stack.shape[-1] in (3, 4))
    if stack.ndim == 3:
        stack = stack[..., None]
    elif stack.ndim == 4 and colour and stack.shape[-1] == 4:
        stack = stack[..., :3]
    elif stack.ndim == 4 and not colour and stack.shape[-1] > 8:
        raise InputError(f"got 4D data of shape {stack.shape}: pick one time point (a 3D volume) first, or "
                         "put the channels last")
    elif stack.ndim != 4:
        raise InputError(f"expected a stack or volume (Z, Y, X) or (Z, Y, X, C), got shape {stack.shape}")
    if stack.shape[0] == 0:
        raise InputError("the stack has no slices")
    return normalise(stack, clip)
