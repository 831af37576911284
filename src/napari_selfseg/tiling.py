"""Tile-wise inference of a convolutional network on images too large for one forward pass.

Tiles overlap by ``overlap`` pixels on each side and only each tile's centre is kept, so as long as the
overlap covers the network's receptive field there is no seam: the stitched output equals the untiled
one. Batch normalisation is the catch: in training mode (how the clustering methods label, so that the
responses stay normalised) it normalises with the statistics of whatever it is given, and a tile's
statistics are not the image's. :func:`tiled_forward` therefore first measures every BatchNorm layer's
input statistics over the whole image, tile by tile and layer after layer, then runs all layers with
those global statistics frozen: the result equals one forward pass over the whole image.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


def tile_slices(size: int, tile: int, overlap: int) -> Iterator[tuple[slice, slice, slice]]:
    """Along one axis of ``size`` pixels: ``(input window, kept part in output, kept part in window)``.

    Windows are ``tile + 2 * overlap`` long (shorter at the edges); kept parts tile the axis exactly.
    """
    for start in range(0, size, tile):
        stop = min(start + tile, size)
        lo, hi = max(start - overlap, 0), min(stop + overlap, size)
        yield slice(lo, hi), slice(start, stop), slice(start - lo, stop - lo)


def _windows(shape: tuple[int, int], tile: int, overlap: int):
    for wy, ky, cy in tile_slices(shape[0], tile, overlap):
        for wx, kx, cx in tile_slices(shape[1], tile, overlap):
            yield (wy, wx), (ky, kx), (cy, cx)


@contextlib.contextmanager
def _frozen_batchnorm(model: nn.Module):
    """Let each BatchNorm layer use statistics we set (eval mode with buffers), restoring it afterwards."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    # clones: a training-mode pass updates the running buffers in place
    saved = [(m.training, m.track_running_stats, _clone(m.running_mean), _clone(m.running_var),
              _clone(m.num_batches_tracked)) for m in layers]
    try:
        yield layers
    finally:
        for m, (training, track, mean, var, batches) in zip(layers, saved):
            m.train(training)
            m.track_running_stats, m.running_mean, m.running_var = track, mean, var
            m.num_batches_tracked = batches


def _input_moments(model: nn.Module, layer: nn.Module, x: torch.Tensor, tile: int, overlap: int):
    """Per-channel mean and biased variance of ``layer``'s input over the whole image (tile centres)."""
    total, total_sq, count = 0.0, 0.0, 0

    def grab(_module, inputs):
        nonlocal total, total_sq, count
        inp = inputs[0][..., grab.centre[0], grab.centre[1]].double()
        total = total + inp.sum(dim=(0, 2, 3))
        total_sq = total_sq + (inp * inp).sum(dim=(0, 2, 3))
        count += inp.shape[0] * inp.shape[2] * inp.shape[3]
        raise _Enough  # the layers after this one are not needed for its statistics

    handle = layer.register_forward_pre_hook(grab)
    try:
        for (wy, wx), _, centre in _windows(x.shape[-2:], tile, overlap):
            grab.centre = centre
            with contextlib.suppress(_Enough):
                model(x[..., wy, wx])
    finally:
        handle.remove()
    mean = total / count
    return mean.float(), (total_sq / count - mean * mean).clamp(min=0).float()


class _Enough(Exception):
    pass


def _clone(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clone()


def _forward_order(model: nn.Module, layers: list[nn.Module], x: torch.Tensor) -> list[nn.Module]:
    """The BatchNorm layers in the order a forward pass calls them (not always their definition order)."""
    order: list[nn.Module] = []
    handles = [m.register_forward_pre_hook(lambda module, _: order.append(module)) for m in layers]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(order))


@torch.no_grad()
def tiled_forward(model: nn.Module, x: torch.Tensor, tile: int = 1024, overlap: int = 32,
                  batch_statistics: bool = True, reduce=None) -> torch.Tensor:
    """``model(x)`` for ``x`` ``(1, C, H, W)``, computed tile by tile; output ``(1, K, H, W)`` on x's device.

    ``reduce`` (e.g. an argmax keeping the channel axis) is applied to each tile's output before
    stitching, so a large image never holds all ``K`` response channels at once.

    ``overlap`` must cover the receptive field (a stack of ``n`` 3x3 convolutions needs ``n``).
    ``batch_statistics``: BatchNorm layers normalise with the whole image's statistics, as one training-
    mode pass would (else the model is used as it is, e.g. in eval mode with running statistics).
    """
    h, w = x.shape[-2:]
    reduce = reduce or (lambda y: y)
    if h <= tile and w <= tile:
        return reduce(model(x))
    if batch_statistics:
        with _frozen_batchnorm(model) as layers:
            first = next(_windows(x.shape[-2:], tile, overlap))[0]
            for layer in _forward_order(model, layers, x[..., first[0], first[1]]):
                # each layer's statistics need those of the layers before it frozen
                mean, var = _input_moments(model, layer, x, tile, overlap)
                layer.running_mean, layer.running_var, layer.track_running_stats = mean, var, True
                layer.eval()
            return _stitch(model, x, tile, overlap, reduce)
    return _stitch(model, x, tile, overlap, reduce)


def _stitch(model: nn.Module, x: torch.Tensor, tile: int, overlap: int, reduce) -> torch.Tensor:
    out = None
    for window, keep, centre in _windows(x.shape[-2:], tile, overlap):
        y = reduce(model(x[..., window[0], window[1]]))
        if out is None:
            out = torch.empty((x.shape[0], y.shape[1], *x.shape[-2:]), dtype=y.dtype, device=y.device)
        out[..., keep[0], keep[1]] = y[..., centre[0], centre[1]]
    return out
