import numpy as np
import pytest
import torch

from napari_selfseg import segment, training
from napari_selfseg.api import resolve_params
from napari_selfseg.methods import deep_clustering_3d as dc
from napari_selfseg.nn import PatchEncoder3d

# tiny and fast: 12^3 patches (the smallest for 3^3 kernels), few patches and iterations
FAST = dict(patch_size=12, stride=2, n_patches=120, channels=4, hidden=16, features=16, period_iterations=2,
            final_iterations=4, batch_size=16, k=2, clusters=3, threads=1, device="cpu")


def shells(shape=(12, 20, 20), seed=0):
    """A ``(Z, Y, X)`` volume: dark background (0), a bright shell (1) and a brighter core (2), plus noise."""
    zz, yy, xx = np.indices(shape)
    r2 = sum((a - n / 2) ** 2 for a, n in zip((zz, yy, xx), shape))
    truth = np.where(r2 < 5.5**2, 1, 0) + (r2 < 3**2)
    image = np.array([0.0, 0.6, 1.0])[truth] + np.random.default_rng(seed).normal(0, 0.05, shape)
    return image.astype(np.float32), truth


def test_patch_sampling_respects_the_threshold():
    image, truth = shells()
    mask = dc.object_mask(image[..., None], 0.3)
    assert np.array_equal(mask, truth > 0)  # the threshold separates background from the object
    centres = dc.sample_centres(mask, 200, np.random.default_rng(0))
    assert len(centres) == 200 and len(np.unique(centres, axis=0)) == 200
    assert mask[tuple(centres.T)].all()
    with pytest.raises(ValueError, match="empty"):
        dc.sample_centres(np.zeros_like(mask), 10, np.random.default_rng(0))


def test_a_mask_layer_replaces_the_threshold():
    image, truth = shells()
    labels = np.zeros(truth.shape, np.int64)
    labels[:, :12] = 1
    assert np.array_equal(dc.object_mask(image[..., None], 0.3, labels), labels > 0)
    assert np.array_equal(dc.object_mask(image[..., None], 0.3, np.zeros_like(labels)), truth > 0)


def test_patches_are_centred_on_their_voxel():
    volume = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7, 1)
    padded = dc.standardised_volume(volume, np.ones((5, 6, 7), bool), 2, "none")
    patches = dc.extract_patches(padded, np.array([[0, 0, 0], [4, 5, 6], [2, 3, 1]]), 5, "volume")
    assert patches.shape == (3, 1, 5, 5, 5)
    assert patches[:, 0, 2, 2, 2].tolist() == [volume[0, 0, 0, 0], volume[4, 5, 6, 0], volume[2, 3, 1, 0]]


@pytest.mark.parametrize("target", [1, 3, 7])
def test_agglomeration_reaches_exactly_c_clusters(target):
    rng = np.random.default_rng(1)
    features = rng.normal(size=(150, 8))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    graph = dc.knn_graph(features, 10)
    labels = dc.initial_clusters(graph)
    assert labels.max() + 1 > 20  # many small clusters to start from
    linkage = dc.DegreeLinkage(graph, labels)
    while linkage.n_clusters > target:  # periods of ceil(eta * c) merges, as in training
        linkage.merge(dc.merges_per_period(linkage.n_clusters, 0.5, target))
    assert linkage.n_clusters == target
    assert sorted(np.unique(linkage.dense_labels())) == list(range(target))


def test_agglomeration_merges_the_obvious_groups_first():
    rng = np.random.default_rng(2)
    centres = np.eye(4)[:3] * 3
    features = np.concatenate([c + rng.normal(0, 0.05, (40, 4)) for c in centres])
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    graph = dc.knn_graph(features, 8)
    linkage = dc.DegreeLinkage(graph, dc.initial_clusters(graph))
    linkage.merge(linkage.n_clusters - 3)
    labels = linkage.dense_labels()
    assert all(len(np.unique(labels[i * 40:(i + 1) * 40])) == 1 for i in range(3))


def test_projection_covers_every_in_object_voxel():
    rng = np.random.default_rng(0)
    mask = rng.random((9, 10, 11)) > 0.6
    grid = np.zeros([len(a) for a in dc.block_grid(mask.shape, 3)], np.int64)
    grid[0, 0, 0], grid[-1, -1, -1] = 1, 2  # most blocks unlabelled: they take the nearest label
    labels = dc.project_blocks(grid, mask, 3)
    assert labels.shape == mask.shape
    assert (labels[mask] > 0).all() and (labels[~mask] == 0).all()
    assert labels[0, 0, 0] in (0, 1) and set(np.unique(labels[mask])) <= {1, 2}
    centres = dc.sample_centres(mask, 5, rng)
    blocks = dc.project_samples(centres, np.arange(5), mask, 3)
    inside = mask[np.ix_(*dc.block_grid(mask.shape, 3))]
    assert (blocks[inside] > 0).all() and (blocks[~inside] == 0).all()


def test_encoder_matches_the_paper_shapes():
    net = PatchEncoder3d(2, 27, 50, 5, 1350, 160)
    assert net.head[1].in_features == 1350  # 50 kernels x 3^3 after the paper's three 5^3 convolutions
    out = net(torch.randn(2, 2, 27, 27, 27))
    assert out.shape == (2, 160) and torch.allclose(out.norm(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match="too small"):
        PatchEncoder3d(1, 11, 4, 3)


def test_segments_a_volume_inside_the_object():
    image, truth = shells()
    run = training(image, "deep-clustering-3d", threshold=0.3, max_fps=1000, seed=0, **FAST)
    frames = list(run.snapshots())
    final = frames[-1]
    assert final.final and final.stop_reason == "done"
    assert final.labels.shape == truth.shape
    # every object voxel has a cluster (ids from 1); outside the object stays 0
    background = np.unique(final.labels[truth == 0])
    assert background.tolist() == [0] and (final.labels[truth > 0] > 0).all()
    assert len(np.unique(final.labels[truth > 0])) == 2  # K clusters inside
    # the live view streamed both phases: falling cluster counts, then blocks
    assert len(frames) > 5 and max(f.n_clusters for f in frames[:-1]) > 3


def test_stop_early_still_labels_the_whole_object():
    image, truth = shells()
    run = training(image, "deep-clustering-3d", threshold=0.3, max_fps=1000, **FAST)
    frames = run.snapshots()
    for _ in range(4):
        next(frames)
    run.stop()
    final = list(frames)[-1]
    background = final.labels[0, 0, 0]
    assert final.final and (final.labels[truth > 0] != background).all()


def test_anisotropic_spacing_and_two_channels():
    image, truth = shells((8, 20, 20))
    two = np.stack([image, 1 - image * (truth > 0)], -1)
    run = training(two, "deep-clustering-3d", threshold=0.3, spacing=(2.0, 1.0, 1.0), max_fps=0, **FAST)
    assert run.image.shape == (8, 20, 20, 2)
    labels = run.run().labels
    assert labels.shape == truth.shape
    assert run.trainer.work.shape[0] > 8  # resampled to isotropic voxels (z twice as coarse)


def test_predict_and_state_dict_round_trip():
    image, _ = shells()
    run = training(image, "deep-clustering-3d", threshold=0.3, max_fps=0, **FAST)
    run.run()
    state = run.trainer.state_dict()
    model = dc.load(run.params, state, torch.device("cpu"))
    prepared = run.image
    assert np.array_equal(model.predict(prepared), run.trainer.predict(prepared))


def test_gray_volume_through_segment():
    image, truth = shells()
    labels = segment(image, "deep-clustering-3d", threshold=0.3, **FAST)
    assert labels.shape == truth.shape and labels.max() >= 2


def test_paper_preset():
    p = resolve_params("deep-clustering-3d", "paper")
    assert (p.patch_size, p.n_patches, p.channels, p.kernel, p.hidden, p.features) == (27, 10000, 50, 5, 1350, 160)


def test_stable_ids_follow_the_previous_frame_and_keep_zero():
    raw = np.array([0, 1, 1, 2, 2, 3])
    previous = np.array([0, 5, 5, 2, 2, 0])
    assert dc.stable_ids(raw, previous)[raw].tolist() == [0, 5, 5, 2, 2, 1]
    assert dc.stable_ids(raw, None)[raw].tolist() == [0, 1, 1, 2, 2, 3]


def two_halves(shape=(9, 12, 12), edge=4, seed=0):
    """A ``(Z, Y, X, 1)`` volume whose intensity steps from 0.2 to 0.8 at ``x = edge`` (noise 0.02), with an
    object mask that leaves out a slab at one end of z."""
    image = np.where(np.arange(shape[2]) < edge, 0.2, 0.8) + np.random.default_rng(seed).normal(0, 0.02, shape)
    mask = np.ones(shape, bool)
    mask[-2:] = False
    return image.astype(np.float32)[..., None], mask


def test_refined_projection_labels_the_object_and_follows_the_intensity_edge():
    image, mask = two_halves()
    axes = dc.block_grid(mask.shape, 3)
    # block labels with the boundary one block off the edge at x = 4: blocks 0, 1 (x < 6) are cluster 1
    grid = np.where(np.arange(len(axes[2])) < 2, 1, 2)[None, None, :].repeat(len(axes[0]), 0).repeat(len(axes[1]), 1)
    grid = np.where(mask[np.ix_(*axes)], grid, 0)
    blocks = dc.project_blocks(grid, mask, 3)
    assert (blocks[..., 4:6][mask[..., 4:6]] == 1).all()  # the paper's projection: blocky
    refined = dc.refine_labels(grid, image, mask, 3, iterations=3)
    assert refined.shape == mask.shape
    assert (refined[mask] > 0).all() and (refined[~mask] == 0).all()  # every object voxel, none outside
    assert set(np.unique(refined[mask])) == {1, 2}
    # the refinement moves the boundary onto the intensity edge, voxel by voxel
    assert (refined[..., :4][mask[..., :4]] == 1).all() and (refined[..., 4:][mask[..., 4:]] == 2).all()


@pytest.mark.parametrize("radius", [1, 2])
def test_refinement_only_reaches_nearby_blocks(radius):
    image, mask = two_halves((9, 12, 24), edge=4)
    axes = dc.block_grid(mask.shape, 3)
    # cluster 1 only in the first block column, although the dark half also covers x = 3; clusters 2 and
    # 3 cover the bright rest; a voxel may only take a cluster found within `radius` block columns
    ids = np.array([1, 2, 2, 2, 3, 3, 3, 3])
    grid = np.broadcast_to(ids[None, None, :], [len(a) for a in axes]).copy()
    refined = dc.refine_labels(grid, image, mask, 3, iterations=3, radius=radius)
    assert (refined[..., :4][mask[..., :4]] == 1).all()  # the dark voxel of cluster 2's block moved
    reach = 3 * (1 + radius)  # first x beyond cluster 1's reach; cluster 3 reaches down to x = 12 - 3 radius
    assert not (refined[..., reach:][mask[..., reach:]] == 1).any()
    assert not (refined[..., :12 - 3 * radius][mask[..., :12 - 3 * radius]] == 3).any()
    unrefined = dc.refine_labels(grid, image, mask, 3, iterations=3, radius=0)  # own block only: no change
    assert np.array_equal(unrefined, dc.project_blocks(grid, mask, 3))


def test_both_projections_from_one_run():
    image, truth = shells()
    run = training(image, "deep-clustering-3d", threshold=0.3, max_fps=0, seed=0, **FAST)
    refined = run.run().labels
    blocks = run.trainer.final_labels("blocks")
    for labels in (refined, blocks):
        assert (labels[truth > 0] > 0).all() and (labels[truth == 0] == 0).all()
    assert set(np.unique(blocks[truth > 0])) == set(np.unique(refined[truth > 0]))
    assert np.array_equal(run.trainer.final_labels("refined"), refined)
    assert resolve_params("deep-clustering-3d", "paper").projection == "blocks"


def test_prepare_keeps_the_brightest_voxels_unclipped():
    from napari_selfseg.imageprep import prepare_stack

    image = np.random.default_rng(0).normal(0, 1, (12, 20, 20, 2)).astype(np.float32)
    image[0, 0, :5, 0] = [8, 9, 10, 11, 12]  # a bright spot the percentile stretch would flatten to 1
    params = resolve_params("deep-clustering-3d")
    out = dc.prepare(image, params)
    engine = prepare_stack(image)
    assert out.shape == engine.shape and np.allclose(dc.clipped(out), engine, atol=1e-6)
    assert (engine[0, 0, :5, 0] == 1).all()  # the engine flattens the spot
    assert out.max() > 2 and len(np.unique(out[0, 0, :5, 0])) == 5  # here it keeps its contrast
    assert dc.prepare(np.full((4, 5, 6), 7, np.uint8), params).max() <= 1  # uint8: divided, nothing clipped
