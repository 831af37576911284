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
