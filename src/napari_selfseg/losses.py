"""Loss terms shared by methods; each takes ``(N, K, H, W)`` responses unless stated."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def spatial_continuity(response: torch.Tensor) -> torch.Tensor:
    """Mean L1 of vertical plus horizontal neighbour differences (Kim, Kanezaki, Tanaka 2020, eq. 4)."""
    dy = (response[:, :, 1:, :] - response[:, :, :-1, :]).abs().mean()
    dx = (response[:, :, :, 1:] - response[:, :, :, :-1]).abs().mean()
    return dy + dx


def self_label_cross_entropy(response: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None):
    """Cross-entropy of each pixel's response against its own pseudo-label ``target`` ``(N, H, W)``.

    ``mask`` ``(N, H, W)`` bool limits the term to some pixels (e.g. the unscribbled ones).
    """
    loss = F.cross_entropy(response, target, reduction="none")
    if mask is None:
        return loss.mean()
    return (loss * mask).sum() / mask.sum().clamp(min=1)
