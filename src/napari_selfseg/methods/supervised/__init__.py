"""Supervised and adversarial segmentation from ground truth: U-Net, LGAN and a cycle-consistent GAN.

- U-Net (Ronneberger, Fischer, Brox, MICCAI 2015), with padded convolutions so outputs match inputs.
- LGAN (Tan et al. 2019): the U-Net as generator plus a Wasserstein critic of (image, mask) pairs.
- Cycle GAN (after Zhu, Park, Isola, Efros, ICCV 2017): image -> mask and mask -> image U-Nets, two patch
  discriminators and cycle consistency, so slices without ground truth train it too (semi-supervised).

All three train on a stack of 2D slices (``inputs="stack"``) of which some carry ground truth (a Labels
layer, -1 = unlabelled); the label values are classes (binary or multi-class). Speed: on a CPU slices are
resized so their longer side is at most ``max_side`` pixels (128 by default) for training and prediction,
and logits are upsampled bilinearly to full resolution; on a GPU training runs at full resolution
(``full_resolution_on_gpu``). Details: docs/methods/supervised.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ...engine import Method, StopRules
from ...params import param
from ...postprocess import PostprocessParams
from .data import prepare
from .trainers import CycleTrainer, LGANTrainer, Segmenter, UNetTrainer, load  # noqa: F401


@dataclass
class UNetParams(PostprocessParams):
    """Parameters of the U-Net; the defaults are the fast interactive (CPU) setting."""

    learning_rate: float = param(1e-3, low=1e-5, high=1e-1, log=True, help="Adam learning rate of the U-Net")
    batch_size: int = param(4, low=1, high=64, step=1, help="Slices (or patches) per minibatch")
    dice_weight: float = param(1.0, low=0.0, high=10.0, step=0.1,
                               help="Weight of the soft Dice loss added to the cross-entropy (0 = cross-entropy only)")
    dice_classes: str = param("foreground", choices=("foreground", "all"), advanced=True,
                              help="Classes the soft Dice averages over: the foreground ones (1 and up), or all, "
                                   "background 0 included (for a thin structure stored as 0, e.g. EM membranes)")
    border_weight: float = param(0.0, low=0.0, high=50.0, step=0.5, live=False, label="separation weight",
                                 help="U-Net paper: extra cross-entropy weight, up to this, on the thin background "
                                      "gaps between touching objects (EM membranes between cells), falling off "
                                      "with the distances to the two nearest objects (paper: 10; 0 = off)")
    border_sigma: float = param(5.0, low=0.5, high=20.0, step=0.5, live=False, advanced=True,
                                label="separation width",
                                help="Fall-off of the separation weight, pixels at the training size (paper: 5)")
    augment: bool = param(True, help="Random flips, 90-degree rotations and intensity jitter of each minibatch")
    intensity_jitter: float = param(0.1, low=0.0, high=0.5, step=0.01,
                                    help="Augmentation: random gain 1 +- this and offset +- this on [0, 1] images")
    elastic: float = param(0.0, low=0.0, high=50.0, step=1.0, label="elastic deformation",
                           help="Augmentation (with augment on): random elastic deformation of each slice, the "
                                "standard deviation in pixels (at the training size) of displacements on a coarse "
                                "3x3 grid, interpolated bicubically (U-Net paper: 10; 0 = off)")
    max_iterations: int = param(1500, low=1, high=200_000, step=100, help="Stop after this many minibatches")
    patience: int = param(0, low=0, high=1000, step=1,
                          help="Stop when validation Dice has not improved for this many epochs (0 = off)")
    depth: int = param(4, low=1, high=6, step=1, live=False, help="Poolings of the U-Net (paper: 4)")
    base_channels: int = param(16, low=4, high=128, step=4, live=False,
                               help="Channels of the first level, doubling per level (paper: 64)")
    batch_norm: bool = param(True, live=False, help="Batch normalisation after each convolution (not in the 2015 paper)")
    max_side: int = param(128, low=0, high=4096, step=16, live=False, label="training size",
                          help="Train and predict on slices resized so their longer side is at most this many "
                               "pixels (0 = full resolution); predictions are upsampled to full resolution")
    full_resolution_on_gpu: bool = param(True, live=False, advanced=True,
                                         help="On a CUDA GPU ignore the training size and train at full resolution")
    patch: int = param(0, low=0, high=2048, step=16, live=False,
                       help="Train on random square crops of this size (pixels at the training size, at least the "
                            "smallest grid the networks take; 0 = whole slices); predictions are always whole slices")
    val_fraction: float = param(0.2, low=0.0, high=0.9, step=0.05, live=False, label="validation fraction",
                                help="Fraction of the labelled slices held out to validate after each epoch "
                                     "(at least one; 0 = validate on the training slices)")
    intensity: str = param("percentile", choices=("percentile", "hounsfield"), live=False,
                           help="Input normalisation per slice: 0.5-99.5 percentile stretch (uint8 / 255), or a "
                                "fixed CT window in Hounsfield units")
    hu_low: float = param(-1000.0, low=-2000.0, high=3000.0, step=10, live=False, advanced=True,
                          help="CT window: Hounsfield units mapped to 0")
    hu_high: float = param(400.0, low=-2000.0, high=4000.0, step=10, live=False, advanced=True,
                           help="CT window: Hounsfield units mapped to 1")


@dataclass
class LGANParams(UNetParams):
    """U-Net parameters plus the Wasserstein critic's."""

    adversarial_weight: float = param(0.01, low=0.0, high=1.0, step=0.001,
                                      help="Weight of the critic's (Earth-mover) term in the U-Net's loss")
    critic: str = param("gradient-penalty", choices=("gradient-penalty", "clipping"), live=False,
                        help="How the critic is kept 1-Lipschitz: WGAN-GP gradient penalty, or WGAN weight clipping")
    gp_weight: float = param(10.0, low=0.0, high=100.0, step=0.5, help="Weight of the gradient penalty")
    clip: float = param(0.01, low=0.001, high=1.0, log=True, advanced=True,
                        help="Weight clipping bound of the critic (critic = clipping only)")
    critic_steps: int = param(1, low=1, high=10, step=1, help="Critic updates per U-Net update")
    critic_learning_rate: float = param(1e-4, low=1e-6, high=1e-2, log=True, help="Learning rate of the critic")
    critic_channels: int = param(16, low=4, high=128, step=4, live=False, help="Channels of the critic's first layer")


@dataclass
class CycleParams(UNetParams):
    """U-Net parameters plus the cycle GAN's."""

    supervised_weight: float = param(1.0, low=0.0, high=10.0, step=0.1,
                                     help="Weight of the supervised terms on labelled slices")
    cycle_weight: float = param(1.0, low=0.0, high=20.0, step=0.1,
                                help="Weight of the cycle-consistency L1 (paper: 10)")
    adversarial_weight: float = param(0.1, low=0.0, high=10.0, step=0.01,
                                      help="Weight of the discriminators' (least-squares GAN) terms")
    critic_learning_rate: float = param(2e-4, low=1e-6, high=1e-2, log=True,
                                        help="Learning rate of the two discriminators")
    critic_channels: int = param(16, low=4, high=128, step=4, live=False,
                                 help="Channels of the discriminators' first layer")


# The papers' network: 64 base channels, depth 4, full resolution, the U-Net paper's elastic deformation (its
# separation weights are for touching cells: set border_weight for such data).
_PAPER_UNET = {"depth": 4, "base_channels": 64, "max_side": 0, "batch_norm": True, "learning_rate": 1e-4,
               "batch_size": 4, "dice_weight": 1.0, "max_iterations": 20000, "patch": 0, "elastic": 10.0}
PRESETS = {
    "unet": {"interactive": {}, "paper": dict(_PAPER_UNET)},
    "lgan": {"interactive": {}, "paper": {**_PAPER_UNET, "critic": "gradient-penalty", "gp_weight": 10.0,
                                          "critic_steps": 5, "adversarial_weight": 0.01,
                                          "critic_learning_rate": 1e-4, "critic_channels": 64}},
    "cycle": {"interactive": {}, "paper": {**_PAPER_UNET, "cycle_weight": 10.0, "adversarial_weight": 1.0,
                                           "supervised_weight": 1.0, "critic_learning_rate": 2e-4,
                                           "critic_channels": 64}},
}


def _stop_rules(params) -> StopRules:
    return StopRules(max_iterations=params.max_iterations)


def _method(id: str, title: str, params: type, build, description: str) -> Method:
    """A Method with the stack / ground-truth options, passing only those the engine already knows."""
    extra = dict(inputs="stack", ground_truth="required", semantic=True, prepare=prepare, load=load)
    known = {f.name for f in dataclasses.fields(Method)}
    return Method(id=id, title=title, params=params, build=build, description=description,
                  stop_rules=_stop_rules, presets=PRESETS[id], **{k: v for k, v in extra.items() if k in known})


UNET = _method("unet", "U-Net (supervised)", UNetParams, UNetTrainer,
               "U-Net (Ronneberger et al. 2015) trained on the labelled slices of a stack")
LGAN = _method("lgan", "LGAN (adversarial)", LGANParams, LGANTrainer,
               "U-Net plus a Wasserstein critic of (image, mask) pairs (Tan et al. 2019)")
CYCLE = _method("cycle", "Cycle GAN (semi-supervised)", CycleParams, CycleTrainer,
                "Cycle-consistent GAN (after Zhu et al. 2017): labelled and unlabelled slices train it")

METHODS = [UNET, LGAN, CYCLE]
