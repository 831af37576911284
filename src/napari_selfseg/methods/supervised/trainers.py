"""Trainers of the supervised methods: U-Net, LGAN and the cycle-consistent semi-supervised GAN (no Qt).

One :meth:`step` is one minibatch. After each pass over the training slices (an epoch) the validation
slices are predicted at full resolution and scored (``val_iou``, ``val_dice``, ``val_hd95``, returned with
every step's loss terms so the panel plots them); the weights with the best validation Dice are kept and
used by :meth:`finish`, :meth:`predict` and :meth:`state_dict`.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...engine import TrainContext
from ...losses import (cycle_consistency, gradient_penalty, least_squares_gan_loss, masked_cross_entropy,
                       soft_dice_loss, wasserstein_critic_loss)
from ...nn import Critic, UNet
from . import data


class Segmenter:
    """A trained U-Net and its class values: labels prepared ``(Y, X, C)`` planes (what a bundle reloads).

    Slices are resized to the grid the network was trained on (longer side ``max_side``, 0 = full
    resolution; saved with the weights, so a model trained at 128 pixels on a CPU predicts at 128 pixels on
    a GPU too), segmented, and the logits upsampled bilinearly to the slice's size before the argmax, so the
    output is ``(Y, X)`` class values.
    """

    def __init__(self, net: UNet, values: np.ndarray, max_side: int, device: torch.device, autocast=None):
        self.net, self.values, self.max_side, self.device = net, np.asarray(values), int(max_side), device
        self.autocast = autocast

    @torch.no_grad()
    def logits(self, images: np.ndarray, batch: int = 4) -> torch.Tensor:
        """Class logits ``(N, K, Y, X)`` of prepared ``(N, Y, X, C)`` images, on the device, float32."""
        size = data.training_size(images.shape[1:3], self.max_side, data.min_grid_side(self.net.depth))
        self.net.eval()
        out = []
        for i in range(0, len(images), batch):
            x = data.to_grid(images[i:i + batch], size, self.device)
            with self.autocast() if self.autocast else contextlib.nullcontext():
                logits = self.net(x).float()
            if tuple(logits.shape[-2:]) != tuple(images.shape[1:3]):
                logits = F.interpolate(logits, size=images.shape[1:3], mode="bilinear", align_corners=False)
            out.append(logits)
        return torch.cat(out)

    def indices(self, images: np.ndarray) -> np.ndarray:
        """Class indices ``(N, Y, X)`` int64 of prepared ``(N, Y, X, C)`` images."""
        return self.logits(images).argmax(1).cpu().numpy()

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Class values ``(Y, X)`` of one prepared ``(Y, X, C)`` plane."""
        return self.values[self.indices(np.asarray(image, dtype=np.float32)[None])[0]]

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"net.{k}": v.detach().cpu() for k, v in self.net.state_dict().items()}
        state["classes"] = torch.as_tensor(self.values, dtype=torch.int64)
        state["in_channels"] = torch.tensor(self.net.down[0][0].in_channels)
        state["max_side"] = torch.tensor(self.max_side)
        return state


def build_unet(params: Any, in_channels: int, out_channels: int) -> UNet:
    return UNet(in_channels, out_channels, params.depth, params.base_channels, params.batch_norm)


def load(params: Any, state_dict: dict[str, torch.Tensor], device) -> Segmenter:
    """Rebuild the :class:`Segmenter` saved by a trainer's :meth:`~UNetTrainer.state_dict`."""
    device = torch.device(device)
    values = state_dict["classes"].cpu().numpy()
    net = build_unet(params, int(state_dict["in_channels"]), len(values))
    net.load_state_dict({k[4:]: v for k, v in state_dict.items() if k.startswith("net.")})
    max_side = int(state_dict["max_side"]) if "max_side" in state_dict else params.max_side
    return Segmenter(net.to(device), values, max_side, device)


class UNetTrainer:
    """U-Net trained with cross-entropy + soft Dice on the labelled slices of a stack."""

    done = False

    def __init__(self, ctx: TrainContext):
        self.ctx = ctx
        p = ctx.params
        self.data = data.StackData(ctx.image, getattr(ctx, "labels", None), p, ctx.device, ctx.seed)
        self.generator = torch.Generator().manual_seed(ctx.seed)
        self.net = build_unet(p, ctx.image.shape[-1], self.data.n_classes).to(ctx.device)
        self.optimiser = torch.optim.Adam(self.net.parameters(), lr=p.learning_rate)
        self.segmenter = Segmenter(self.net, self.data.values, self.data.max_side, ctx.device, ctx.autocast)
        self.best_state = copy.deepcopy(self.net.state_dict())
        self.best_dice = -1.0
        self.epoch = 0
        self.stale_epochs = 0
        self.last_scores = {"val_iou": 0.0, "val_dice": 0.0, "val_hd95": float("nan")}
        self._order: dict = {}

    # -- one minibatch ----------------------------------------------------------------------------
    def _batch(self, pool: np.ndarray, state: dict, with_labels: bool = True):
        p = self.ctx.params
        h, w = self.data.size
        # with patches an epoch still covers about every training pixel once: each slice comes back
        # (slice area / patch area) times per pass
        repeats = round(h * w / min(p.patch, h) / min(p.patch, w)) if p.patch > 0 else 1
        idx, epoch_end = data.batch_indices(pool, p.batch_size, self.generator, state, repeats)
        x = self.data.images[idx]
        y = self.data.labels[idx] if with_labels else None
        weighted = with_labels and self.data.weights is not None
        if weighted:  # an extra channel, so the weights are deformed, cropped and turned with the image
            x = torch.cat([x, self.data.weights[idx][:, None]], 1)
        # no crop smaller than the grid the networks take (the critic's strided 4x4 convolutions, the
        # U-Net's bottom batch norm)
        patch = max(p.patch, data.min_grid_side(p.depth)) if p.patch > 0 else 0
        if p.augment and p.elastic > 0:  # on whole slices, as in the U-Net paper, before the crop
            x, y = data.elastic_deform(x, y, p.elastic, self.generator)
        x, y = data.random_crop(x, y, patch, self.generator)
        if p.augment:
            x, y = data.augment(x, y, p.intensity_jitter, self.generator, channels=self.data.images.shape[1])
        weights = x[:, -1] if weighted else None
        return (x[:, :-1] if weighted else x), y, weights, epoch_end

    def segmentation_loss(self, logits: torch.Tensor, y: torch.Tensor,
                          weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Cross-entropy (weighted per pixel by ``weights`` ``(B, h, w)`` if given) + soft Dice, and the terms."""
        p = self.ctx.params
        ce = masked_cross_entropy(logits, y, weights)
        dice = soft_dice_loss(logits, y, y >= 0, background=p.dice_classes == "all")
        return ce + p.dice_weight * dice, {"cross_entropy": ce.detach(), "dice_loss": dice.detach()}

    def step(self) -> dict[str, Any]:
        p = self.ctx.params
        for group in self.optimiser.param_groups:
            group["lr"] = p.learning_rate
        x, y, weights, epoch_end = self._batch(self.data.train, self._order)
        self.net.train()
        losses = self.generator_step(x, y, weights)
        if epoch_end:
            self.end_epoch()
        return {**losses, **self.last_scores}

    def generator_step(self, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None) -> dict[str, Any]:
        with self.ctx.autocast():
            logits = self.net(x)
        loss, terms = self.segmentation_loss(logits, y, weights)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        return terms

    # -- validation and best weights --------------------------------------------------------------
    def end_epoch(self) -> None:
        self.epoch += 1
        val = self.data.val
        pred = self.segmenter.indices(self.ctx.image[val])
        # over the classes the Dice loss averages: the weights kept are the best at what training optimises
        self.last_scores = data.scores(pred, self.data.full_labels[val], self.data.n_classes,
                                       background=self.ctx.params.dice_classes == "all")
        if self.last_scores["val_dice"] > self.best_dice:
            self.best_dice = self.last_scores["val_dice"]
            self.best_state = copy.deepcopy(self.net.state_dict())
            self.stale_epochs = 0
        else:
            self.stale_epochs += 1
        patience = self.ctx.params.patience
        if patience and self.stale_epochs >= patience:
            self.done = True  # early stopping: validation Dice has not improved for `patience` epochs

    def best(self) -> Segmenter:
        """A :class:`Segmenter` holding the best weights so far (a copy: training may go on); the current
        weights when no epoch has been validated yet (stopped early)."""
        net = build_unet(self.ctx.params, self.ctx.image.shape[-1], self.data.n_classes).to(self.ctx.device)
        net.load_state_dict(self.best_state if self.best_dice >= 0 else self.net.state_dict())
        return Segmenter(net, self.data.values, self.data.max_side, self.ctx.device, self.ctx.autocast)

    # -- what the engine reads --------------------------------------------------------------------
    def current(self) -> np.ndarray:
        """Class values ``(y, x)`` of the displayed slice ``ctx.preview`` at the training resolution."""
        z = int(np.clip(getattr(self.ctx, "preview", 0) or 0, 0, len(self.ctx.image) - 1))
        return self.data.values[self.segmenter.indices(self.ctx.image[z:z + 1])[0]]

    def finish(self) -> np.ndarray:
        """Class values ``(N, Y, X)`` of every slice with the best weights."""
        best = self.best()
        return best.values[best.indices(self.ctx.image)]

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self.best().predict(image)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.best().state_dict()


def _onehot(y: torch.Tensor, k: int, fill: torch.Tensor) -> torch.Tensor:
    """``(B, h, w)`` class indices -> ``(B, K, h, w)`` one-hot; unlabelled pixels (-1) take ``fill``'s values."""
    onehot = F.one_hot(y.clamp(min=0), k).permute(0, 3, 1, 2).to(fill.dtype)
    return torch.where((y >= 0)[:, None], onehot, fill)


class LGANTrainer(UNetTrainer):
    """LGAN (Tan et al. 2019): the U-Net plus a Wasserstein critic of (image, mask) pairs.

    The critic scores ``cat(image, mask)``: ground-truth one-hot masks are real, the U-Net's softmax
    masks fake. Critic: Earth-mover loss with a gradient penalty (WGAN-GP) or weight clipping (WGAN),
    ``critic_steps`` updates per U-Net step; the U-Net adds ``-adversarial_weight * critic(fake pair)``
    to its segmentation loss.
    """

    def __init__(self, ctx: TrainContext):
        super().__init__(ctx)
        p = ctx.params
        k, c = self.data.n_classes, ctx.image.shape[-1]
        self.critic = Critic(c + k, p.critic_channels, layers=4, patch=False).to(ctx.device)
        if p.critic == "clipping":  # WGAN (Arjovsky et al. 2017): RMSprop, no momentum
            self.critic_optimiser = torch.optim.RMSprop(self.critic.parameters(), lr=p.critic_learning_rate)
        else:  # WGAN-GP (Gulrajani et al. 2017): Adam with beta1 0.5, beta2 0.9
            self.critic_optimiser = torch.optim.Adam(self.critic.parameters(), lr=p.critic_learning_rate,
                                                     betas=(0.5, 0.9))

    def pairs(self, x: torch.Tensor, y: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Real and fake critic inputs ``(B, C + K, h, w)``: the image with the ground truth / the prediction."""
        real = torch.cat([x, _onehot(y, probs.shape[1], probs.detach())], 1)
        return real, torch.cat([x, probs], 1)

    def critic_step(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, Any]:
        p = self.ctx.params
        for group in self.critic_optimiser.param_groups:
            group["lr"] = p.critic_learning_rate
        distance = wasserstein_critic_loss(self.critic(real), self.critic(fake.detach()))
        loss = distance
        terms = {"wasserstein": -distance.detach()}
        if p.critic == "gradient-penalty":
            gp = gradient_penalty(self.critic, real.float(), fake.float())
            loss = loss + p.gp_weight * gp
            terms["gradient_penalty"] = gp.detach()
        self.critic_optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optimiser.step()
        if p.critic == "clipping":
            with torch.no_grad():
                for w in self.critic.parameters():
                    w.clamp_(-p.clip, p.clip)
        return terms

    def generator_step(self, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None) -> dict[str, Any]:
        p = self.ctx.params
        with self.ctx.autocast():
            logits = self.net(x)
        probs = logits.float().softmax(1)
        real, fake = self.pairs(x, y, probs)
        self.critic.train()
        for _ in range(p.critic_steps):
            terms = self.critic_step(real, fake)
        loss, seg_terms = self.segmentation_loss(logits, y, weights)
        for w in self.critic.parameters():  # the U-Net's step must not move the critic
            w.requires_grad_(False)
        adversarial = -self.critic(fake).float().mean()
        for w in self.critic.parameters():
            w.requires_grad_(True)
        loss = loss + p.adversarial_weight * adversarial
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        return {**seg_terms, "adversarial": adversarial.detach(), **terms}


def cycle_pass(to_mask, to_image, image: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Both round trips of the cycle GAN: ``image`` ``(B, C, h, w)`` -> mask -> image and ``mask``
    ``(B, K, h, w)`` probabilities -> image -> mask, with the intermediate (fake) results."""
    fake_mask = to_mask(image)
    fake_image = to_image(mask)
    return {"fake_mask": fake_mask, "image_back": to_image(fake_mask),
            "fake_image": fake_image, "mask_back": to_mask(fake_image)}


class CycleTrainer(UNetTrainer):
    """Semi-supervised cycle-consistent GAN (after Zhu et al. 2017) on labelled and unlabelled slices.

    Generators: the segmentation U-Net G (image -> mask probabilities) and a second U-Net F (mask ->
    image, sigmoid). Patch discriminators (LSGAN) judge masks (real: ground truth; fake: G of unlabelled
    images) and images (real: slices; fake: F of ground-truth masks). Loss of the generators:
    ``supervised_weight * (CE + Dice of G and L1 of F on labelled pairs) + adversarial_weight * LSGAN +
    cycle_weight * (|F(G(x)) - x| + |G(F(y)) - y|)``. Unlabelled slices (and the training slices' images)
    enter only through the adversarial and cycle terms; validation slices are never used.
    """

    def __init__(self, ctx: TrainContext):
        super().__init__(ctx)
        p = ctx.params
        k, c = self.data.n_classes, ctx.image.shape[-1]
        self.to_image_net = UNet(k, c, p.depth, p.base_channels, p.batch_norm).to(ctx.device)
        self.mask_critic = Critic(k, p.critic_channels, layers=3, patch=True).to(ctx.device)
        self.image_critic = Critic(c, p.critic_channels, layers=3, patch=True).to(ctx.device)
        self.optimiser.add_param_group({"params": list(self.to_image_net.parameters())})
        critics = list(self.mask_critic.parameters()) + list(self.image_critic.parameters())
        self.critic_optimiser = torch.optim.Adam(critics, lr=p.critic_learning_rate, betas=(0.5, 0.999))
        # unlabelled pool: the unlabelled slices plus the training slices (their images carry no label
        # information the supervised term has not already used); validation slices stay out
        self.pool = np.union1d(self.data.unlabelled, self.data.train)
        self._pool_order: dict = {}

    def to_mask(self, x: torch.Tensor) -> torch.Tensor:
        with self.ctx.autocast():
            return self.net(x).float().softmax(1)

    def to_image(self, m: torch.Tensor) -> torch.Tensor:
        with self.ctx.autocast():
            return torch.sigmoid(self.to_image_net(m).float())

    def generator_step(self, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None) -> dict[str, Any]:
        p = self.ctx.params
        self.to_image_net.train()
        u, _, _, _ = self._batch(self.pool, self._pool_order, with_labels=False)
        x = x.clamp(0, 1)  # the image generator ends in a sigmoid: keep jittered targets in its range
        u = u.clamp(0, 1)
        with self.ctx.autocast():
            logits = self.net(x)
        labelled_mask = _onehot(y, self.data.n_classes, logits.float().softmax(1).detach())
        trips = cycle_pass(self.to_mask, self.to_image, u, labelled_mask)
        supervised, terms = self.segmentation_loss(logits, y, weights)
        reconstruction = (self.to_image(labelled_mask) - x).abs().mean()
        cycle = cycle_consistency(u, trips["image_back"], labelled_mask, trips["mask_back"])
        critics = list(self.mask_critic.parameters()) + list(self.image_critic.parameters())
        for w in critics:
            w.requires_grad_(False)
        adversarial = (least_squares_gan_loss(self.mask_critic(trips["fake_mask"]), True)
                       + least_squares_gan_loss(self.image_critic(trips["fake_image"]), True))
        for w in critics:
            w.requires_grad_(True)
        loss = (p.supervised_weight * (supervised + reconstruction) + p.adversarial_weight * adversarial
                + p.cycle_weight * cycle)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        critic = self.critic_step(labelled_mask, trips["fake_mask"], x, trips["fake_image"])
        return {**terms, "reconstruction": reconstruction.detach(), "cycle": cycle.detach(),
                "adversarial": adversarial.detach(), "critics": critic}

    def critic_step(self, real_mask, fake_mask, real_image, fake_image) -> torch.Tensor:
        for group in self.critic_optimiser.param_groups:
            group["lr"] = self.ctx.params.critic_learning_rate
        loss = 0.5 * (least_squares_gan_loss(self.mask_critic(real_mask.detach()), True)
                      + least_squares_gan_loss(self.mask_critic(fake_mask.detach()), False)
                      + least_squares_gan_loss(self.image_critic(real_image.detach()), True)
                      + least_squares_gan_loss(self.image_critic(fake_image.detach()), False))
        self.critic_optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optimiser.step()
        return loss.detach()
