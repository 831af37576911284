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


# -- supervised and adversarial segmentation (U-Net, LGAN, cycle GAN) -----------------------------------
def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                   eps: float = 1.0, background: bool = False) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes (1..K-1; class 0 too when K = 1, or with
    ``background``) of ``(N, K, H, W)`` logits against class ids ``target`` ``(N, H, W)``; pixels outside
    ``mask`` ``(N, H, W)`` bool are ignored.

    Why besides cross-entropy: it weighs a small structure (thin EM membranes) as much as a large one;
    ``background`` counts class 0 as well, for a thin structure stored as 0 (EM membranes in ISBI 2012).
    """
    k = logits.shape[1]
    prob = logits.float().softmax(1)
    onehot = F.one_hot(target.clamp(min=0), k).permute(0, 3, 1, 2).to(prob.dtype)
    if mask is not None:
        weight = mask[:, None].to(prob.dtype)
        prob, onehot = prob * weight, onehot * weight
    inter = (prob * onehot).sum(dim=(0, 2, 3))
    total = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    dice = (2 * inter + eps) / (total + eps)
    return 1 - (dice[1:] if k > 1 and not background else dice).mean()


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                         weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of ``(N, K, H, W)`` logits against ``(N, H, W)`` class ids, averaged over the labelled
    pixels (ids < 0 are unlabelled), weighted by ``weight`` ``(N, H, W)`` if given; 0 (not NaN) when no pixel
    is labelled, e.g. a training crop of a sparsely annotated slice."""
    per_pixel = F.cross_entropy(logits.float(), target, ignore_index=-1, reduction="none")
    labelled = (target >= 0).to(per_pixel.dtype)
    weight = labelled if weight is None else weight * labelled
    return (per_pixel * weight).sum() / weight.sum().clamp_min(1e-8)


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP term (Gulrajani et al. 2017): mean of ``(|grad critic(x_hat)|_2 - 1)^2`` at random points
    ``x_hat`` between real and fake critic inputs ``(N, C, H, W)``; keeps the critic 1-Lipschitz, as the
    Earth-mover distance needs, without the capacity loss of weight clipping."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = critic(mixed)
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def wasserstein_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """The critic maximises ``E[D(real)] - E[D(fake)]`` (an Earth-mover estimate); this is its negative."""
    return fake_scores.float().mean() - real_scores.float().mean()


def least_squares_gan_loss(scores: torch.Tensor, real: bool) -> torch.Tensor:
    """LSGAN term (Mao et al. 2017, used by Zhu et al. 2017): mean ``(D(x) - 1)^2`` for ``real``, ``D(x)^2`` else."""
    scores = scores.float()
    return ((scores - 1) ** 2).mean() if real else (scores**2).mean()


def cycle_consistency(image: torch.Tensor, image_back: torch.Tensor, mask: torch.Tensor,
                      mask_back: torch.Tensor) -> torch.Tensor:
    """Cycle loss (Zhu et al. 2017), L1 in both domains: ``mean|F(G(x)) - x| + mean|G(F(y)) - y|`` for images
    ``x`` ``(N, C, H, W)`` and masks ``y`` ``(N, K, H, W)`` (probabilities) given their round trips
    ``image_back = F(G(x))`` and ``mask_back = G(F(y))``; zero when both generators are identities."""
    return (image_back.float() - image.float()).abs().mean() + (mask_back.float() - mask.float()).abs().mean()


def coordinate_grid(height: int, width: int, device=None) -> torch.Tensor:
    """``(2, H, W)`` pixel centres (y, x), scaled so the longer side spans [-1, 1] (aspect ratio kept, so
    a compact cluster is a round one, not one stretched to the image's shape)."""
    span = max(height, width)
    ys = (torch.arange(height, dtype=torch.float32, device=device) - (height - 1) / 2) * (2.0 / span)
    xs = (torch.arange(width, dtype=torch.float32, device=device) - (width - 1) / 2) * (2.0 / span)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"))


def context_consistency(response: torch.Tensor, present: torch.Tensor | None = None, weighting: str = "mass",
                        eps: float = 1e-6) -> torch.Tensor:
    """Context-based consistency loss of SGSCN (Ahn, Feng and Kim, MICCAI 2021).

    Each cluster's soft map (softmax of the ``(N, K, H, W)`` responses over K) is a spatial probability
    distribution; its spread is the probability-weighted mean squared distance of the pixels to the map's
    centre, ``s_k = sum_i p_ki |x_i - c_k|^2 / m_k`` with mass ``m_k = sum_i p_ki`` (coordinates from
    :func:`coordinate_grid`, in units of half the longer image side). Low for spatially compact clusters.

    ``weighting="mass"`` averages ``s_k`` weighted by the clusters' masses (= each pixel's expected squared
    distance to its cluster's centre); ``"clusters"`` averages it over the clusters flagged in ``present``
    ``(K,)`` bool (all when None) with equal weights, as the paper's sum over clusters does. O(K H W).
    """
    n, k, h, w = response.shape
    prob = torch.softmax(response.float(), dim=1).permute(1, 0, 2, 3).reshape(k, -1)  # (K, N*H*W)
    grid = coordinate_grid(h, w, response.device).reshape(2, -1).repeat(1, n)  # (2, N*H*W)
    mass = prob.sum(1)  # (K,)
    centre = prob @ grid.T / (mass[:, None] + eps)  # (K, 2)
    second = prob @ (grid**2).sum(0) / (mass + eps)  # (K,): E_k |x|^2
    spread = (second - (centre**2).sum(1)).clamp(min=0)  # E_k |x - c_k|^2
    if weighting == "mass":
        return (spread * mass).sum() / mass.sum()
    if weighting != "clusters":
        raise ValueError(f"weighting must be 'mass' or 'clusters', got {weighting!r}")
    if present is None:
        return spread.mean()
    present = present.to(spread.dtype)
    return (spread * present).sum() / present.sum().clamp(min=1)

def heaviside(phi: torch.Tensor, epsilon: float = 1.0, kind: str = "atan") -> torch.Tensor:
    """Differentiable "inside" indicator in (0, 1) of a level set ``phi`` (inside where ``phi > 0``).

    ``atan``: Chan and Vese's regularised Heaviside ``H_eps(z) = 1/2 (1 + 2/pi arctan(z / eps))``, whose
    slow tails keep a gradient far from the contour; ``sigmoid``: ``1 / (1 + exp(-z / eps))``.
    Both are 1/2 on the contour, so ``phi > 0`` and ``H > 1/2`` are the same pixels.
    """
    if kind == "sigmoid":
        return torch.sigmoid(phi / epsilon)
    return 0.5 + torch.atan(phi / epsilon) / torch.pi


def contour_length(u: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Mean over pixels of ``sqrt(|du/dy|^2 + |du/dx|^2 + eps)`` of ``(N, 1, H, W)`` ``u`` in [0, 1]: the
    contour length per pixel of a soft mask (total variation), in pixels / pixel. ``mask``
    ``(N, 1, H, W)`` bool limits it to some pixels (e.g. annotated slices)."""
    dy = u[:, :, 1:, :-1] - u[:, :, :-1, :-1]
    dx = u[:, :, :-1, 1:] - u[:, :, :-1, :-1]
    length = torch.sqrt(dy * dy + dx * dx + eps)
    if mask is None:
        return length.mean()
    m = mask[:, :, :-1, :-1].to(length.dtype)
    return (length * m).sum() / m.sum().clamp(min=1)


def chan_vese_terms(u: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """The data terms of the Chan-Vese energy for a soft inside mask ``u`` ``(N, 1, H, W)`` in [0, 1]
    and an image ``(N, C, H, W)``, each a mean over the pixels of the batch.

    ``area`` = mean of u; ``inside`` = mean of u |g - c1|^2 and ``outside`` = mean of (1 - u) |g - c2|^2
    (squared norm over channels), where c1 and c2 are the u-weighted mean intensities inside and
    outside, per image (a slice's own two regions, not the batch's).
    """
    dims = (2, 3)
    inside_w, outside_w = u, 1.0 - u
    c1 = (inside_w * image).sum(dims, keepdim=True) / inside_w.sum(dims, keepdim=True).clamp(min=1e-6)
    c2 = (outside_w * image).sum(dims, keepdim=True) / outside_w.sum(dims, keepdim=True).clamp(min=1e-6)
    inside = (inside_w * (image - c1).pow(2).sum(1, keepdim=True)).mean()
    outside = (outside_w * (image - c2).pow(2).sum(1, keepdim=True)).mean()
    return {"area": u.mean(), "inside": inside, "outside": outside}


def acwe_loss(u: torch.Tensor, image: torch.Tensor, nu: float, lambda1: float, lambda2: float,
              mu: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Chan-Vese "active contours without edges" energy of a soft inside mask ``u`` ``(N, 1, H, W)``:
    ``nu Area + lambda1 sum_in |g - c1|^2 + lambda2 sum_out |g - c2|^2 + mu Length``, every term a mean
    per pixel (a sum divided by the pixel count, so the weights do not depend on the image size).
    Returns the total and its (detached) terms."""
    terms = chan_vese_terms(u, image)
    length = contour_length(u) if mu > 0 else u.new_zeros(())
    total = nu * terms["area"] + lambda1 * terms["inside"] + lambda2 * terms["outside"] + mu * length
    return total, {"area": terms["area"].detach(), "inside": terms["inside"].detach(),
                   "outside": terms["outside"].detach(), "length": length.detach()}


def active_contour_label_loss(u: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                              length_weight: float = 1.0, region_weight: float = 1.0) -> torch.Tensor:
    """Supervised active-contour loss of Chen et al. (CVPR 2019) for a soft mask ``u`` and a ground truth
    ``target`` ``(N, 1, H, W)`` in [0, 1] (1 = foreground), over the pixels of ``mask`` (annotated ones):

    ``length_weight Length(u) + region_weight (mean u (v - 1)^2 + mean (1 - u) v^2)``, i.e. the
    Chan-Vese region terms with the known region values c1 = 1, c2 = 0. The region part is zero
    exactly when u = v on a binary ground truth and positive for any other u.
    """
    m = torch.ones_like(u, dtype=torch.bool) if mask is None else mask
    w = m.to(u.dtype)
    count = w.sum().clamp(min=1)
    region = ((u * (target - 1).pow(2) + (1 - u) * target.pow(2)) * w).sum() / count
    length = contour_length(u, m) if length_weight > 0 else u.new_zeros(())
    return length_weight * length + region_weight * region


def weighted_triplet(features: torch.Tensor, labels: torch.Tensor, margin: float = 0.2,
                     gamma: float = 1.0) -> torch.Tensor:
    """JULE's weighted triplet loss (Yang, Parikh and Batra, CVPR 2016) over every triplet of a minibatch.

    ``features`` ``(B, F)`` are unit vectors, ``labels`` ``(B,)`` their clusters. For each anchor ``i``,
    positive ``j`` (same cluster, ``j != i``) and negative ``k`` (another cluster) the term is
    ``max(0, gamma |f_i - f_j|^2 - |f_i - f_k|^2 + margin)``; the mean over valid triplets (0 if none).
    """
    f = features.float()
    dist = (2.0 - 2.0 * f @ f.T).clamp(min=0)  # squared distance of unit vectors
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=f.device)
    valid = positive[:, :, None] & ~same[:, None, :]  # (anchor, positive, negative)
    terms = F.relu(gamma * dist[:, :, None] - dist[:, None, :] + margin)
    return (terms * valid).sum() / valid.sum().clamp(min=1)


def prototype_cross_entropy(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor,
                            temperature: float = 0.1) -> torch.Tensor:
    """Cross-entropy of ``(B, F)`` unit vectors against their clusters ``labels`` ``(B,)``, with logits the
    cosine similarities to fixed ``(c, F)`` unit cluster prototypes divided by ``temperature``."""
    logits = features.float() @ prototypes.float().T / temperature
    return F.cross_entropy(logits, labels)
