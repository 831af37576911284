"""Tiled inference equals one pass over the whole image (seams would show as differences)."""
import torch
from torch import nn

from napari_selfseg.nn import ResponseNet, UNet
from napari_selfseg.tiling import tile_slices, tiled_forward


def test_tiles_cover_the_axis_exactly_once():
    kept = [k for _, k, _ in tile_slices(100, 32, 8)]
    assert [(k.start, k.stop) for k in kept] == [(0, 32), (32, 64), (64, 96), (96, 100)]
    windows = [w for w, _, _ in tile_slices(100, 32, 8)]
    assert windows[0] == slice(0, 40) and windows[1] == slice(24, 72) and windows[-1] == slice(88, 100)


def test_tiled_equals_untiled_with_training_mode_batchnorm():
    torch.manual_seed(0)
    model = ResponseNet(3, 8, 8, layers=2).train()
    x = torch.rand(1, 3, 70, 90)
    whole = model(x)
    before = [b.clone() for b in model.buffers()]
    tiled = tiled_forward(model, x, tile=32, overlap=4)
    assert torch.allclose(tiled, whole, atol=1e-4)
    assert torch.equal(tiled.argmax(1), whole.argmax(1))
    assert model.training and all(torch.equal(a, b) for a, b in zip(before, model.buffers()))  # restored


def test_tiled_equals_untiled_for_a_unet_in_eval_mode():
    torch.manual_seed(0)
    model = UNet(1, 2, depth=2, base_channels=4).eval()
    x = torch.rand(1, 1, 64, 64)
    # a depth-2 U-Net sees far: the overlap must cover its receptive field; tiles aligned to 2**depth
    tiled = tiled_forward(model, x, tile=32, overlap=32, batch_statistics=False)
    assert torch.allclose(tiled, model(x), atol=1e-4)


def test_small_inputs_are_one_pass():
    model = nn.Conv2d(1, 1, 3, padding=1)
    x = torch.rand(1, 1, 8, 8)
    assert torch.equal(tiled_forward(model, x, tile=16), model(x))
