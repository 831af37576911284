"""Deep clustering of 3D patches: JULE representation learning, then k-means of patch embeddings.

Moriya et al., "Unsupervised segmentation of 3D medical images based on clustering and deep
representation learning", SPIE Medical Imaging 2018, built on Yang, Parikh and Batra, "Joint unsupervised
learning of deep representations and image clusters" (JULE), CVPR 2016. No public code: built from the
papers (and JULE's Torch release for its defaults: K_s = 20 neighbours, margin 0.2, merges per period
``ceil(eta * clusters)``).

Phase 1 (JULE): ``n_patches`` random w^3 patches whose centre voxel lies inside the object (a threshold
on the brightest channel, or a mask layer) are standardised and embedded by a small 3D CNN
(:class:`~napari_selfseg.nn.PatchEncoder3d`). A recurrent process alternates a forward pass, which merges
clusters by agglomerative clustering with graph-degree linkage on the current embeddings (starting from
the small clusters of the 1-nearest-neighbour graph; ``ceil(eta * clusters)`` merges per period), and a
backward pass, which trains the CNN with JULE's weighted triplet loss on the cluster labels. It stops at
``clusters`` clusters, then trains once more with the final labels (Moriya's extension).

Phase 2: patches centred every ``stride`` voxels inside the object are embedded by the trained CNN and
clustered by k-means into ``k`` clusters; each stride^3 block around a centre takes its patch's cluster.
Every in-object voxel gets the cluster of the nearest labelled block, voxels outside the object get 0.
That block map is the paper's (``projection="blocks"``); the default ``"refined"`` projection (our
extension, :func:`refine_labels`) then lets each voxel take, among the clusters of the blocks within
``refine_radius`` blocks, the one whose intensity model (a Gaussian of the channels, unclipped: see
:func:`prepare`) fits it best.

Live view: each period streams the sample clusters projected onto the volume (nearest sample) with the
cluster count falling; phase 2 streams blocks as they are labelled (provisional centres fitted on the
training patches; the final map refits k-means on all blocks, as the paper does).

Anisotropic voxels are resampled to an isotropic grid of the same voxel count (the geometric mean of the
spacing) so a w^3 patch is a cube in millimetres; the labels are resampled back.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from ..engine import Method, StopRules, TrainContext
from ..gaussians import log_likelihood
from ..imageprep import InputError, prepare_stack
from ..labelmaps import resize_labels
from ..losses import prototype_cross_entropy, weighted_triplet
from ..nn import PatchEncoder3d
from ..params import param
from ..postprocess import PostprocessParams

STEP_SECONDS = 0.3  # target duration of one embedding step, so the panel stays live


@dataclass
class DeepClustering3DParams(PostprocessParams):
    """Parameters of deep clustering 3D; the defaults are the CPU setting (see the ``paper`` preset)."""

    patch_size: int = param(15, low=7, high=41, step=2, live=False, label="patch size w",
                            help="Edge of the cubic patches in voxels (paper: 27)")
    stride: int = param(3, low=1, high=27, step=1, live=False, label="stride s",
                        help="Phase 2: a patch centre every s voxels; each s^3 block takes its patch's cluster "
                             "(s <= w; a smaller s gives a finer map and s^3 times more patches)")
    n_patches: int = param(4000, low=50, high=50000, step=50, live=False, label="patches n_s",
                           help="Phase 1: random training patches centred inside the object (paper: 10,000)")
    clusters: int = param(12, low=2, high=100, step=1, label="clusters C",
                          help="Phase 1 merges clusters until C remain, then trains once more with them")
    k: int = param(4, low=2, high=30, step=1, label="k-means K",
                   help="Phase 2: k-means clusters of the patch embeddings (acts until phase 2 ends)")
    eta: float = param(0.5, low=0.05, high=0.95, step=0.05, label="unfolding rate eta",
                       help="Each period merges ceil(eta x clusters) clusters: higher = fewer periods "
                            "(JULE: 0.2 or 0.9)")
    threshold: float = param(0.05, low=0.0, high=1.0, step=0.01, live=False,
                             help="Object = voxels whose brightest channel (scaled to [0, 1]) is above this; a "
                                  "mask layer, when one is chosen, is the object instead")
    learning_rate: float = param(0.01, low=1e-4, high=0.5, log=True,
                                 help="SGD learning rate (momentum 0.9, weight decay 5e-5; JULE: 0.01)")
    channels: int = param(16, low=4, high=64, step=2, live=False, label="conv kernels",
                          help="Kernels of each of the three 3D convolutions (paper: 50)")
    kernel: int = param(3, low=3, high=7, step=2, live=False, label="kernel size",
                        help="Edge of the 3D convolution kernels (paper: 5); the patch must be at least "
                             "2 x (3 x kernel - 2)")
    hidden: int = param(256, low=0, high=2048, step=2, live=False, advanced=True, label="hidden units",
                        help="Units of the first fully connected layer (paper: 1350; 0 = none)")
    features: int = param(160, low=8, high=512, step=8, live=False, advanced=True, label="embedding size",
                          help="Units of the last fully connected layer, the L2-normalised embedding (paper: 160)")
    period_iterations: int = param(10, low=1, high=5000, step=1, label="iterations per period",
                                   help="Minibatches of CNN training after each merge period (JULE: 20 epochs)")
    final_iterations: int = param(30, low=0, high=20000, step=10, label="final iterations",
                                  help="Minibatches of the last training pass with the C final clusters (Moriya)")
    batch_size: int = param(64, low=8, high=512, step=8, live=False, advanced=True,
                            help="Patches per minibatch (JULE: 100)")
    neighbours: int = param(20, low=2, high=100, step=1, live=False, advanced=True, label="neighbours K_s",
                            help="Nearest neighbours of each patch in the affinity graph (JULE: 20)")
    margin: float = param(0.2, low=0.0, high=2.0, step=0.05, advanced=True,
                          help="Margin of the weighted triplet loss (JULE: 0.2)")
    gamma: float = param(1.0, low=0.1, high=4.0, step=0.1, advanced=True,
                         help="Weight of the positive pair in the triplet loss (JULE: 1 to 2)")
    loss: str = param("triplet", choices=("triplet", "prototype"), live=False, advanced=True,
                      help="Backward pass: JULE's weighted triplet loss, or a cross-entropy against the "
                           "clusters' mean embeddings (prototypes, temperature 0.1)")
    outside: str = param("mean", choices=("keep", "mean"), live=False, label="outside the object",
                         help="Voxels of a patch outside the object: kept, or set to the object's mean so that "
                              "patches at the object's edge are not clustered by how much background they hold")
    projection: str = param("refined", choices=("blocks", "refined"), label="label projection",
                            help="Phase 2's map: each s^3 block takes its patch's cluster (blocks, the paper), "
                                 "or each voxel then takes the cluster of a nearby block whose intensity model "
                                 "fits it best (refined, our extension)")
    refine_radius: int = param(2, low=0, high=5, step=1, advanced=True, label="refinement reach",
                               help="Refined projection: a voxel may take the cluster of a block up to this many "
                                    "blocks from its own")
    refine_iterations: int = param(3, low=1, high=10, step=1, advanced=True, label="refinement iterations",
                                   help="Refined projection: rounds of fitting each cluster's intensity model (a "
                                        "Gaussian of the channels) and reassigning the voxels")
    standardise: str = param("volume", choices=("volume", "patch"), live=False, advanced=True,
                             help="Standardise patches with the object's per-channel mean and spread (keeps "
                                  "absolute intensity, e.g. a bright lesion) or each patch on its own")


PRESETS = {
    "interactive": {},
    # Moriya et al. 2018 / JULE: 27^3 patches, 10,000 of them, 50 kernels 5^3, FC 1350 and 160, eta 0.9
    # (one of JULE's two settings), JULE's training (batch 100, lr 0.01, 20 epochs per period = 2000
    # minibatches of 100 out of 10,000). The papers do not fix the stride (9 = w / 3 is our choice), nor C
    # and K, which depend on the data (5 and the default K here).
    "paper": {"patch_size": 27, "stride": 9, "n_patches": 10000, "clusters": 5, "k": 6, "eta": 0.9,
              "channels": 50, "kernel": 5, "hidden": 1350, "features": 160, "period_iterations": 2000,
              "final_iterations": 2000, "batch_size": 100, "learning_rate": 0.01, "neighbours": 20,
              "margin": 0.2, "gamma": 1.0, "loss": "triplet", "standardise": "volume", "outside": "keep",
              "threshold": 0.05, "projection": "blocks"},
}


def prepare(image: np.ndarray, params: DeepClustering3DParams, rgb: bool | None = None) -> np.ndarray:
    """The engine's normalisation (each channel stretched between its 0.5th and 99.5th percentiles)
    without its clipping to [0, 1], so that the refined projection's intensity models see the brightest
    voxels as they are (on BRATS the clipping flattens a large part of a tumour's FLAIR, 39 % on
    pat0005). Everything else in the method (the object threshold, the CNN's patches) uses the clipped
    values, :func:`clipped`, exactly as with the engine's normalisation. uint8 and bool input is only
    divided (nothing to clip)."""
    return prepare_stack(image, rgb, clip=False)


def clipped(image: np.ndarray) -> np.ndarray:
    """The prepared volume as the engine's normalisation gives it, in [0, 1]."""
    return np.clip(image, 0.0, 1.0)


def _stop_rules(params: DeepClustering3DParams) -> StopRules:
    # the trainer knows when both phases are over (done); the engine's rules would cut a phase short
    return StopRules(max_iterations=None, min_clusters=None)


# -- volume preparation --------------------------------------------------------------------------------
def object_mask(image: np.ndarray, threshold: float, labels: np.ndarray | None = None) -> np.ndarray:
    """``(Z, Y, X)`` bool object: ``labels > 0`` when a mask with any positive voxel is given, else the
    voxels of the ``(Z, Y, X, C)`` image whose brightest channel exceeds ``threshold``."""
    if labels is not None and np.any(np.asarray(labels) > 0):
        return np.asarray(labels) > 0
    return image.max(axis=-1) > threshold


def isotropic_zoom(spacing) -> np.ndarray | None:
    """Per-axis zoom to an isotropic grid at the geometric-mean voxel size (same voxel count), or None
    when the spacing is already isotropic within 1 %."""
    spacing = np.asarray(spacing if spacing is not None and len(spacing) == 3 else (1.0, 1.0, 1.0), float)
    if spacing.max() <= spacing.min() * 1.01:
        return None
    return spacing / np.exp(np.log(spacing).mean())


def _resample(image: np.ndarray, mask: np.ndarray, zoom: np.ndarray | None):
    if zoom is None:
        return image, mask
    channels = [ndi.zoom(image[..., c], zoom, order=1) for c in range(image.shape[-1])]
    return np.stack(channels, -1).astype(np.float32), ndi.zoom(mask.astype(np.uint8), zoom, order=0) > 0


def standardised_volume(image: np.ndarray, mask: np.ndarray, pad: int, mode: str,
                        outside: str = "keep") -> torch.Tensor:
    """``(C, Z + 2 pad, Y + 2 pad, X + 2 pad)`` float32 tensor of the ``(Z, Y, X, C)`` image, padded with
    0 intensity; ``mode == "volume"`` z-scores each channel with its mean and spread inside ``mask``;
    ``outside == "mean"`` sets every voxel outside ``mask`` (padding included) to the object's mean."""
    inside = image[mask]
    mean, std = inside.mean(0), inside.std(0)
    vol = np.pad(image, [(pad, pad)] * 3 + [(0, 0)]).astype(np.float32)
    if outside == "mean":
        vol[~np.pad(mask, pad)] = mean
    if mode == "volume":
        vol = (vol - mean) / np.where(std > 1e-6, std, 1.0)
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(vol, -1, 0)))


def extract_patches(volume: torch.Tensor, centres: np.ndarray, size: int, mode: str) -> torch.Tensor:
    """``(N, C, w, w, w)`` patches of a padded ``(C, Z', Y', X')`` volume around ``centres`` ``(N, 3)``
    (voxel coordinates of the unpadded volume; the padding is ``w // 2``). ``mode == "patch"``: each
    patch's channels are z-scored on their own."""
    patches = torch.stack([volume[:, z:z + size, y:y + size, x:x + size] for z, y, x in centres.tolist()])
    if mode == "patch":
        flat = patches.flatten(2)
        patches = ((flat - flat.mean(2, keepdim=True)) / flat.std(2, keepdim=True).clamp(min=1e-6)).view_as(patches)
    return patches


def sample_centres(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``(min(n, |mask|), 3)`` distinct random voxel coordinates inside ``mask``, in raster order."""
    inside = np.flatnonzero(mask)
    if len(inside) == 0:
        raise InputError("the object is empty: lower the threshold or choose another mask")
    pick = np.sort(rng.choice(inside, size=min(n, len(inside)), replace=False))
    return np.stack(np.unravel_index(pick, mask.shape), -1)


# -- agglomerative clustering with graph degree linkage ---------------------------------------------------
def knn_graph(features: np.ndarray, k: int) -> sparse.csr_matrix:
    """k-nearest-neighbour graph of ``(N, F)`` unit vectors, weights ``exp(-d^2 / sigma^2)`` with
    ``sigma^2`` the mean squared neighbour distance (Zhang et al., graph degree linkage, ECCV 2012),
    made symmetric (an edge either way counts both ways)."""
    n = len(features)
    k = max(1, min(k, n - 1))
    f = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    rows, cols, d2 = [], [], []
    for start in range(0, n, 2048):  # blocks keep the distance matrix small for large n_s
        block = (2.0 - 2.0 * f[start:start + 2048] @ f.T).clamp(min=0)
        block[torch.arange(len(block)), torch.arange(start, start + len(block))] = math.inf
        dist, idx = torch.topk(block, k, dim=1, largest=False)
        rows.append(np.repeat(np.arange(start, start + len(block)), k))
        cols.append(idx.numpy().ravel())
        d2.append(dist.numpy().ravel())
    d2 = np.concatenate(d2).astype(np.float64)
    sigma2 = max(float(d2.mean()), 1e-12)
    graph = sparse.csr_matrix((np.exp(-d2 / sigma2), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    # symmetrised: with one-way links only, the degree products of two touching clusters can be 0, and
    # greedy merging then joins unrelated clusters on a tie at 0 (seen on three well-separated blobs)
    return graph.maximum(graph.T).tocsr()


def initial_clusters(graph: sparse.csr_matrix) -> np.ndarray:
    """Many small clusters: connected components of each sample's link to its nearest neighbour
    (JULE's initialisation). Returns ``(N,)`` ids 0..c-1."""
    n = graph.shape[0]
    nearest = np.asarray(graph.argmax(axis=1)).ravel()  # the largest weight is the nearest neighbour
    links = sparse.csr_matrix((np.ones(n), (np.arange(n), nearest)), shape=(n, n))
    return connected_components(links, directed=False)[1]


class DegreeLinkage:
    """Greedy agglomerative clustering with graph degree linkage on a fixed sample graph ``W``.

    Affinity of clusters a, b: ``S[a, b] / |a|^2 + S[b, a] / |b|^2`` with
    ``S[a, b] = sum_{j in b} (sum_{i in a} W_ij)(sum_{k in a} W_jk)`` (the in- and out-degree products of
    Zhang et al. 2012). Merges keep S up to date in O(N + c) each.
    """

    def __init__(self, graph: sparse.csr_matrix, labels: np.ndarray):
        _, self.labels = np.unique(labels, return_inverse=True)
        n, c = graph.shape[0], int(self.labels.max()) + 1
        member = sparse.csr_matrix((np.ones(n), (np.arange(n), self.labels)), shape=(n, c))
        self.into = np.asarray((member.T @ graph).todense())  # (c, n): sum_{i in a} W_ij
        self.out = np.asarray((graph @ member).todense()).T.copy()  # (c, n): sum_{k in a} W_jk
        self.size = np.bincount(self.labels, minlength=c).astype(np.float64)
        self.s = np.asarray((member.T @ (self.into * self.out).T).T)  # (c, c)
        self.alive = np.ones(c, dtype=bool)
        self.affinity = self._affinity()
        self.best = self.affinity.argmax(1)

    @property
    def n_clusters(self) -> int:
        return int(self.alive.sum())

    def _affinity(self) -> np.ndarray:
        term = self.s / self.size[:, None] ** 2
        a = term + term.T
        np.fill_diagonal(a, -np.inf)
        a[~self.alive] = -np.inf
        a[:, ~self.alive] = -np.inf
        return a

    def _row(self, a: int) -> None:
        """Recompute row and column ``a`` of the affinity after ``a`` changed."""
        self.s[a] = np.bincount(self.labels, weights=self.into[a] * self.out[a], minlength=len(self.size))
        row = self.s[a] / self.size[a] ** 2 + self.s[:, a] / self.size**2
        row[a] = -np.inf
        row[~self.alive] = -np.inf
        self.affinity[a] = row
        self.affinity[:, a] = row

    def merge(self, steps: int) -> None:
        """Merge the most affine pair ``steps`` times (at least one cluster always remains)."""
        for _ in range(min(steps, self.n_clusters - 1)):
            rows = np.flatnonzero(self.alive)
            values = self.affinity[rows, self.best[rows]]
            a = int(rows[np.argmax(values)])
            b = int(self.best[a])
            a, b = min(a, b), max(a, b)
            self.labels[self.labels == b] = a
            self.size[a] += self.size[b]
            self.into[a] += self.into[b]
            self.out[a] += self.out[b]
            self.s[:, a] += self.s[:, b]  # S[x, a] is a sum over a's members: linear in them
            self.alive[b] = False
            self.affinity[b] = -np.inf
            self.affinity[:, b] = -np.inf
            self._row(a)
            stale = self.alive & ((self.best == a) | (self.best == b))
            self.best[stale] = self.affinity[stale].argmax(1)
            better = self.alive & (self.affinity[:, a] > self.affinity[np.arange(len(self.best)), self.best])
            self.best[better] = a
            self.best[a] = int(self.affinity[a].argmax())

    def dense_labels(self) -> np.ndarray:
        """``(N,)`` cluster ids 0..c-1."""
        return np.unique(self.labels, return_inverse=True)[1]


def merges_per_period(n_clusters: int, eta: float, target: int) -> int:
    """JULE's unfolding: ``ceil(eta * clusters)`` merges, never below ``target`` clusters."""
    return max(0, min(math.ceil(n_clusters * eta), n_clusters - target))


# -- projection of cluster labels onto the volume --------------------------------------------------------
def block_grid(shape: tuple[int, ...], stride: int) -> tuple[np.ndarray, ...]:
    """Per axis, the centres ``s // 2 + i s`` (clipped to the volume) of the stride^3 blocks."""
    return tuple(np.minimum(np.arange(math.ceil(n / stride)) * stride + stride // 2, n - 1) for n in shape)


def blocks_inside(mask: np.ndarray, stride: int) -> np.ndarray:
    """Which stride^3 blocks (on :func:`block_grid`) have their centre inside ``mask``; an
    :class:`InputError` when none has (a tiny volume or object: nothing phase 2 could label)."""
    inside = mask[np.ix_(*block_grid(mask.shape, stride))]
    if not inside.any():
        raise InputError(f"no {stride}^3 block centre lies inside the object of this {mask.shape} volume: lower "
                         "the stride or the threshold, or use a larger volume")
    return inside


def fill_nearest(grid: np.ndarray, sampling=None) -> np.ndarray:
    """Every 0 cell of ``grid`` (ids > 0 are labelled) takes the id of the nearest labelled cell."""
    empty = grid == 0
    if not empty.any() or empty.all():
        return grid
    _, index = ndi.distance_transform_edt(empty, sampling=sampling, return_indices=True)
    return grid[tuple(index)]


def project_blocks(grid: np.ndarray, mask: np.ndarray, stride: int) -> np.ndarray:
    """Full-resolution ``(Z, Y, X)`` labels from block labels ``grid`` (0 = none): every voxel inside
    ``mask`` takes the label of its block, or of the nearest labelled block; outside ``mask`` 0."""
    filled = fill_nearest(grid)
    full = filled
    for axis, n in enumerate(mask.shape):
        full = np.repeat(full, stride, axis=axis).take(np.arange(n), axis=axis)
    return np.where(mask, full, 0)


def refine_labels(grid: np.ndarray, image: np.ndarray, mask: np.ndarray, stride: int,
                  iterations: int = 3, radius: int = 2) -> np.ndarray:
    """Voxel-resolution ``(Z, Y, X)`` labels from block labels ``grid`` (ids > 0, 0 = none) of a
    ``(Z, Y, X, C)`` image (our extension of the paper's block projection).

    Starts from :func:`project_blocks`; then, ``iterations`` times, fits each cluster a Gaussian (full
    covariance) of the channel intensities of its voxels, weighted by its share of the object, and gives
    every voxel inside ``mask`` the most probable cluster among those of the blocks within ``radius``
    blocks of its own (a (2 radius + 1)^3 cube of blocks). The clusters stay the deep clusters: a voxel
    can only take a cluster found near it, so only where their boundaries fall within that band is
    decided voxel by voxel. Outside ``mask`` 0."""
    labels = project_blocks(grid, mask, stride)
    filled = fill_nearest(grid)
    ids = np.unique(filled[filled > 0])
    if len(ids) < 2 or not mask.any():
        return labels
    coords = np.nonzero(mask)
    blocks = tuple(c // stride for c in coords)
    struct = np.ones((3, 3, 3), bool)
    allowed = np.stack([(ndi.binary_dilation(filled == i, struct, radius) if radius > 0 else filled == i)[blocks]
                        for i in ids], 1)  # (N, K): the clusters each voxel may take
    x = np.stack([image[..., c][coords] for c in range(image.shape[-1])], 1).astype(np.float64)
    current = np.searchsorted(ids, labels[coords])
    for _ in range(iterations):
        score = np.full(allowed.shape, -np.inf, np.float32)
        for j in range(len(ids)):
            members = x[current == j]
            if len(members) < 2:
                continue
            mean = members.mean(0)
            cov = np.atleast_2d(np.cov(members.T)) + 1e-6 * np.eye(x.shape[1])
            log_p = log_likelihood(x, mean, cov) + np.log(len(members) / len(x))
            score[:, j] = np.where(allowed[:, j], log_p, -np.inf)
        # a voxel whose nearby clusters all have too few voxels for a model keeps its cluster
        update = np.where(np.isfinite(score.max(1)), score.argmax(1), current)
        if np.array_equal(update, current):
            break
        current = update
    labels[coords] = ids[current]
    return labels


def project_samples(centres: np.ndarray, labels: np.ndarray, mask: np.ndarray, stride: int) -> np.ndarray:
    """Block-resolution labels ``(ceil(Z / s), ...)`` of sample ``labels`` (ids >= 0) at ``centres``
    ``(N, 3)``: every block whose centre is in ``mask`` takes the label + 1 of the nearest sample's block,
    other blocks 0."""
    axes = block_grid(mask.shape, stride)
    grid = np.zeros([len(a) for a in axes], dtype=np.int64)
    grid[tuple((centres // stride).T)] = labels + 1
    inside = mask[np.ix_(*axes)]
    return np.where(inside, fill_nearest(grid), 0)


def stable_ids(labels: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
    """``(N,)`` lookup from raw ids ``0..N-1`` to display ids (from 1) for a map ``labels`` (raw ids, 0 = none),
    each cluster taking the id of the ``previous`` display cluster (same shape, 0 = none) it overlaps most
    (Hungarian), the others the smallest free ids; 0 stays 0. Keeps colours steady between frames while
    the object's outside stays background (the engine's renumbering would colour it as a cluster)."""
    from scipy.optimize import linear_sum_assignment

    n = int(labels.max(initial=0)) + 1
    lookup = np.zeros(n, dtype=np.int64)
    raw = np.flatnonzero(np.bincount(labels.ravel(), minlength=n)[1:]) + 1
    if previous is not None and previous.shape == labels.shape and previous.any():
        both = (labels > 0) & (previous > 0)
        m = int(previous.max()) + 1
        overlap = np.bincount(labels[both] * m + previous[both], minlength=n * m).reshape(n, m)
        rows, cols = linear_sum_assignment(overlap, maximize=True)
        keep = overlap[rows, cols] > 0
        lookup[rows[keep]] = cols[keep]
    free = (i for i in range(1, n + int(lookup.max(initial=0)) + 2) if i not in set(lookup.tolist()))
    for r in raw:
        if lookup[r] == 0:
            lookup[r] = next(free)
    return lookup


# -- the model shared by training and saved bundles ------------------------------------------------------
class PatchClusterModel:
    """The trained encoder and k-means centres; labels volumes block by block (phase 2)."""

    def __init__(self, params: DeepClustering3DParams, in_channels: int, device: torch.device):
        p = params
        self.params = params
        self.device = device
        try:
            self.net = PatchEncoder3d(in_channels, p.patch_size, p.channels, p.kernel, p.hidden, p.features)
        except ValueError as err:
            raise InputError(str(err)) from None
        self.net.to(device)
        self.centres: np.ndarray | None = None  # (K, F) k-means centres of the embeddings
        self.ids: np.ndarray | None = None  # (K + 1,) cluster + 1 -> the id shown in the final frame
        self.spacing: tuple | None = None  # voxel size of the training volume, assumed for other volumes

    @torch.no_grad()
    def embed(self, patches: torch.Tensor) -> np.ndarray:
        """``(N, F)`` float32 embeddings of ``(N, C, w, w, w)`` patches (BatchNorm running statistics)."""
        self.net.eval()
        return self.net(patches.to(self.device, torch.float32)).float().cpu().numpy()

    def assign(self, embeddings: np.ndarray) -> np.ndarray:
        """Nearest k-means centre of each embedding, ids 0..K-1."""
        d = ((embeddings[:, None, :] - self.centres[None]) ** 2).sum(-1)
        return d.argmin(1)

    def blocks(self, image: np.ndarray, mask: np.ndarray):
        """Prepare a ``(Z, Y, X, C)`` volume for phase 2: its padded tensor and the ``(M, 3)`` block
        centres inside ``mask``, with their ``(M, 3)`` block indices."""
        p = self.params
        volume = standardised_volume(image, mask, p.patch_size // 2, p.standardise, p.outside)
        axes = block_grid(mask.shape, p.stride)
        inside = np.argwhere(blocks_inside(mask, p.stride))
        centres = np.stack([axes[i][inside[:, i]] for i in range(3)], -1)
        return volume, centres, inside

    def predict(self, image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """``(Z, Y, X)`` cluster ids (1..K, 0 outside the object) of a prepared ``(Z, Y, X, C)`` volume."""
        p = self.params
        mask = object_mask(clipped(image), p.threshold) if mask is None else mask
        zoom = isotropic_zoom(self.spacing)
        intensity, work_mask = _resample(image, mask, zoom)  # unclipped (see prepare): for the refinement
        work = clipped(intensity)
        volume, centres, inside = self.blocks(work, work_mask)
        grid = np.zeros([len(a) for a in block_grid(work_mask.shape, p.stride)], dtype=np.int64)
        for start in range(0, len(centres), 512):
            emb = self.embed(extract_patches(volume, centres[start:start + 512], p.patch_size, p.standardise))
            grid[tuple(inside[start:start + 512].T)] = self.assign(emb) + 1
        if self.ids is not None and len(self.ids) > grid.max():
            grid = self.ids[grid]
        return restore(self.project(grid, intensity, work_mask), mask)

    def project(self, grid: np.ndarray, image: np.ndarray, mask: np.ndarray, projection: str | None = None):
        """Full-resolution labels of the working grid from block labels ``grid``: the paper's block
        projection, or the refined one (``projection``, by default the parameter's)."""
        p = self.params
        if (projection or p.projection) == "refined":
            return refine_labels(grid, image, mask, p.stride, p.refine_iterations, p.refine_radius)
        return project_blocks(grid, mask, p.stride)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        state["centres"] = torch.from_numpy(np.asarray(self.centres, dtype=np.float32))
        if self.ids is not None:
            state["ids"] = torch.from_numpy(np.asarray(self.ids, dtype=np.int64))
        if self.spacing is not None and len(self.spacing) == 3:
            state["spacing"] = torch.tensor([float(v) for v in self.spacing], dtype=torch.float64)
        return state


def restore(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Labels of the working grid back on the input's ``mask`` grid (nearest), 0 outside the object."""
    labels = resize_labels(labels, mask.shape)
    return np.where(mask, labels, 0)


def load(params: DeepClustering3DParams, state: dict, device: torch.device) -> PatchClusterModel:
    """Rebuild a trained model from :meth:`PatchClusterModel.state_dict` (a saved bundle)."""
    in_channels = int(state["net.conv.0.weight"].shape[1])
    model = PatchClusterModel(params, in_channels, device)
    model.net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
    model.centres = state["centres"].cpu().numpy()
    model.ids = state["ids"].cpu().numpy() if "ids" in state else None
    model.spacing = tuple(state["spacing"].tolist()) if "spacing" in state else None
    return model


def _kmeans(embeddings: np.ndarray, k: int, seed: int, limit: int = 50_000) -> np.ndarray:
    """``(K, F)`` k-means centres of at most ``limit`` of the embeddings (scikit-learn, 4 restarts)."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    sample = embeddings if len(embeddings) <= limit else embeddings[rng.choice(len(embeddings), limit, replace=False)]
    k = min(k, len(sample))
    with warnings.catch_warnings():  # fewer distinct embeddings than K: fewer clusters, not an error
        warnings.simplefilter("ignore")
        return KMeans(n_clusters=k, n_init=4, random_state=seed % 2**32).fit(sample).cluster_centers_


# -- the trainer -------------------------------------------------------------------------------------
class DeepClustering3DTrainer:
    """Both phases as a sequence of short steps: embed (chunks), merge, train (minibatches), ...,
    final training, embed, then phase 2's block chunks. See the module docstring."""

    done = False

    def __init__(self, ctx: TrainContext):
        self.ctx = ctx
        p = ctx.params
        if ctx.image.ndim != 4:
            raise InputError(f"deep clustering 3D needs a volume (Z, Y, X[, C]); got shape {ctx.image.shape[:-1]}")
        if p.stride > p.patch_size:
            raise InputError(f"the stride s={p.stride} must not exceed the patch size w={p.patch_size}")
        self.rng = np.random.default_rng(ctx.seed)
        # ctx.image is unclipped (see prepare): the refinement's intensities; the rest sees [0, 1]
        self.mask = object_mask(clipped(ctx.image), p.threshold, ctx.labels)
        self.zoom = isotropic_zoom(ctx.spacing)
        self.intensity, self.work_mask = _resample(ctx.image, self.mask, self.zoom)
        self.work = clipped(self.intensity)
        blocks_inside(self.work_mask, p.stride)  # fail now, not after phase 1
        self.model = PatchClusterModel(p, ctx.image.shape[-1], ctx.device)
        self.model.spacing = ctx.spacing
        self.optimiser = torch.optim.SGD(self.model.net.parameters(), lr=p.learning_rate, momentum=0.9,
                                         weight_decay=5e-5)
        self.volume = standardised_volume(self.work, self.work_mask, p.patch_size // 2, p.standardise, p.outside)
        self.centres = sample_centres(self.work_mask, p.n_patches, self.rng)
        # float16 halves the memory of the training patches (1.6 GB in float32 for the paper's 10,000 27^3
        # patches of two channels); batches are cast back to float32
        self.patches = torch.cat([
            extract_patches(self.volume, self.centres[i:i + 256], p.patch_size, p.standardise).to(ctx.device,
                                                                                                torch.float16)
            for i in range(0, len(self.centres), 256)])
        self.embeddings = np.zeros((len(self.centres), p.features), np.float32)
        self.labels: np.ndarray | None = None  # (N,) cluster of each training patch
        self.phase = "embed"
        self.after_embed = "merge"
        self.cursor = 0  # progress through the current embedding / training / block pass
        self.chunk = 64
        self.periods = 0
        self.grid: np.ndarray | None = None  # phase 2 block labels, 0 = not yet labelled
        self._shown: tuple | None = None  # (version, block map, phase 2?) cache of current()
        self.version = 0
        self.last_loss: torch.Tensor | float = float("nan")  # the loss curve stays one series

    # -- steps --------------------------------------------------------------------------------------
    def step(self) -> dict:
        p = self.ctx.params
        for group in self.optimiser.param_groups:
            group["lr"] = p.learning_rate
        return getattr(self, f"_{self.phase}")()

    def _timed_chunk(self, run) -> None:
        """Run ``run(chunk)`` and adapt the chunk size so a step takes about STEP_SECONDS of this thread's CPU
        time (wall time would shrink the chunks on a loaded machine, and every step then pays for a frame)."""
        t0 = time.thread_time()
        run(self.chunk)
        elapsed = max(time.thread_time() - t0, 1e-3)
        self.chunk = int(np.clip(self.chunk * min(2.0, STEP_SECONDS / elapsed), 8, 4096))

    def _embed(self) -> dict:
        def run(chunk):
            end = min(self.cursor + chunk, len(self.centres))
            self.embeddings[self.cursor:end] = self.model.embed(self.patches[self.cursor:end])
            self.cursor = end

        self._timed_chunk(run)
        if self.cursor >= len(self.centres):
            self.cursor = 0
            self.phase = self.after_embed
        return {"loss": self.last_loss}

    def _merge(self) -> dict:
        p = self.ctx.params
        graph = knn_graph(self.embeddings, p.neighbours)
        if self.labels is None:
            self.labels = initial_clusters(graph).astype(np.int64)
        else:
            linkage = DegreeLinkage(graph, self.labels)
            linkage.merge(merges_per_period(linkage.n_clusters, p.eta, p.clusters))
            self.labels = linkage.dense_labels().astype(np.int64)
        self.periods += 1
        self.version += 1
        n = int(self.labels.max()) + 1
        sums = np.zeros((n, self.embeddings.shape[1]), np.float32)
        np.add.at(sums, self.labels, self.embeddings)
        self.prototypes = torch.nn.functional.normalize(torch.from_numpy(sums), dim=1).to(self.ctx.device)
        self.phase = "train"
        self.todo = p.period_iterations if n > p.clusters else p.final_iterations
        self.last_period = n <= p.clusters
        return {"loss": self.last_loss}

    def _batch(self, size: int) -> np.ndarray:
        """Indices of a minibatch of a few clusters with several patches each, so that every batch holds
        positive pairs for the triplet loss (random batches rarely do while clusters are small)."""
        counts = np.bincount(self.labels)
        eligible = np.flatnonzero(counts >= 2)
        if len(eligible) == 0:
            return self.rng.choice(len(self.labels), min(size, len(self.labels)), replace=False)
        per = max(2, size // max(1, min(len(eligible), size // 2)))
        chosen = self.rng.choice(eligible, min(len(eligible), max(1, size // per)), replace=False)
        picks = [self.rng.choice(np.flatnonzero(self.labels == c), min(per, counts[c]), replace=False)
                 for c in chosen]
        return np.concatenate(picks)

    def _train(self) -> dict:
        p = self.ctx.params
        if self.todo > 0:
            idx = torch.from_numpy(self._batch(p.batch_size)).to(self.patches.device)
            target = torch.from_numpy(self.labels).to(self.ctx.device)[idx]
            self.model.net.train()
            with self.ctx.autocast():
                emb = self.model.net(self.patches[idx].float())
            if p.loss == "prototype":
                loss = prototype_cross_entropy(emb, target, self.prototypes)
            else:
                loss = weighted_triplet(emb, target, p.margin, p.gamma)
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            self.optimiser.step()
            self.todo -= 1
            self.last_loss = loss.detach()
        if self.todo <= 0:
            self.phase = "embed"
            self.after_embed = "start_phase2" if self.last_period else "merge"
        return {"loss": self.last_loss}

    def _start_phase2(self) -> dict:
        """Provisional k-means centres from the training patches, so blocks can be labelled as they come."""
        p = self.ctx.params
        self.model.centres = _kmeans(self.embeddings, p.k, self.ctx.seed)
        self.block_volume, self.block_centres, self.block_index = self.model.blocks(self.work, self.work_mask)
        self.volume = None  # the blocks' copy replaces it
        self.grid = np.zeros([len(a) for a in block_grid(self.work_mask.shape, p.stride)], dtype=np.int64)
        self.block_embeddings = np.zeros((len(self.block_centres), p.features), np.float32)
        self.cursor = 0
        self.phase = "blocks"
        return {"loss": self.last_loss}

    def _blocks(self) -> dict:
        p = self.ctx.params

        def run(chunk):
            end = min(self.cursor + chunk, len(self.block_centres))
            patches = extract_patches(self.block_volume, self.block_centres[self.cursor:end], p.patch_size,
                                      p.standardise)
            emb = self.model.embed(patches)
            self.block_embeddings[self.cursor:end] = emb
            self.grid[tuple(self.block_index[self.cursor:end].T)] = self.model.assign(emb) + 1
            self.cursor = end

        self._timed_chunk(run)
        self.version += 1
        if self.cursor >= len(self.block_centres):
            self._final_kmeans()
        return {"loss": self.last_loss}

    def _final_kmeans(self) -> None:
        """k-means on all block embeddings (the paper's phase 2), relabelling every block."""
        p = self.ctx.params
        self.model.centres = _kmeans(self.block_embeddings, p.k, self.ctx.seed)
        self.grid[tuple(self.block_index.T)] = self.model.assign(self.block_embeddings) + 1
        self.version += 1
        self.done = True

    # -- label maps ---------------------------------------------------------------------------------
    def current(self) -> np.ndarray:
        """Block-resolution labels ``(ceil(Z / s), ceil(Y / s), ceil(X / s))``: the training patches'
        clusters projected onto the object (phase 1) or the blocks labelled so far (phase 2)."""
        if self._shown is not None and self._shown[0] == self.version:
            return self._shown[1]
        stride = self.ctx.params.stride
        if self.grid is not None:
            raw = self.grid
        elif self.labels is not None:
            raw = project_samples(self.centres, self.labels, self.work_mask, stride)
        else:
            raw = np.zeros([len(a) for a in block_grid(self.work_mask.shape, stride)], dtype=np.int64)
        self._shown = (self.version, stable_ids(raw, self._previous())[raw], self.grid is not None)
        return self._shown[1]

    def _previous(self) -> np.ndarray | None:
        """The last shown map of the same phase (phase 2 starts afresh from ids 1..K)."""
        if self._shown is None or self._shown[2] != (self.grid is not None):
            return None
        return self._shown[1]

    def finish(self) -> np.ndarray:
        """``(Z, Y, X)`` labels: 1..K inside the object, 0 outside; the phase-1 clusters when stopped early."""
        return self.final_labels()

    def final_labels(self, projection: str | None = None) -> np.ndarray:
        """:meth:`finish`'s labels with the given projection (``"blocks"``, ``"refined"``; default the
        parameter's), so both can be compared on one run."""
        stride = self.ctx.params.stride
        if self.grid is not None and self.grid.any():
            grid = self.grid
        elif self.labels is not None:
            grid = project_samples(self.centres, self.labels, self.work_mask, stride)
        else:
            grid = np.ones([len(a) for a in block_grid(self.work_mask.shape, stride)], dtype=np.int64)
        ids = stable_ids(grid, self._previous())
        if self.grid is not None:
            self.model.ids = ids  # predict() gives a cluster the id it has here
        self.model.params = self.ctx.params  # the live values (projection, refinement iterations)
        return restore(self.model.project(ids[grid], self.intensity, self.work_mask, projection), self.mask)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Label another prepared ``(Z, Y, X, C)`` volume with the trained encoder and final centres."""
        if self.model.centres is None:
            self.model.centres = _kmeans(self.embeddings, self.ctx.params.k, self.ctx.seed)
        return self.model.predict(image)

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.model.centres is None:
            self.model.centres = _kmeans(self.embeddings, self.ctx.params.k, self.ctx.seed)
        return self.model.state_dict()


METHOD = Method(
    id="deep-clustering-3d",
    title="Deep clustering 3D",
    params=DeepClustering3DParams,
    build=DeepClustering3DTrainer,
    description=__doc__.split("\n\n")[0],
    stop_rules=_stop_rules,
    presets=PRESETS,
    inputs="volume",
    ground_truth="optional",
    # the trainer keeps ids stable itself with 0 = outside the object; as a clustering method the engine
    # would renumber 0 as the largest cluster and colour the whole outside of the object
    semantic=True,
    load=load,
    prepare=prepare,
)

METHODS = [METHOD]
