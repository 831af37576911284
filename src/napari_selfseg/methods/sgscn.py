"""Spatially guided self-supervised clustering (SGSCN).

Ahn, Feng and Kim, "A spatial guided self-supervised clustering network for medical image segmentation",
MICCAI 2021 (arXiv 2107.04934; reference code github.com/osmond332/Spatial_Guided_Self_Supervised_Clustering).

A small CNN (3x3 conv -> ReLU -> BatchNorm layers with as many filters as the maximum cluster count, then
a 1x1 conv and BatchNorm: the network of the reference code, :class:`~napari_selfseg.nn.ResponseNet`) maps
the image to responses normalised to zero mean and unit variance per channel; each pixel's cluster is the
argmax. Three losses train it on the image alone: cross-entropy against its own argmax (feature
similarity, ``w_ce``), the L1 of vertical and horizontal response differences (sparse spatial loss,
``w_ss``) and the context-based consistency loss (``w_cc``), which treats each cluster's soft map as a
spatial distribution and penalises the pixels' squared distance to its centre, so clusters become
spatially compact. Clusters merge as training goes on; training stops at ``min_labels`` clusters.

As in feature clustering (whose helpers this module reuses), training runs on a downsampled copy of the
image (``scale``, capped at ``train_pixels``) and the trained network then labels the full image.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..engine import Method, StopRules, TrainContext
from ..losses import context_consistency, self_label_cross_entropy, spatial_continuity
from ..nn import ResponseNet
from ..params import param
from ..postprocess import PostprocessParams
from .feature_clustering import (
    _cluster_means,
    _colour_merge,
    _features,
    _merge_small_regions,
    _reassign_by_colour,
    _to_tensor,
    _training_scale,
    _ward_merge,
    merge_edges_param,
    merge_regions_param,
    refine_method_param,
    vote_and_merge,
)


@dataclass
class SGSCNParams(PostprocessParams):
    """Parameters of SGSCN; the defaults are the fast interactive setting (see docs/methods/sgscn.md)."""

    w_ce: float = param(1.0, low=0.0, high=10.0, step=0.1, label="cross-entropy weight",
                        help="Weight of the feature-similarity loss (cross-entropy against the argmax labels)")
    w_ss: float = param(1.0, low=0.0, high=20.0, step=0.1, label="spatial weight",
                        help="Weight of the sparse spatial loss (L1 of neighbouring response differences): "
                             "higher gives smoother, fewer regions (reference code: 5)")
    w_cc: float = param(5.0, low=0.0, high=20.0, step=0.1, label="consistency weight",
                        help="Weight of the context-based consistency loss: higher pulls each cluster's "
                             "pixels towards the cluster's centre (compact regions)")
    consistency_weighting: str = param("mass", choices=("mass", "clusters"), advanced=True,
                                       help="How the consistency loss averages the clusters' spatial spreads: "
                                            "weighted by their size ('mass': each pixel's expected squared "
                                            "distance to its cluster's centre) or equally over the clusters "
                                            "present ('clusters', as the paper's sum; it dissolves small "
                                            "clusters, lesions included, into the background)")
    cross_entropy: bool = param(True, label="use cross-entropy", help="Ablation switch of the cross-entropy term")
    sparse_spatial: bool = param(True, label="use spatial loss", help="Ablation switch of the sparse spatial term")
    consistency: bool = param(True, label="use consistency loss",
                              help="Ablation switch of the context-based consistency term")
    learning_rate: float = param(0.1, low=1e-4, high=1.0, log=True,
                                 help="SGD learning rate, momentum 0.9 (paper: 0.1 dermoscopy, 0.05 ultrasound)")
    max_clusters: int = param(100, low=2, high=256, step=1, label="max clusters",
                              help="Clusters the argmax may use: the first this many responses (at most the "
                                   "filter count); lowering it during training merges the others into them")
    min_labels: int = param(4, low=1, high=100, step=1, label="min clusters", live=False,
                            help="Stop when at most this many clusters remain")
    max_iterations: int = param(250, low=1, high=5000, step=10, live=False,
                                help="Stop after this many optimisation steps (reference code: 50)")
    channels: int = param(32, low=4, high=256, step=4, live=False, label="filters",
                          help="Filters of every conv layer = the maximum cluster count (paper: 100)")
    conv_layers: int = param(2, low=1, high=6, step=1, live=False,
                             help="Number of 3x3 conv -> ReLU -> BatchNorm layers before the 1x1 response "
                                  "layer (reference code: 2, i.e. three conv layers in all)")
    scale: float = param(1.0, low=0.05, high=1.0, step=0.05, live=False,
                         help="Train on the image resized by at most this factor (see train_pixels), then "
                              "label it at full resolution")
    train_pixels: int = param(12000, low=0, high=4_000_000, step=1000, live=False, advanced=True,
                              help="Train on at most about this many pixels: larger images are resized further "
                                   "than scale, so training time does not grow with image size (0 = no cap)")
    label_resolution: str = param("full", choices=("training", "full"), live=False,
                                  help="Final map: 'training' upsamples the responses of the training grid "
                                       "(smooth, compact regions, as trained); 'full' runs the network on the "
                                       "full-resolution image (sharper boundaries, more speckle)")
    colour_space: str = param("rgb+lab", choices=("rgb", "lab", "rgb+lab"), live=False,
                              help="Colour input of the network: RGB as given, CIE Lab, or both as six channels; "
                                   "gray images are used as they are")
    merge_to_min: bool = param(False, live=False, advanced=True, label="merge to min clusters",
                               help="Final map: when training ended with more than min clusters (max iterations), "
                                    "merge the clusters with the closest mean responses (Ward) down to min clusters")
    merge_cost: float = param(0.0, low=0.0, high=1.0, step=0.005, live=False, advanced=True,
                              help="Final map: merge clusters whose mean responses are close while the Ward cost "
                                   "of a merge stays below this (0 = off)")
    refine_superpixels: int = param(4000, low=0, high=20000, step=50, live=False, advanced=True,
                                    help="Final map: give each of about this many full-resolution superpixels its "
                                         "majority label (0 = off); snaps boundaries to image edges")
    refine_method: str = refine_method_param()
    compactness: float = param(30.0, low=0.1, high=1000.0, live=False, advanced=True,
                               help="SLIC compactness of the final-map superpixels (when made by SLIC)")
    merge_regions: float = merge_regions_param()
    merge_edges: float = merge_edges_param()
    min_region: float = param(0.0, low=0.0, high=0.1, step=0.0005, live=False, advanced=True,
                              help="Final map: connected regions smaller than this fraction of the image are "
                                   "merged into the nearest larger region (0 = off)")
    merge_colours: int = param(0, low=0, high=20, step=1, live=False, label="merge by colour to",
                               help="Final map: merge the clusters with the closest mean colour (Ward, CIE Lab) "
                                    "until at most this many remain (0 = off); joins the look-alike areas the "
                                    "consistency loss splits apart (e.g. skin around a lesion)")
    reassign_steps: int = param(0, low=0, high=20, step=1, live=False, label="reassign steps",
                                help="Final map, after any merge by colour: each superpixel (each pixel if "
                                     "superpixels are off) joins the cluster whose colours (CIE Lab, gray: "
                                     "intensity; mean and spread) fit its own best, repeated this many times "
                                     "(0 = off); fixes regions the network grouped with the wrong side (a pale "
                                     "lesion rim with the skin)")


PRESETS = {
    "interactive": {},
    # One object on a background (dermoscopy lesions; the best-overlap protocol): the final map is merged
    # down to two clusters by colour, the superpixels are regrouped by how well they fit each cluster's
    # colours (4 steps), and border regions (vignetting) get their own label (docs/methods/sgscn.md).
    # It keeps the final map it was chosen with: 1000 SLIC superpixels and no region merge.
    "lesion": {"merge_colours": 2, "reassign_steps": 4, "border_components": True, "refine_method": "slic",
               "refine_superpixels": 1000, "merge_regions": 0.0},
    # The paper / reference code for dermoscopy: 100 filters, three 3x3 layers, CE weight 1, spatial weight 5,
    # consistency on, SGD lr 0.1, at most 50 iterations or 3 clusters, full image, RGB, no refinement.
    "paper": {"w_ce": 1.0, "w_ss": 5.0, "w_cc": 1.0, "consistency_weighting": "clusters", "cross_entropy": True,
              "sparse_spatial": True, "consistency": True, "learning_rate": 0.1, "max_clusters": 100,
              "min_labels": 3, "max_iterations": 50, "channels": 100, "conv_layers": 2, "scale": 1.0,
              "train_pixels": 0, "label_resolution": "full", "colour_space": "rgb", "merge_to_min": False,
              "merge_cost": 0.0, "refine_superpixels": 0, "min_region": 0.0, "merge_colours": 0,
              "reassign_steps": 0, "merge_regions": 0.0},
}


def _merge_down_to(counts: np.ndarray, means: np.ndarray, lut: np.ndarray, clusters: int) -> np.ndarray:
    """Greedy Ward merging of the clusters of ``lut`` ``(q,)`` (old -> new ids; ``counts`` ``(q,)`` pixels and
    ``means`` ``(q, c)`` mean responses of the old ids) until at most ``clusters`` remain; returns the new lut.

    Why: training that ends by its iteration budget can leave the image in many clusters, and a user who
    asked for ``min_labels`` clusters (or the best-overlap rule) wants that many, merged where alike."""
    n = np.bincount(lut, weights=counts, minlength=len(counts))  # the clusters lut already made
    m = np.zeros_like(means, dtype=np.float64)
    np.add.at(m, lut, means * counts[:, None])
    m /= np.maximum(n, 1)[:, None]
    return _ward_merge(n, m, min_clusters=clusters)[lut]


def _stop_rules(params: SGSCNParams) -> StopRules:
    return StopRules(max_iterations=params.max_iterations, min_clusters=params.min_labels)


def _in_channels(image_channels: int, colour_space: str) -> int:
    """Network input channels for a prepared image with ``image_channels`` channels (see ``_features``)."""
    if image_channels != 3 or colour_space == "rgb":
        return image_channels
    return 6 if colour_space == "rgb+lab" else 3


class SGSCNModel:
    """The trained network and what labelling an image needs; shared by the trainer and :func:`load`."""

    def __init__(self, params: SGSCNParams, in_channels: int, device: torch.device, autocast=None):
        self.params = params
        self.device = device
        self.net = ResponseNet(in_channels, params.channels, params.channels, params.conv_layers).to(device)
        self.autocast = autocast or contextlib.nullcontext  # () -> context manager (bf16 on CUDA in training)

    @property
    def clusters(self) -> int:
        """Responses in use: ``max_clusters``, at most the filter count (read live)."""
        return max(1, min(self.params.max_clusters, self.params.channels))

    def inputs(self, image: np.ndarray, scale: float) -> torch.Tensor:
        """``(1, C', y, x)`` network input of a prepared ``(Y, X, C)`` image resized by ``scale``."""
        return _to_tensor(_features(image, self.params.colour_space, 0.0), self.device, scale)

    def responses(self, x: torch.Tensor) -> torch.Tensor:
        """``(1, K, y, x)`` float32 normalised responses of the ``K`` clusters in use."""
        # train mode: BatchNorm uses the input's own statistics, as in training (Kanezaki's reference code)
        self.net.train()
        with self.autocast():
            out = self.net(x)
        return out.float()[:, : self.clusters]

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> np.ndarray:
        """Cluster ids ``(Y, X)`` of a prepared ``(Y, X, C)`` image, with the final-map refinements."""
        p = self.params
        shape = image.shape[:2]
        if p.label_resolution == "full":
            response = self.responses(self.inputs(image, 1.0))
        else:
            small = self.responses(self.inputs(image, _training_scale(shape, p.scale, p.train_pixels)))
            response = F.interpolate(small, size=shape, mode="bilinear", align_corners=False)
        labels = response.argmax(1)[0]
        if p.merge_cost > 0 or p.merge_to_min:
            counts, means = _cluster_means(response[0], labels)
            lut = _ward_merge(counts, means, p.merge_cost) if p.merge_cost > 0 else np.arange(len(counts))
            if p.merge_to_min:
                lut = _merge_down_to(counts, means, lut, p.min_labels)
            labels = torch.from_numpy(lut).to(labels.device)[labels]
        labels, segments = vote_and_merge(labels.cpu().numpy(), image, p)
        if p.merge_colours > 0:
            labels = _colour_merge(labels, image, p.merge_colours)
        if p.reassign_steps > 0:
            regions = segments if segments is not None else np.arange(labels.size).reshape(labels.shape)
            labels = _reassign_by_colour(labels, image, regions, p.reassign_steps)
        if p.min_region > 0:
            labels = _merge_small_regions(labels, max(1, round(p.min_region * labels.size)))
        return labels

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"net.{k}": v.detach().clone() for k, v in self.net.state_dict().items()}


def load(params: SGSCNParams, state_dict: dict[str, torch.Tensor], device: torch.device) -> SGSCNModel:
    """A predictor (``.predict(prepared (Y, X, C)) -> (Y, X)``) from :meth:`SGSCNTrainer.state_dict`."""
    in_channels = int(state_dict["net.features.0.weight"].shape[1])
    model = SGSCNModel(params, in_channels, torch.device(device))
    model.net.load_state_dict({k[len("net."):]: v for k, v in state_dict.items() if k.startswith("net.")})
    return model


class SGSCNTrainer:
    """One network trained on one image; see the module docstring."""

    done = False

    def __init__(self, ctx: TrainContext):
        self.ctx = ctx
        p = ctx.params
        self.scale = _training_scale(ctx.image.shape[:2], p.scale, p.train_pixels)
        self.model = SGSCNModel(p, _in_channels(ctx.image.shape[-1], p.colour_space), ctx.device, ctx.autocast)
        self.x = self.model.inputs(ctx.image, self.scale)
        self.optimiser = torch.optim.SGD(self.model.net.parameters(), lr=p.learning_rate, momentum=0.9)
        self.target = torch.zeros((1, *self.x.shape[-2:]), dtype=torch.long, device=ctx.device)

    def step(self) -> dict[str, torch.Tensor]:
        p = self.ctx.params
        self.model.params = p  # live sliders: weights, switches, learning rate, max clusters
        for group in self.optimiser.param_groups:
            group["lr"] = p.learning_rate
        response = self.model.responses(self.x)
        target = response.detach().argmax(1)
        self.target = target
        present = torch.bincount(target.reshape(-1), minlength=response.shape[1]) > 0
        consistency = context_consistency(response, present, p.consistency_weighting)
        terms = {  # all three are reported (the plot shows them); only the switched-on ones are optimised
            "cross-entropy": (self_label_cross_entropy(response, target), p.cross_entropy, p.w_ce),
            "spatial": (spatial_continuity(response), p.sparse_spatial, p.w_ss),
            "consistency": (consistency, p.consistency, p.w_cc),
        }
        loss = sum(weight * value for value, on, weight in terms.values() if on and weight > 0)
        if isinstance(loss, torch.Tensor):
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            self.optimiser.step()
        return {name: value.detach() for name, (value, _, _) in terms.items()}

    def current(self) -> np.ndarray:
        return self.target[0].cpu().numpy()

    def predict(self, image: np.ndarray) -> np.ndarray:
        self.model.params = self.ctx.params
        return self.model.predict(image)

    def finish(self) -> np.ndarray:
        return self.predict(self.ctx.image)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything :func:`load` needs besides the parameters: the network's weights."""
        return self.model.state_dict()


METHOD = Method(
    id="sgscn",
    title="Spatially guided clustering (SGSCN)",
    params=SGSCNParams,
    build=SGSCNTrainer,
    description="A CNN clusters the image's pixels, trained on the image alone with cross-entropy, sparse "
                "spatial and context-based consistency losses (Ahn, Feng and Kim, MICCAI 2021)",
    stop_rules=_stop_rules,
    presets=PRESETS,
    inputs="plane",
    load=load,
    # saved before the watershed vote and the region merge: 1000 SLIC superpixels (recorded), no merge
    older_defaults={"refine_method": "slic", "merge_regions": 0.0, "merge_edges": 0.0},
)
METHODS = [METHOD]
