"""Unsupervised segmentation by differentiable feature clustering.

Kanezaki, "Unsupervised image segmentation by backpropagation", ICASSP 2018 (SLIC superpixel
refinement); Kim, Kanezaki and Tanaka, "Unsupervised learning of image segmentation based on
differentiable feature clustering", IEEE TIP 2020 (spatial-continuity loss, scribbles, no-BN ablation).

A small CNN maps the image to ``q`` responses; each pixel's cluster is the argmax of its batch-normalised
response, and the network is trained to agree with its own argmax (feature similarity, weight ``theta``)
while neighbouring responses stay alike (spatial continuity, weight ``mu``). Clusters merge as training
goes on; training stops when at most ``min_labels`` remain. The spatial weight starts strong
(``mu_start`` for ``start_steps`` steps, so that coherent clusters form) and then relaxes to ``mu``
(boundaries and small regions sharpen while the clusters keep their identity).

Speed: training runs on a downsampled copy (``scale``, capped at ``train_pixels`` pixels, so a large
image trains as fast as a small one) and the trained network then labels the image at full resolution
in one forward pass, which both saves time and sharpens boundaries.

Additions beyond the papers, each a parameter that can be switched off: CIE Lab input
(``colour_space``), x/y coordinate input channels (``coordinates``), a training-size cap
(``train_pixels``), and four refinements of the final map: Ward merging of clusters by their mean
network responses (``merge_cost``), full-resolution superpixel majority voting (``refine_superpixels``,
superpixels by watershed of the colour gradient or by SLIC, ``refine_method``), merging of touching
regions of like colour where no edge runs between them (``merge_regions``, ``merge_edges``) and merging
of small connected regions (``min_region``). The ``paper`` preset switches them all off.
"""
from __future__ import annotations

import contextlib
import heapq
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.color import rgb2lab
from skimage.measure import label as connected_components
from skimage.filters import sobel
from skimage.segmentation import slic, watershed

from ..engine import Method, StopRules, TrainContext
from ..gaussians import log_likelihood
from ..losses import self_label_cross_entropy, spatial_continuity
from ..nn import ResponseNet
from ..params import param
from ..postprocess import PostprocessParams
from ..tiling import tiled_forward


def merge_regions_param():
    """The final map's region-merge threshold (a parameter declaration shared with SGSCN)."""
    return param(20.0, low=0.0, high=100.0, step=0.5, live=False, label="merge regions below",
                 help="Final map: neighbouring regions merge while their mean colours differ by less than this "
                      "(plus the edge term below), the most alike first, and each merged group takes its largest "
                      "cluster (CIE Lab colour difference for RGB, percent of the range for gray; 0 = off): joins "
                      "a lesion's core and rim")


def merge_edges_param():
    """The weight of the edge term in the final map's region merge (shared with SGSCN)."""
    return param(0.75, low=0.0, high=5.0, step=0.05, live=False, label="edge weight in merging",
                 help="Final map: the mean colour gradient along two regions' shared boundary (summed Sobel "
                      "magnitudes of the CIE Lab channels, or of the gray value in percent of the range) times this "
                      "is added to their colour difference before the merge threshold (0 = colour alone): objects "
                      "of like colour stay apart where an edge runs between them")


def refine_method_param():
    """How the final map's superpixels are made (shared with SGSCN)."""
    return param("watershed", choices=("watershed", "slic"), live=False, label="superpixels by",
                 help="Final map's superpixels: watershed of the colour (or gray) gradient from a regular grid of "
                      "seeds (follow edges, small where the image is detailed) or SLIC (compact, regular; see "
                      "compactness)")


@dataclass
class FeatureClusteringParams(PostprocessParams):
    """Parameters of feature clustering; the defaults are the fast interactive setting."""

    theta: float = param(1.0, low=0.0, high=10.0, step=0.1,
                         help="Weight of the feature-similarity loss (cross-entropy against the argmax labels)")
    mu: float = param(0.1, low=0.0, high=20.0, step=0.05,
                      help="Weight of the spatial-continuity loss (after the first 'start steps', which use "
                           "'start mu'): higher gives smoother, fewer regions; lower keeps finer detail")
    mu_start: float = param(1.0, low=0.0, high=20.0, step=0.1, label="start mu",
                            help="Weight of the spatial-continuity loss during the first 'start steps': a strong "
                                 "pull at first forms coherent clusters, which keep their identity while the "
                                 "weaker mu refines their boundaries")
    start_steps: int = param(60, low=0, high=5000, step=10, advanced=True,
                             help="Steps trained with 'start mu' before 'mu' takes over (0 = mu throughout)")
    min_labels: int = param(4, low=1, high=100, step=1, label="min clusters",
                            help="Stop when at most this many clusters remain")
    max_iterations: int = param(250, low=1, high=5000, step=10,
                                help="Stop after this many optimisation steps")
    learning_rate: float = param(0.1, low=1e-4, high=1.0, log=True,
                                 help="SGD learning rate (momentum 0.9)")
    scribble_weight: float = param(0.5, low=0.0, high=10.0, step=0.1,
                                   help="Weight of the cross-entropy on scribbled pixels (Kim et al. 2020)")
    channels: int = param(32, low=4, high=256, step=4, live=False,
                          help="Feature channels p and maximum cluster count q (paper: 100)")
    conv_layers: int = param(2, low=1, high=6, step=1, live=False,
                             help="Number of 3x3 conv -> ReLU -> BN components M (paper: 2)")
    scale: float = param(1.0, low=0.1, high=1.0, step=0.05, live=False,
                         help="Train on the image resized by at most this factor (see train_pixels), then "
                              "label it at full resolution")
    train_pixels: int = param(12000, low=0, high=4_000_000, step=1000, live=False, advanced=True,
                              help="Train on at most about this many pixels: larger images are resized further "
                                   "than scale, so training time does not grow with image size (0 = no cap)")
    batch_norm: bool = param(True, live=False, help="Batch normalisation (off = the no-BN ablation of Kim 2020)")
    superpixels: bool = param(False, live=False,
                              help="SLIC superpixel refinement: each superpixel's majority label is the target "
                                   "(Kanezaki 2018)")
    n_superpixels: int = param(1000, low=10, high=20000, step=10, live=False, advanced=True,
                               help="Number of SLIC superpixels")
    compactness: float = param(30.0, low=0.1, high=1000.0, live=False, advanced=True,
                               help="SLIC compactness (training superpixels, and the final map's when refined by "
                                    "SLIC): higher gives squarer ones")
    colour_space: str = param("rgb+lab", choices=("rgb", "lab", "rgb+lab"), live=False,
                              help="Colour input of the network: RGB as given, CIE Lab (closer to perceived "
                                   "colour differences), or both as six channels; gray images are used as they are")
    coordinates: float = param(0.0, low=0.0, high=10.0, step=0.1, live=False, advanced=True,
                               help="Weight of two extra input channels holding the pixel's x and y position "
                                    "(0 = off): favours spatially compact clusters")
    min_region: float = param(0.0, low=0.0, high=0.1, step=0.0005, live=False, advanced=True,
                              help="Final map: connected regions smaller than this fraction of the image are "
                                   "merged into the nearest larger region (0 = off); removes speckle")
    merge_cost: float = param(0.0, low=0.0, high=1.0, step=0.005, live=False, advanced=True,
                              help="Final map: merge clusters whose mean network responses are close, while the "
                                   "Ward cost of a merge stays below this (a fraction of the response variance; "
                                   "0 = off); how many clusters remain depends on the image")
    refine_superpixels: int = param(4000, low=0, high=20000, step=50, live=False,
                                    help="Final map: give each of about this many full-resolution superpixels its "
                                         "majority label (0 = off); snaps boundaries to image edges")
    merge_regions: float = merge_regions_param()
    merge_edges: float = merge_edges_param()
    refine_method: str = refine_method_param()


PRESETS = {
    "interactive": {},
    # Natural photos: a weaker late spatial pull keeps more small objects (BSDS500 best-IoU higher than the
    # default's at each of four seeds, by 0.003 on their mean; dermoscopy and the gray sets about the same);
    # see docs/methods.md ("Session 12") and BENCHMARKS.md.
    "photos": {"mu": 0.05},
    # The papers' setting: p = q = 100, M = 2, theta = mu = 1, stop at 3 labels or 1000 iterations, full
    # scale, RGB input and no final-map refinement (set explicitly, so changed defaults cannot leak in);
    # the SLIC settings, used only when superpixels is switched on, are those of Kanezaki's reference code.
    "paper": {"theta": 1.0, "mu": 1.0, "start_steps": 0, "min_labels": 3, "max_iterations": 1000,
              "channels": 100, "conv_layers": 2, "scale": 1.0, "train_pixels": 0, "learning_rate": 0.1,
              "batch_norm": True, "superpixels": False, "n_superpixels": 10000, "compactness": 100.0,
              "colour_space": "rgb", "coordinates": 0.0, "min_region": 0.0, "merge_cost": 0.0,
              "refine_superpixels": 0, "refine_method": "slic", "merge_regions": 0.0, "merge_edges": 0.0},
}


def _stop_rules(params: FeatureClusteringParams) -> StopRules:
    return StopRules(max_iterations=params.max_iterations, min_clusters=params.min_labels)


def _features(image: np.ndarray, colour_space: str, coordinates: float) -> np.ndarray:
    """``(Y, X, C)`` image in [0, 1] -> ``(Y, X, C')`` float32 network input.

    Lab is scaled to roughly [0, 1] for L and [-1, 1] for a, b (divided by 100), so the first
    convolution sees colour and lightness on similar scales. Coordinates are ``x / max(Y, X)`` and
    ``y / max(Y, X)`` times ``coordinates``: the aspect ratio is kept, so a weight means the same
    spatial pull on a portrait or a landscape image.
    """
    channels = [image]
    if colour_space in ("lab", "rgb+lab") and image.shape[-1] == 3:
        lab = rgb2lab(image).astype(np.float32) / 100.0
        channels = [image, lab] if colour_space == "rgb+lab" else [lab]
    if coordinates > 0:
        h, w = image.shape[:2]
        span = max(h, w)
        yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
        channels.append(np.stack([yy, xx], axis=-1) * (coordinates / span))
    return np.concatenate(channels, axis=-1).astype(np.float32, copy=False)


def _merge_small_regions(labels: np.ndarray, min_pixels: int) -> np.ndarray:
    """Give every connected region of ``labels`` ``(Y, X)`` smaller than ``min_pixels`` the label of the
    nearest pixel of a larger region (Euclidean distance, in pixels).

    Why: the BSDS protocol (and a user's eye) treats every connected component as a segment, so a few
    hundred specks of a cluster inside another one cost more than they carry.
    """
    components = connected_components(labels + 1, background=0, connectivity=1)
    sizes = np.bincount(components.ravel())
    small = sizes[components] < min_pixels
    if not small.any() or small.all():
        return labels
    _, (iy, ix) = ndi.distance_transform_edt(small, return_indices=True)
    return labels[iy, ix]


def _colour_gradient(colours: np.ndarray) -> np.ndarray:
    """Edge strength ``(Y, X)`` of ``colours`` ``(Y, X, C)`` (:func:`_colours_for_merging`): the summed
    Sobel magnitudes of its channels, in colour units (CIE Lab, or percent of the gray range)."""
    return sum(sobel(colours[..., c]) for c in range(colours.shape[-1]))


def _touching_pairs(regions: np.ndarray, gradient: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids of ``regions`` ``(Y, X)`` that touch (8-neighbourhood): unique pairs ``(n, 2)`` with ``a < b``,
    and for each pair the summed edge strength across its boundary ``(n,)`` and the number of
    neighbouring pixel pairs it sums ``(n,)``. A pixel pair's edge strength is the larger ``gradient``
    ``(Y, X)`` of its two pixels (0 without a gradient)."""
    n = int(regions.max()) + 1
    keys, strengths = [], []
    for first, second in ((np.s_[:, :-1], np.s_[:, 1:]), (np.s_[:-1], np.s_[1:]),
                          (np.s_[:-1, :-1], np.s_[1:, 1:]), (np.s_[:-1, 1:], np.s_[1:, :-1])):
        a, b = regions[first], regions[second]
        differ = a != b  # boundary pixels only: small even for a large image
        a, b = a[differ].astype(np.int64), b[differ].astype(np.int64)
        keys.append(np.minimum(a, b) * n + np.maximum(a, b))
        if gradient is not None:
            strengths.append(np.maximum(gradient[first][differ], gradient[second][differ]))
    unique, which = np.unique(np.concatenate(keys), return_inverse=True)
    counts = np.bincount(which, minlength=len(unique)).astype(np.float64)
    sums = (np.bincount(which, weights=np.concatenate(strengths), minlength=len(unique))
            if gradient is not None else np.zeros(len(unique)))
    return np.stack([unique // n, unique % n], axis=1), sums, counts


def _merge_similar_regions(labels: np.ndarray, colours: np.ndarray, max_difference: float,
                           gradient: np.ndarray | None = None, edge_weight: float = 0.0) -> np.ndarray:
    """Merge touching connected regions of ``labels`` ``(Y, X)`` (ids from 0) while the cost of a merge
    stays below ``max_difference``, the cheapest pair first, costs updated after each merge. The cost is
    the Euclidean difference of the two regions' mean ``colours`` ``(Y, X, C)`` (:func:`_colours_for_merging`)
    plus ``edge_weight`` times the mean edge strength along their shared boundary (``gradient`` ``(Y, X)``,
    :func:`_colour_gradient`), both in colour units. Each merged group then takes the label that covers
    most of it. Returns ``(Y, X)`` labels, a subset of those of ``labels``.

    Why: the network often gives one object two clusters (a lesion's dark core and paler rim) that lie
    side by side and look alike next to what surrounds them; a colour criterion on touching regions joins
    them, where merging whole clusters by colour (Ward) also joined distant objects and cost BSDS500 more
    than it gained on PH2 (docs/methods.md). The edge term keeps neighbouring objects of like colour
    apart when a visible edge runs between them, while a core fading into its rim merges, so the colour
    threshold can rise (BSDS500 and PH2 both gained). Keeping a label per group keeps the map a cluster
    map.
    """
    regions = connected_components(labels + 1, background=0, connectivity=1) - 1
    n = int(regions.max()) + 1
    counts, sums = _mean_colours(regions, colours)
    sums *= counts[:, None]  # colour sums: a merge adds them
    use_edges = edge_weight > 0 and gradient is not None
    pairs, edge_sums, edge_counts = _touching_pairs(regions, gradient if use_edges else None)
    # per touching pair (a < b): [summed edge strength, pixel pairs]; a merge adds those of shared neighbours
    edges = {(a, b): [s, c] for (a, b), s, c in zip(pairs.tolist(), edge_sums.tolist(), edge_counts.tolist())}
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    parent = np.arange(n)  # a merged region points at the region it joined
    version = np.zeros(n, dtype=np.int64)  # bumped at each merge: older heap entries are stale

    def entry(a: int, b: int):
        a, b = min(a, b), max(a, b)
        difference = float(np.linalg.norm(sums[a] / counts[a] - sums[b] / counts[b]))
        if use_edges:
            edge_sum, edge_count = edges[a, b]
            difference += edge_weight * edge_sum / edge_count
        return difference, a, b, version[a], version[b]

    heap = [e for a, b in edges if (e := entry(a, b))[0] < max_difference]
    heapq.heapify(heap)
    while heap:
        _, a, b, version_a, version_b = heapq.heappop(heap)
        if parent[a] != a or parent[b] != b or version[a] != version_a or version[b] != version_b:
            continue
        keep, gone = (a, b) if counts[a] >= counts[b] else (b, a)
        sums[keep] += sums[gone]
        counts[keep] += counts[gone]
        parent[gone] = keep
        version[keep] += 1
        del edges[min(keep, gone), max(keep, gone)]
        for other in neighbours[gone] - {keep}:
            moved = edges.pop((min(gone, other), max(gone, other)))
            joined = edges.setdefault((min(keep, other), max(keep, other)), [0.0, 0.0])
            joined[0] += moved[0]
            joined[1] += moved[1]
            neighbours[other].discard(gone)
            neighbours[other].add(keep)
        neighbours[keep] = (neighbours[keep] | neighbours[gone]) - {keep, gone}
        for other in neighbours[keep]:
            if (e := entry(keep, other))[0] < max_difference:
                heapq.heappush(heap, e)
    while not np.array_equal(parent[parent], parent):  # follow chains of merges to each group's root
        parent = parent[parent]
    groups = parent[regions]
    return _superpixel_majority(labels, groups)


def _cluster_means(response: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster pixel counts ``(q,)`` and mean responses ``(q, q)`` of a ``(q, Y, X)`` response and
    its ``(Y, X)`` argmax labels."""
    q = response.shape[0]
    flat, ids = response.reshape(q, -1).T.float(), labels.reshape(-1)
    counts = torch.bincount(ids, minlength=q).float()
    sums = torch.zeros((q, q), dtype=flat.dtype, device=flat.device).index_add_(0, ids, flat)
    return counts.cpu().numpy(), (sums / counts.clamp(min=1)[:, None]).cpu().numpy()


def _ward_merge(counts: np.ndarray, means: np.ndarray, max_cost: float = np.inf,
                min_clusters: int = 1) -> np.ndarray:
    """Greedy Ward merging of clusters with ``counts`` ``(q,)`` pixels and mean responses ``(q, c)``:
    the pair with the cheapest merge joins while its cost ``n_a n_b / (n_a + n_b) |m_a - m_b|^2``,
    divided by ``sum(counts) * c`` (a fraction of unit per-channel variance), stays below ``max_cost``
    and more than ``min_clusters`` clusters remain. Returns the lookup ``(q,)`` from old to new ids."""
    lut = np.arange(len(counts))
    alive = list(np.flatnonzero(counts > 0))
    n, m = counts.astype(np.float64), means.astype(np.float64)
    norm = max(counts.sum() * means.shape[1], 1e-12)
    while len(alive) > max(1, min_clusters):
        a = np.array(alive)
        na, ma = n[a], m[a]
        cost = na[:, None] * na[None] / (na[:, None] + na[None]) * ((ma[:, None] - ma[None]) ** 2).sum(-1) / norm
        cost[np.tril_indices(len(a))] = np.inf
        i, j = np.unravel_index(np.argmin(cost), cost.shape)
        if cost[i, j] > max_cost:
            break
        keep, gone = a[i], a[j]
        m[keep] = (m[keep] * n[keep] + m[gone] * n[gone]) / (n[keep] + n[gone])
        n[keep] += n[gone]
        lut[lut == gone] = keep
        alive.remove(gone)
    return lut


def _colours_for_merging(image: np.ndarray) -> np.ndarray:
    """The colours clusters are merged and regrouped by, ``(Y, X, C)`` float64 of a ``(Y, X, C)`` image in
    [0, 1]: CIE Lab for RGB (L from 0 to 100); other channels (gray) times 100, so that they are on the same
    scale and :func:`_colour_gaussians`' ridge means the same for both."""
    if image.shape[-1] == 3:
        return rgb2lab(image[..., :3])
    return image.astype(np.float64) * 100.0


def _mean_colours(ids: np.ndarray, colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts ``(q,)`` and mean colours ``(q, C)`` of the ids ``(Y, X)`` (from 0) in ``colours``
    ``(Y, X, C)``."""
    flat = ids.ravel()
    q = int(flat.max()) + 1
    counts = np.bincount(flat, minlength=q).astype(np.float64)
    sums = np.stack([np.bincount(flat, weights=colours[..., c].ravel(), minlength=q)
                     for c in range(colours.shape[-1])], axis=1)
    return counts, sums / np.maximum(counts, 1)[:, None]


def _colour_merge(labels: np.ndarray, image: np.ndarray, clusters: int) -> np.ndarray:
    """Merge the clusters of ``labels`` ``(Y, X)`` (ids from 0) by greedy Ward linkage of their mean colours
    in ``image`` ``(Y, X, C)`` (see :func:`_colours_for_merging`) until at most ``clusters`` remain; returns the
    merged ``(Y, X)`` ids.

    Why: the network splits uniform areas into several spatially compact clusters (skin around a lesion),
    and the best-overlap rule (or a user who wants "object vs. rest") needs them joined by what they look
    like, not by the network's responses, which differ between such clusters by design.
    """
    return _ward_merge(*_mean_colours(labels, _colours_for_merging(image)), min_clusters=clusters)[labels]


def _colour_gaussians(ids: np.ndarray, colours: np.ndarray,
                      ridge: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel counts ``(q,)``, mean colours ``(q, C)`` and colour covariances ``(q, C, C)`` of the ids
    ``(Y, X)`` (from 0) in ``colours`` ``(Y, X, C)``; ``ridge`` (colour units squared) is added to every
    diagonal, so a uniform or one-pixel cluster still has an invertible covariance."""
    counts, means = _mean_colours(ids, colours)
    flat, c = ids.ravel(), colours.shape[-1]
    pixels = colours.reshape(-1, c)
    second = np.stack([np.bincount(flat, weights=pixels[:, i] * pixels[:, j], minlength=len(counts))
                       for i in range(c) for j in range(c)], axis=1).reshape(-1, c, c)
    covariances = second / np.maximum(counts, 1)[:, None, None] - means[:, :, None] * means[:, None, :]
    return counts, means, covariances + ridge * np.eye(c)


def _reassign_by_colour(labels: np.ndarray, image: np.ndarray, segments: np.ndarray, steps: int = 1) -> np.ndarray:
    """Regroup the regions of ``segments`` ``(Y, X)`` (superpixel ids from 0, or one id per pixel) among the
    clusters of ``labels`` ``(Y, X)`` by colour: each cluster is a Gaussian over its pixels' colours
    (:func:`_colours_for_merging`: mean and full covariance), and each region joins the cluster under
    which its own mean colour is most likely (equal priors). Repeated ``steps`` times (classification EM
    started from ``labels``); returns ``(Y, X)`` ids, a subset of those of ``labels``.

    Why: after a merge down to a few colour groups (lesion and skin), a region the network had put in a
    cluster with the wrong group (a pale lesion rim sharing a skin cluster) is judged on its own colour.
    A cluster's own spread counts: skin is uniform, a lesion varies, so lighter lesion areas stay with the
    lesion where a nearest-mean rule would give them to the skin. Equal priors, because a prior by size
    favours the larger group (the skin) and took part of the lesions back in our tests.
    """
    colours = _colours_for_merging(image)
    _, region_means = _mean_colours(segments, colours)
    for _ in range(steps):
        counts, means, covariances = _colour_gaussians(labels, colours)
        present = np.flatnonzero(counts > 0)
        fit = np.stack([log_likelihood(region_means, means[k], covariances[k]) for k in present], axis=1)
        regrouped = present[fit.argmax(1)][segments]
        if np.array_equal(regrouped, labels):  # converged: further steps would change nothing
            break
        labels = regrouped
    return labels


def _slic(image: np.ndarray, n_segments: int, compactness: float) -> np.ndarray:
    """SLIC superpixels ``(Y, X)`` ids from 0 of a ``(Y, X, C)`` image; gray is passed as 2D so that SLIC
    does not take the channel axis for a third spatial one."""
    if image.shape[-1] == 1:
        return slic(image[..., 0], n_segments=n_segments, compactness=compactness, start_label=0, channel_axis=None)
    return slic(image, n_segments=n_segments, compactness=compactness, start_label=0, channel_axis=-1)


def _watershed_superpixels(image: np.ndarray, n_segments: int, gradient: np.ndarray | None = None) -> np.ndarray:
    """Superpixels ``(Y, X)`` ids from 0 of a ``(Y, X, C)`` image in [0, 1]: the watershed of its colour
    gradient (:func:`_colour_gradient` of :func:`_colours_for_merging`, CIE Lab for RGB) flooded from a
    regular grid of about ``n_segments`` seeds.

    Why: without SLIC's shape prior they follow colour edges and stay small where the image is detailed,
    so a majority vote in them keeps small objects and exact outlines (BSDS500 best-IoU about +0.02 over
    SLIC, docs/methods.md). Only the order of the gradient values matters, not their scale. ``gradient``:
    the image's ``(Y, X)`` colour gradient, when the caller has it already.
    """
    gradient = _colour_gradient(_colours_for_merging(image)) if gradient is None else gradient
    return watershed(gradient, markers=n_segments) - 1


def _refinement_superpixels(image: np.ndarray, p, gradient: np.ndarray | None = None) -> np.ndarray:
    """The final map's superpixels ``(Y, X)`` of a ``(Y, X, C)`` image: ``p.refine_superpixels`` of them,
    made as ``p.refine_method`` says (watershed: of ``gradient``, see :func:`_watershed_superpixels`)."""
    if p.refine_method == "watershed":
        return _watershed_superpixels(image, p.refine_superpixels, gradient)
    return _slic(image, p.refine_superpixels, p.compactness)


def _superpixel_majority(labels: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Each region of ``segments`` ``(Y, X)`` (superpixel ids from 0) takes the most
    frequent label of ``labels`` ``(Y, X)``."""
    q = int(labels.max()) + 1
    votes = np.bincount((segments * q + labels).ravel(), minlength=(int(segments.max()) + 1) * q)
    return votes.reshape(-1, q).argmax(1)[segments]


def _training_scale(shape: tuple[int, int], scale: float, train_pixels: int) -> float:
    """Resize factor of the training grid for an image of ``shape`` ``(Y, X)``: ``scale``, lowered so that
    the grid holds at most about ``train_pixels`` pixels (0 = no cap)."""
    if train_pixels > 0:
        scale = min(scale, float(np.sqrt(train_pixels / (shape[0] * shape[1]))))
    return scale


def _to_tensor(image: np.ndarray, device: torch.device, scale: float) -> torch.Tensor:
    """``(Y, X, C)`` float image -> ``(1, C, y, x)`` tensor, area-downsampled by ``scale``."""
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(device)
    if scale < 1.0:
        size = [max(2, round(s * scale)) for s in image.shape[:2]]
        x = F.interpolate(x, size=size, mode="area")
    return x


class FeatureClusteringTrainer:
    """One network trained on one image; see the module docstring."""

    done = False

    def __init__(self, ctx: TrainContext):
        self.ctx = ctx
        p = ctx.params
        self.scale = _training_scale(ctx.image.shape[:2], p.scale, p.train_pixels)
        self.x = _to_tensor(_features(ctx.image, p.colour_space, p.coordinates), ctx.device, self.scale)
        h, w = self.x.shape[-2:]
        self.model = ResponseNet(self.x.shape[1], p.channels, p.channels, p.conv_layers, p.batch_norm).to(ctx.device)
        self.optimiser = torch.optim.SGD(self.model.parameters(), lr=p.learning_rate, momentum=0.9)
        self.superpixels = self._superpixels(h, w) if p.superpixels else None
        self.scribbles, self.scribble_mask = self._scribbles(h, w)
        self.target = torch.zeros((1, h, w), dtype=torch.long, device=ctx.device)
        self.tile = TILE  # pixels per tile side of full-resolution passes; halved after an out-of-memory
        self.iteration = 0  # steps taken: the spatial weight is mu_start for the first start_steps

    def reduce_memory(self) -> bool:
        """Halve the full-resolution tile (down to 128 px); False when it cannot shrink further."""
        if self.tile <= 128:
            return False
        self.tile //= 2
        return True

    def _superpixels(self, h: int, w: int) -> torch.Tensor:
        p = self.ctx.params
        # The image's own colours on the training grid (not the Lab / x-y network input): SLIC wants RGB.
        small = _to_tensor(self.ctx.image, torch.device("cpu"), self.scale)[0].permute(1, 2, 0).numpy()
        segments = _slic(small, p.n_superpixels, p.compactness)
        self.n_segments = int(segments.max()) + 1  # known here, so step() needs no host sync for it
        return torch.from_numpy(segments.reshape(-1).astype(np.int64)).to(self.ctx.device)

    def _scribbles(self, h: int, w: int):
        """Scribble classes resized to the training grid: ``(1, h, w)`` targets and a bool mask."""
        if self.ctx.scribbles is None or not np.any(self.ctx.scribbles > 0):
            return None, None
        s = torch.from_numpy(np.asarray(self.ctx.scribbles, dtype=np.int64))[None, None].float()
        s = F.interpolate(s, size=(h, w), mode="nearest")[0].long().to(self.ctx.device)
        _, classes = torch.unique(s, return_inverse=True)  # scribble ids -> 0..k (0 = unlabelled)
        mask = s > 0
        return (classes - 1).clamp(min=0), mask

    def _targets(self, response: torch.Tensor) -> torch.Tensor:
        target = response.argmax(1)  # (1, h, w)
        if self.superpixels is not None:
            q = response.shape[1]
            flat = target.reshape(-1)
            votes = torch.bincount(self.superpixels * q + flat, minlength=self.n_segments * q)
            majority = votes.reshape(-1, q).argmax(1)
            target = majority[self.superpixels].reshape(target.shape)
        return target

    def step(self) -> dict[str, torch.Tensor]:
        p = self.ctx.params
        for group in self.optimiser.param_groups:
            group["lr"] = p.learning_rate
        self.model.train()
        with self.ctx.autocast():
            response = self.model(self.x)
        response = response.float()
        target = self._targets(response.detach())
        self.target = target
        free = None if self.scribble_mask is None else ~self.scribble_mask
        similarity = self_label_cross_entropy(response, target, free)
        continuity = spatial_continuity(response)
        mu = p.mu_start if self.iteration < p.start_steps else p.mu
        self.iteration += 1
        loss = p.theta * similarity + mu * continuity
        losses = {"similarity": similarity.detach(), "continuity": continuity.detach()}
        if self.scribbles is not None:
            scribble = self_label_cross_entropy(response, self.scribbles, self.scribble_mask)
            loss = loss + p.scribble_weight * scribble
            losses["scribbles"] = scribble.detach()
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        return losses

    def current(self) -> np.ndarray:
        return self.target[0].cpu().numpy()

    def predict(self, image: np.ndarray) -> np.ndarray:
        return predict_clusters(self.model, self.ctx.params, image, self.ctx.device, self.ctx.autocast(), self.tile)

    def finish(self) -> np.ndarray:
        return self.predict(self.ctx.image)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.model.state_dict())


def vote_and_merge(labels: np.ndarray, image: np.ndarray, p) -> tuple[np.ndarray, np.ndarray | None]:
    """The final map's superpixel vote and region merge of cluster ids ``(Y, X)`` on a prepared ``(Y, X, C)``
    image, as ``p`` (``refine_superpixels``, ``refine_method``, ``compactness``, ``merge_regions``,
    ``merge_edges``) says; also returns the superpixels ``(Y, X)`` (None when the vote is off)."""
    # one colour conversion and gradient for both steps that use them (seconds and ~400 MB on 4096x4096)
    watershed_map = p.refine_superpixels > 0 and p.refine_method == "watershed"
    colours = _colours_for_merging(image) if p.merge_regions > 0 or watershed_map else None
    gradient = _colour_gradient(colours) if watershed_map or (p.merge_regions > 0 and p.merge_edges > 0) else None
    segments = _refinement_superpixels(image, p, gradient) if p.refine_superpixels > 0 else None
    if segments is not None:
        labels = _superpixel_majority(labels, segments)
    if p.merge_regions > 0:
        labels = _merge_similar_regions(labels, colours, p.merge_regions, gradient, p.merge_edges)
    return labels, segments


@torch.no_grad()
def predict_clusters(model: ResponseNet, p: FeatureClusteringParams, image: np.ndarray, device: torch.device,
                     autocast=None, tile: int | None = None) -> np.ndarray:
    """Cluster ids ``(Y, X)`` of a prepared ``(Y, X, C)`` image by a trained network, at full resolution
    (in ``tile``-pixel tiles above that size, default :data:`TILE`), with the final-map refinements
    (``merge_cost``, ``refine_superpixels``, ``min_region``) applied."""
    model.train()  # batch statistics, as during training: the responses stay normalised
    x = _to_tensor(_features(image, p.colour_space, p.coordinates), device, 1.0)
    with autocast or contextlib.nullcontext():
        if p.merge_cost > 0:  # needs every response channel at once
            response = model(x)
            labels = response.argmax(1)[0]
            lut = _ward_merge(*_cluster_means(response[0], labels), p.merge_cost)
            labels = torch.from_numpy(lut).to(labels.device)[labels]
        else:  # large images in tiles, with the whole image's batch statistics (no seams)
            labels = tiled_forward(model, x, tile or TILE, overlap=2 * p.conv_layers + 2, reduce=_argmax)[0, 0]
    labels, _ = vote_and_merge(labels.cpu().numpy(), image, p)
    if p.min_region > 0:
        labels = _merge_small_regions(labels, max(1, round(p.min_region * labels.size)))
    return labels


TILE = 1024  # pixels per tile side when labelling large images


def _argmax(response: torch.Tensor) -> torch.Tensor:
    return response.argmax(1, keepdim=True)


class FeatureClusteringModel:
    """A trained feature-clustering network rebuilt from a model bundle."""

    def __init__(self, params: FeatureClusteringParams, state: dict[str, torch.Tensor], device: torch.device):
        in_channels = state["features.0.weight"].shape[1]  # colour space and coordinates fix it
        self.model = ResponseNet(in_channels, params.channels, params.channels, params.conv_layers,
                                 params.batch_norm).to(device)
        self.model.load_state_dict(state)
        self.params, self.device = params, device

    def predict(self, image: np.ndarray) -> np.ndarray:
        return predict_clusters(self.model, self.params, image, self.device)


METHOD = Method(
    id="feature-clustering",
    title="Feature clustering",
    params=FeatureClusteringParams,
    build=FeatureClusteringTrainer,
    description=__doc__.split("\n\n")[0],
    uses_scribbles=True,
    stop_rules=_stop_rules,
    presets=PRESETS,
    load=FeatureClusteringModel,
    # saved before these parameters existed: SLIC final map, one spatial weight throughout, no region merging
    # (and, saved with it, merging by colour alone)
    older_defaults={"refine_method": "slic", "start_steps": 0, "merge_regions": 0.0, "merge_edges": 0.0},
)
