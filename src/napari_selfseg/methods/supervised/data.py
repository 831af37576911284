"""Training data of the supervised methods: a stack of 2D slices, some with ground truth (no Qt).

Shapes: the prepared stack is ``(N, Y, X, C)`` float32 in [0, 1]; ground truth ``(N, Y, X)`` int64 with
-1 = unlabelled (whole slices or single pixels) and class values otherwise. On the device everything is
channels-first at the training resolution: images ``(N, C, h, w)``, class indices ``(N, h, w)`` (-1 kept).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ...imageprep import InputError, as_channels_last, prepare_image
from ... import metrics


def prepare(image: np.ndarray, params, rgb: bool | None = None) -> np.ndarray:
    """Raw plane ``(Y, X[, C])`` or stack ``(N, Y, X[, C])`` -> ``(..., Y, X, C)`` float32 in [0, 1].

    Each plane is normalised on its own (``intensity="percentile"``: 0.5-99.5 percentile stretch, uint8 / 255),
    so a slice is prepared the same way whether it was trained on in a stack or labelled alone later;
    ``intensity="hounsfield"`` maps the fixed CT window ``[hu_low, hu_high]`` to [0, 1] instead.
    """
    image = np.asarray(image)
    colour = image.ndim >= 3 and (rgb if rgb is not None else image.shape[-1] in (3, 4))
    if image.ndim - int(colour) == 2:
        return _prepare_plane(image, params, rgb)
    if image.ndim - int(colour) != 3:
        raise InputError(f"expected a 2D image or a stack of 2D slices, got shape {image.shape}")
    return np.stack([_prepare_plane(plane, params, rgb) for plane in image])


# The smallest slice side the networks take: the critics' four stride-2 convolutions and batch norm at the
# U-Net's bottom level need at least this many pixels.
MIN_SIDE = 16


def _prepare_plane(plane: np.ndarray, params, rgb: bool | None) -> np.ndarray:
    if min(plane.shape[:2]) < MIN_SIDE:
        raise InputError(f"slices of {plane.shape[0]}x{plane.shape[1]} pixels are too small for these networks "
                         f"(at least {MIN_SIDE}x{MIN_SIDE})")
    if getattr(params, "intensity", "percentile") == "hounsfield":
        data = as_channels_last(plane, rgb).astype(np.float32)
        span = max(params.hu_high - params.hu_low, 1e-6)
        return np.clip((data - params.hu_low) / span, 0.0, 1.0)
    return prepare_image(plane, rgb)


def effective_max_side(params, device: torch.device) -> int:
    """The longer side (pixels) slices are trained at: ``params.max_side``, or 0 (= full resolution) on a
    CUDA GPU when ``full_resolution_on_gpu``."""
    if device.type == "cuda" and params.full_resolution_on_gpu:
        return 0
    return int(params.max_side)


def min_grid_side(depth: int) -> int:
    """The shortest side (pixels) of the grid a U-Net of ``depth`` poolings trains on: its bottom level at
    least 2x2 (batch norm needs more than one value per channel, even in a minibatch of one slice) and at
    least the critics' :data:`MIN_SIDE`."""
    return max(MIN_SIDE, 2 ** (depth + 1))


def training_size(shape: tuple[int, int], max_side: int, min_side: int = MIN_SIDE) -> tuple[int, int]:
    """The ``(h, w)`` grid a ``(Y, X)`` slice is trained and predicted on: longer side at most ``max_side``
    (0 = full resolution), aspect ratio kept, but no side under ``min_side`` (small slices are upsampled)."""
    h, w = int(shape[0]), int(shape[1])
    if max_side > 0 and max(h, w) > max_side:
        scale = max_side / max(h, w)
        h, w = round(h * scale), round(w * scale)
    return max(min_side, h), max(min_side, w)


def to_grid(images: np.ndarray, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """``(N, Y, X, C)`` float images -> ``(N, C, h, w)`` tensor on ``device``, area-averaged to ``size``."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="area")


def class_values(labels: np.ndarray) -> np.ndarray:
    """The sorted class values present in ``labels`` (ids >= 0); at least two are needed to learn."""
    values = np.unique(labels[labels >= 0])
    if len(values) < 2:
        raise InputError(f"the ground truth holds {len(values)} class(es) ({values.tolist()}); paint at least "
                         "the background (0) and one structure in some slices")
    return values


def to_indices(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Class values ``(..., Y, X)`` -> class indices 0..K-1 (unknown values and -1 -> -1)."""
    out = np.full(labels.shape, -1, dtype=np.int64)
    for i, v in enumerate(values):
        out[labels == v] = i
    return out


def split(labelled: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle labelled slice indices into (train, validation): ``round(fraction * n)`` validation slices,
    at least 1 and leaving at least 1 to train on; with a single labelled slice it serves as both."""
    order = np.random.default_rng(seed).permutation(labelled)
    if len(order) < 2 or fraction <= 0:
        return order, order
    n_val = min(len(order) - 1, max(1, round(fraction * len(order))))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class StackData:
    """The stack on the device at training resolution, its class values and its train/validation split."""

    def __init__(self, image: np.ndarray, labels: np.ndarray | None, params, device: torch.device, seed: int):
        if labels is None or not np.any(labels >= 0):
            raise InputError("this method learns from ground truth: choose a Labels layer with painted slices")
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != image.shape[:-1]:
            raise InputError(f"ground truth of shape {labels.shape} does not match the stack's {image.shape[:-1]}")
        self.values = class_values(labels)
        self.full_labels = to_indices(labels, self.values)  # (N, Y, X) at full resolution, for validation
        self.max_side = effective_max_side(params, device)
        self.size = training_size(image.shape[1:3], self.max_side, min_grid_side(params.depth))
        self.images = to_grid(image, self.size, device)
        y = torch.from_numpy(self.full_labels)[:, None].float()
        self.labels = F.interpolate(y, size=self.size, mode="nearest")[:, 0].long().to(device)
        # the U-Net paper's separation weights, from whole slices (a crop would lose the neighbours of
        # the objects at its edge); cropped and augmented with the labels
        self.weights = (torch.from_numpy(border_weights(self.labels.cpu().numpy(), params.border_weight,
                                                        params.border_sigma)).to(device)
                        if params.border_weight > 0 else None)
        has_labels = (self.full_labels >= 0).reshape(len(labels), -1).any(1)
        self.train, self.val = split(np.flatnonzero(has_labels), params.val_fraction, seed)
        self.unlabelled = np.flatnonzero(~has_labels)

    @property
    def n_classes(self) -> int:
        return len(self.values)


def batch_indices(pool: np.ndarray, batch: int, generator: torch.Generator, state: dict,
                  repeats: int = 1) -> tuple[np.ndarray, bool]:
    """The next ``batch`` indices from ``pool`` (each slice ``repeats`` times per pass: patches of a slice),
    reshuffled each pass; returns them and whether the pass (an epoch) ended with this batch. ``state``
    keeps the order and position between calls."""
    if state.get("order") is None or state["pos"] >= len(state["order"]):
        pool = np.tile(pool, max(1, repeats))
        state["order"] = pool[torch.randperm(len(pool), generator=generator).numpy()]
        state["pos"] = 0
    take = state["order"][state["pos"]:state["pos"] + batch]
    state["pos"] += len(take)
    return take, state["pos"] >= len(state["order"])


def random_crop(x: torch.Tensor, y: torch.Tensor | None, patch: int, generator: torch.Generator):
    """A random ``patch`` x ``patch`` crop of each sample of ``x`` ``(B, C, h, w)`` (and ``y`` ``(B, h, w)``);
    no-op for ``patch`` 0 or larger than the slice."""
    h, w = x.shape[-2:]
    if patch <= 0 or (patch >= h and patch >= w):
        return x, y
    ph, pw = min(patch, h), min(patch, w)
    tops = torch.randint(0, h - ph + 1, (len(x),), generator=generator).tolist()
    lefts = torch.randint(0, w - pw + 1, (len(x),), generator=generator).tolist()
    xs = torch.stack([x[i, :, t:t + ph, l:l + pw] for i, (t, l) in enumerate(zip(tops, lefts))])
    ys = None if y is None else torch.stack([y[i, t:t + ph, l:l + pw] for i, (t, l) in enumerate(zip(tops, lefts))])
    return xs, ys


def augment(x: torch.Tensor, y: torch.Tensor | None, jitter: float, generator: torch.Generator,
            channels: int | None = None):
    """Random flips, a multiple of 90-degree rotation (the same for image and labels) and intensity jitter
    (per sample gain ``1 +- jitter`` and offset ``+- jitter``, images only: the first ``channels`` channels,
    all by default; the others, e.g. loss weights carried along, only turn) of a batch ``(B, C, h, w)``."""
    draw = torch.rand(4, generator=generator).tolist()
    dims = [d for d, flip in ((-1, draw[0] < 0.5), (-2, draw[1] < 0.5)) if flip]
    k = int(draw[2] * 4) % 4
    if dims:
        x = x.flip(dims)
        y = None if y is None else y.flip(dims)
    if k:
        x = torch.rot90(x, k, (-2, -1))
        y = None if y is None else torch.rot90(y, k, (-2, -1))
    if jitter > 0:
        gain = 1 + (torch.rand(len(x), 1, 1, 1, generator=generator) * 2 - 1) * jitter
        offset = (torch.rand(len(x), 1, 1, 1, generator=generator) * 2 - 1) * jitter
        n = x.shape[1] if channels is None else channels
        x = torch.cat([x[:, :n] * gain.to(x.device) + offset.to(x.device), x[:, n:]], 1)
    return x.contiguous(), None if y is None else y.contiguous()


def elastic_deform(x: torch.Tensor, y: torch.Tensor | None, strength: float, generator: torch.Generator,
                   grid: int = 3):
    """Smooth random elastic deformation of a batch ``(B, C, h, w)`` (and labels ``(B, h, w)``, -1 kept), as
    in the U-Net paper: random displacements drawn with a standard deviation of ``strength`` pixels on a
    coarse ``grid`` x ``grid`` lattice over each sample, interpolated bicubically to every pixel. Images are
    resampled bilinearly, labels by nearest neighbour; the image edge is mirrored."""
    if strength <= 0:
        return x, y
    b, _, h, w = x.shape
    coarse = torch.randn(b, 2, grid, grid, generator=generator) * strength
    shift = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True).to(x.device)
    # pixel displacements -> grid_sample's [-1, 1] coordinates (x first)
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], device=x.device).view(1, 2, 1, 1)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device), torch.linspace(-1, 1, w, device=x.device),
                            indexing="ij")
    where = (torch.stack([xs, ys])[None] + shift * scale).permute(0, 2, 3, 1)
    x = F.grid_sample(x, where.to(x.dtype), mode="bilinear", padding_mode="reflection", align_corners=True)
    if y is not None:
        y = F.grid_sample(y[:, None].float(), where, mode="nearest", padding_mode="reflection",
                          align_corners=True)[:, 0].round().long()
    return x, y


def border_weights(indices: np.ndarray, weight: float, sigma: float) -> np.ndarray:
    """The U-Net paper's separation weights ``(B, h, w)`` float32 of class indices ``(B, h, w)`` (-1 =
    unlabelled, weight 0): on background pixels (index 0) ``1 + weight * exp(-(d1 + d2)^2 / (2 sigma^2))``,
    with d1 and d2 the distances (pixels) to the nearest and second-nearest object (a connected region of
    non-background classes), so the thin gaps between touching objects (EM membranes between cells) weigh up
    to ``1 + weight``; 1 elsewhere.
    """
    out = np.ones(indices.shape, np.float32)
    reach = int(np.ceil(4 * sigma))  # beyond this the term is below exp(-8) of its peak
    for plane, idx in zip(out, indices):
        objects, n = ndi.label(idx > 0)
        if n < 2 or weight <= 0:
            continue
        d1 = np.full(idx.shape, np.inf, np.float32)
        d2 = d1.copy()
        for k, box in enumerate(ndi.find_objects(objects), start=1):
            win = tuple(slice(max(b.start - reach, 0), min(b.stop + reach, size)) for b, size in zip(box, idx.shape))
            d = ndi.distance_transform_edt(objects[win] != k).astype(np.float32)
            near, second = d1[win], d2[win]
            d2[win] = np.minimum(second, np.maximum(near, d))
            d1[win] = np.minimum(near, d)
        with np.errstate(over="ignore", invalid="ignore"):
            plane += weight * np.nan_to_num(np.exp(-((d1 + d2) ** 2) / (2 * sigma ** 2))) * (idx == 0)
    out[indices < 0] = 0
    return out


def scores(pred: np.ndarray, truth: np.ndarray, n_classes: int, background: bool = False) -> dict[str, float]:
    """Mean IoU, Dice and 95th-percentile Hausdorff (pixels) of class indices ``pred`` against ``truth``
    (``(N, Y, X)``, -1 in ``truth`` = unlabelled, not scored), over slices and foreground classes 1..K-1
    (class 0 too with ``background``)."""
    ious, dices, hds = [], [], []
    for p, t in zip(pred, truth):
        valid = t >= 0
        for k in range(0 if background else 1, n_classes):
            pk, tk = (p == k) & valid, (t == k)
            ious.append(metrics.iou(pk, tk))
            dices.append(metrics.dice(pk, tk))
            hd = metrics.hausdorff(pk, tk, percentile=95)
            if np.isfinite(hd):
                hds.append(hd)
    return {"val_iou": float(np.mean(ious)), "val_dice": float(np.mean(dices)),
            "val_hd95": float(np.mean(hds)) if hds else float("nan")}
