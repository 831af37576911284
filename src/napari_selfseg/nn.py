"""Network building blocks shared by methods (small, composable, no Qt)."""
from __future__ import annotations

import torch
from torch import nn


def conv_stack(in_channels: int, channels: int, layers: int, batch_norm: bool = True) -> nn.Sequential:
    """``layers`` times 3x3 conv (stride 1, padding 1) -> ReLU -> optional BatchNorm, as in Kanezaki 2018."""
    blocks: list[nn.Module] = []
    for i in range(layers):
        blocks += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        if batch_norm:
            blocks.append(nn.BatchNorm2d(channels))
    return nn.Sequential(*blocks)


class ResponseNet(nn.Module):
    """Feature extractor + 1x1 conv to ``responses`` channels + BatchNorm on the responses.

    Input ``(N, C, H, W)`` -> output ``(N, responses, H, W)``; the argmax over channels is the cluster.
    """

    def __init__(self, in_channels: int, channels: int, responses: int, layers: int, batch_norm: bool = True):
        super().__init__()
        self.features = conv_stack(in_channels, channels, layers, batch_norm)
        self.head = nn.Conv2d(channels, responses, 1)
        self.norm = nn.BatchNorm2d(responses) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.head(self.features(x)))


# -- supervised and adversarial segmentation (U-Net, LGAN, cycle GAN) -----------------------------------
def _double_conv(in_channels: int, channels: int, batch_norm: bool) -> nn.Sequential:
    """Two padded 3x3 conv -> (BatchNorm) -> ReLU, as in each level of Ronneberger et al. 2015."""
    blocks: list[nn.Module] = []
    for i in range(2):
        blocks.append(nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            blocks.append(nn.BatchNorm2d(channels))
        blocks.append(nn.ReLU(inplace=True))
    return nn.Sequential(*blocks)


class UNet(nn.Module):
    """U-Net (Ronneberger, Fischer, Brox 2015) with padded convolutions: output size = input size.

    ``depth`` poolings (2x2 max) with channels doubling from ``base_channels``; the expanding path uses 2x2
    transposed convolutions and concatenates the skip features; a 1x1 convolution gives ``out_channels``.
    Input ``(N, in_channels, H, W)`` of any ``H, W`` (odd too): it is reflect-padded to a multiple of
    ``2**depth`` and the output cropped back, so ``(N, out_channels, H, W)`` comes out.
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int = 4, base_channels: int = 16,
                 batch_norm: bool = True):
        super().__init__()
        self.depth = depth
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_double_conv(in_channels, widths[0], batch_norm)])
        self.down.extend(_double_conv(widths[i], widths[i + 1], batch_norm) for i in range(depth))
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                for i in reversed(range(depth)))
        self.merge = nn.ModuleList(_double_conv(2 * widths[i], widths[i], batch_norm) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2**self.depth
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:
            # reflect needs pad < size; replicate works for tiny inputs too
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else torch.nn.functional.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)[..., :h, :w]


class Critic(nn.Module):
    """Contracting CNN that judges an (image, mask) pair: input ``(N, C_image + C_mask, H, W)``, the image
    channels and the mask (one-hot or softmax probabilities) concatenated along channels.

    ``layers`` stride-2 4x4 convolutions + LeakyReLU(0.2), channels doubling from ``base_channels``, then a
    1x1 convolution to one score per location: ``(N, 1, h, w)`` patch scores (PatchGAN, Isola/Zhu 2017)
    when ``patch``, else their spatial mean ``(N,)`` (one Wasserstein critic value per pair, LGAN).
    No batch normalisation: a gradient-penalty critic must judge each sample on its own.
    """

    def __init__(self, in_channels: int, base_channels: int = 16, layers: int = 4, patch: bool = False):
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_channels
        for i in range(layers):
            out = base_channels * 2 ** min(i, 3)
            blocks += [nn.Conv2d(width, out, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            width = out
        self.features = nn.Sequential(*blocks)
        self.score = nn.Conv2d(width, 1, 1)
        self.patch = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.score(self.features(x))
        return scores if self.patch else scores.mean(dim=(1, 2, 3))


class RecurrentConv(nn.Module):
    """Recurrent convolutional layer of Liang and Hu (CVPR 2015), unfolded for ``steps`` time steps.

    ``x(0) = f(w_f * u)``, ``x(t) = f(w_f * u + w_r * x(t - 1))`` with ``f`` = BatchNorm then PReLU (one
    BatchNorm per time step, as the statistics change along the unfolding); a feed-forward depth of
    ``steps + 1``. Input and output ``(N, channels, H, W)``; the feed-forward term is computed once.
    """

    def __init__(self, channels: int, steps: int = 3, kernel: int = 3):
        super().__init__()
        self.steps = steps
        self.forward_conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)
        self.recurrent_conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False)
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(steps + 1))
        self.act = nn.PReLU(channels)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        feed = self.forward_conv(u)
        x = self.act(self.norms[0](feed))
        for t in range(1, self.steps + 1):
            x = self.act(self.norms[t](feed + self.recurrent_conv(x)))
        return x


class ActiveContourNet(nn.Module):
    """The ACWE network of Chen and Frey (MIDL 2020) after Liang and Hu's recurrent CNN.

    A regular 3x3 conv, ``recurrent_layers`` recurrent conv layers (``steps`` time steps each) and a
    regular 3x3 conv to one channel; every conv is followed by BatchNorm and PReLU, the last one too (no
    sigmoid / softmax). Input ``(N, C, H, W)`` -> output ``(N, 1, H, W)``: a level set, inside where > 0.
    ``sign`` (a buffer, saved with the weights) flips which side is "inside" without retraining.
    """

    def __init__(self, in_channels: int, channels: int = 16, recurrent_layers: int = 3, steps: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1), nn.BatchNorm2d(channels),
                                  nn.PReLU(channels))
        self.body = nn.Sequential(*(RecurrentConv(channels, steps) for _ in range(recurrent_layers)))
        self.head = nn.Sequential(nn.Conv2d(channels, 1, 3, padding=1), nn.BatchNorm2d(1), nn.PReLU(1))
        self.register_buffer("sign", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sign * self.head(self.body(self.stem(x)))


# -- 3D patch encoder (deep clustering 3D: Moriya et al. 2018 on JULE) ----------------------------------
def patch_encoder_side(patch: int, kernel: int) -> int:
    """Edge of the last feature map of :class:`PatchEncoder3d` for a ``patch``^3 input: three valid
    ``kernel``^3 convolutions with a 2^3 max pooling after the first (27, 5 -> 3: 50 x 3^3 = 1350 values)."""
    return (patch - kernel + 1) // 2 - 2 * (kernel - 1)


class PatchEncoder3d(nn.Module):
    """The patch CNN of Moriya et al. (SPIE MI 2018): three 3D convolutions of ``channels`` kernels
    ``kernel``^3 (stride 1, no padding), BatchNorm and ReLU after each, 2^3 max pooling after the first;
    fully connected layers of ``hidden`` (0 = none) and ``features`` units; L2-normalised output.

    ``(N, C, w, w, w)`` patches -> ``(N, features)`` unit vectors. Paper: w = 27, kernel 5, 50 kernels,
    1350 and 160 units.
    """

    def __init__(self, in_channels: int, patch: int, channels: int = 50, kernel: int = 5, hidden: int = 1350,
                 features: int = 160):
        super().__init__()
        side = patch_encoder_side(patch, kernel)
        if side < 1:
            raise ValueError(f"a {patch}^3 patch is too small for three {kernel}^3 convolutions and a 2^3 "
                             f"pooling; use a patch of at least {2 * (3 * kernel - 2)}")

        def block(cin: int) -> list[nn.Module]:
            return [nn.Conv3d(cin, channels, kernel), nn.BatchNorm3d(channels), nn.ReLU(inplace=True)]

        self.conv = nn.Sequential(*block(in_channels), nn.MaxPool3d(2), *block(channels), *block(channels))
        flat = channels * side**3
        head: list[nn.Module] = [nn.Flatten()]
        if hidden > 0:
            head += [nn.Linear(flat, hidden), nn.ReLU(inplace=True)]
        head.append(nn.Linear(hidden if hidden > 0 else flat, features))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.head(self.conv(x)), dim=1)


class NormalisedConvNet(nn.Module):
    """``layers`` x (3x3 conv -> ReLU -> BatchNorm) to ``channels`` responses, then each response channel
    normalised to zero mean and unit variance over the batch's pixels (no learnt scale or shift), as in
    SGSCN (Ahn, Feng and Kim, MICCAI 2021). ``(N, C, H, W)`` -> ``(N, channels, H, W)``.

    The final normalisation always uses the input's own statistics (no running averages), so a network
    trained on a downsampled image normalises a full-resolution one the same way.
    """

    def __init__(self, in_channels: int, channels: int, layers: int):
        super().__init__()
        self.features = conv_stack(in_channels, channels, layers, batch_norm=True)
        self.norm = nn.BatchNorm2d(channels, affine=False, track_running_stats=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.features(x))
