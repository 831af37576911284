import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from napari_selfseg import segment, training
from napari_selfseg.api import resolve_params
from napari_selfseg.imageprep import prepare_image

FAST = dict(channels=16, scale=1.0, max_iterations=60, threads=1)


def test_converges_on_known_regions(regions):
    image, truth = regions
    labels = segment(image, "feature-clustering", seed=0, min_labels=4, mu=5.0, start_steps=0, **FAST)
    assert labels.shape == truth.shape
    assert adjusted_rand_score(truth.ravel(), labels.ravel()) > 0.9


def test_same_seed_gives_identical_labels_on_cpu(regions):
    image, _ = regions
    a = segment(image, seed=3, device="cpu", **FAST)
    b = segment(image, seed=3, device="cpu", **FAST)
    assert np.array_equal(a, b)


def test_gray_image_and_superpixels_and_no_batchnorm(regions):
    image, truth = regions
    gray = image.mean(-1).astype(np.uint16) * 100  # uint16 microscopy-like
    labels = segment(gray, superpixels=True, n_superpixels=50, **FAST)
    assert labels.shape == truth.shape and labels.max() >= 1
    labels = segment(image, batch_norm=False, **FAST)
    assert labels.shape == truth.shape


def test_scribbles_steer_the_classes(regions):
    image, truth = regions
    scribbles = np.zeros_like(truth)
    scribbles[5:10, 5:10] = 1  # top-left region
    scribbles[5:10, 30:40] = 2  # top-right region
    scribbles[30:40, 5:10] = 1  # bottom-left joins top-left's class
    labels = segment(image, scribbles=scribbles, seed=0, scribble_weight=2.0, **FAST)
    assert labels[7, 7] == labels[35, 7]
    assert labels[7, 7] != labels[7, 35]
    run = training(image, scribbles=scribbles, **FAST)
    assert run.stop_rules.min_clusters == 2  # the label count follows the two scribble classes


def test_volume_labels_every_slice_with_consistent_ids(regions):
    image, _ = regions
    volume = np.stack([image.mean(-1)] * 3).astype(np.float32)
    labels = segment(volume, **FAST)
    assert labels.shape == volume.shape
    assert np.array_equal(labels[0], labels[2])  # the same content gets the same ids in every slice


def test_live_update_changes_the_loss_weights(regions):
    image, _ = regions
    run = training(image, max_fps=1000, **FAST)
    frames = run.snapshots()
    next(frames)
    run.update(mu=0.0, theta=0.0)
    assert next(frames).params["mu"] == 0.0
    run.cancel()


def test_start_mu_acts_for_the_first_start_steps_then_mu(regions):
    """The schedule is the same training as moving the mu slider at step start_steps (bit-identical on CPU)."""
    image, _ = regions
    run = dict(seed=1, threads=1, channels=8, max_iterations=12, min_labels=1, refine_superpixels=0)
    scheduled = segment(image, mu_start=4.0, mu=0.1, start_steps=5, **run)
    live = training(image, mu=4.0, start_steps=0, max_fps=1e9, **run)
    for frame in live.snapshots():
        if frame.iteration == 5:
            live.update(mu=0.1)
    assert same_partition(scheduled, frame.labels)  # ids may differ: frames keep the streamed ids
    constant = segment(image, mu_start=4.0, mu=0.1, start_steps=0, **run)  # start_steps 0: mu throughout
    assert not same_partition(constant, scheduled)
    assert np.array_equal(constant, segment(image, mu_start=0.0, mu=0.1, start_steps=0, **run))


def same_partition(a, b):
    """The two label maps split the image into the same regions, whatever their ids."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1).shape[1]
    return pairs == len(np.unique(a)) == len(np.unique(b))


def test_paper_preset():
    p = resolve_params("feature-clustering", "paper")
    assert (p.channels, p.conv_layers, p.theta, p.mu, p.min_labels, p.scale) == (100, 2, 1.0, 1.0, 3, 1.0)
    with pytest.raises(ValueError, match="preset"):
        resolve_params("feature-clustering", "nope")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda(regions):
    image, truth = regions
    labels = segment(image, device="cuda", **FAST)
    assert labels.shape == truth.shape


def test_out_of_gpu_memory_in_the_final_pass_retries_in_smaller_tiles(monkeypatch):
    """The same labels as without the fallback (tiles give the untiled result), and the user is told."""
    from napari_selfseg.methods import feature_clustering

    from ..conftest import regions_image

    image, _ = regions_image(48)
    expected = training(image, "feature-clustering", rgb=True, max_fps=0, **FAST).run().labels
    real = feature_clustering.tiled_forward

    def small_gpu(model, x, tile, **kwargs):
        if tile > 256:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(model, x, tile, **kwargs)

    monkeypatch.setattr(feature_clustering, "tiled_forward", small_gpu)
    run = training(image, "feature-clustering", rgb=True, max_fps=0, **FAST)
    assert np.array_equal(run.run().labels, expected)
    assert run.trainer.tile == 256 and run.notices.count("out of GPU memory: labelling with smaller tiles") == 2


def _disc_image(size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy RGB ``(size, size, 3)`` float image in [0, 1]: a dark disc (truth 1) on a light ground."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2.3) ** 2 + (xx - size / 1.8) ** 2 < (size / 4) ** 2
    image = np.where(disc[..., None], [0.2, 0.1, 0.3], [0.9, 0.8, 0.6])
    image = image + np.random.default_rng(seed).normal(0, 0.02, image.shape)
    return np.clip(image, 0, 1), disc


@pytest.mark.parametrize("channels", [3, 1])
def test_watershed_superpixels_follow_a_curved_edge(channels):
    from napari_selfseg.methods.feature_clustering import _watershed_superpixels

    image, disc = _disc_image()
    image = image if channels == 3 else image[..., :1]
    segments = _watershed_superpixels(image, 100)
    assert segments.shape == disc.shape and segments.min() == 0
    assert 50 <= segments.max() + 1 <= 150  # about as many as asked for

    def mixed_pixels(seg):  # pixels on the minority side of their superpixel's edge
        inside = np.bincount(seg.ravel(), weights=disc.ravel())
        size = np.bincount(seg.ravel())
        return int(np.minimum(inside, size - inside).sum())

    assert mixed_pixels(segments) <= 2  # the outline's ~100 pixels: superpixels do not straddle it
    grid = (np.arange(64)[:, None] // 6) * 11 + np.arange(64)[None] // 6
    assert mixed_pixels(grid) > 50  # as cells that ignore the image do


def test_final_map_refined_by_watershed_or_slic(monkeypatch, regions):
    from napari_selfseg.methods import feature_clustering as fc

    image, truth = regions
    used = []
    for name in ("_watershed_superpixels", "_slic"):
        real = getattr(fc, name)
        monkeypatch.setattr(fc, name, lambda *a, _real=real, _name=name: used.append(_name) or _real(*a))
    for method in ("watershed", "slic"):
        labels = segment(image, seed=0, refine_method=method, refine_superpixels=200, **FAST)
        assert labels.shape == truth.shape and adjusted_rand_score(truth.ravel(), labels.ravel()) > 0.9
    assert used == ["_watershed_superpixels", "_slic"]
    # the final map is the majority vote: one label per superpixel
    segments = fc._watershed_superpixels(prepare_image(image, rgb=True), 200)
    labels = segment(image, seed=0, refine_superpixels=200, **FAST)
    assert all(len(np.unique(labels[segments == s])) == 1 for s in np.unique(segments))


def test_models_saved_by_older_versions_keep_their_settings(tmp_path, regions):
    import json

    from safetensors.torch import load_file, save_file

    from napari_selfseg import api
    from napari_selfseg.bundle import load_model, read_record, save_model

    image, _ = regions
    path = save_model(api.train(image, "feature-clustering", max_iterations=5, channels=8), tmp_path / "m")
    assert load_model(path, "cpu").params.refine_method == "watershed"
    record = read_record(path)
    for name in ("refine_method", "start_steps", "merge_regions", "merge_edges"):  # as an older version wrote it
        del record["params"][name]
    save_file(load_file(str(path)), str(path), metadata={"napari_selfseg": json.dumps(record)})
    params = load_model(path, "cpu").params
    assert params.refine_method == "slic" and params.start_steps == 0  # one spatial weight, as it trained
    assert params.merge_regions == 0 and params.merge_edges == 0  # and its final map is not merged by colour


def _two_tone_scene():
    """``(40, 60, 3)`` image: a left and a right half of nearly the same gray (Lab difference 1.0) holding
    a distinct red square, and a blue square that touches nothing of its own colour."""
    image = np.full((40, 60, 3), 0.50)
    image[:, 30:] = 0.51
    image[10:20, 10:20] = (0.9, 0.1, 0.1)
    image[25:35, 45:55] = (0.1, 0.1, 0.9)
    labels = np.zeros((40, 60), dtype=np.int64)
    labels[:, 30:] = 1  # the halves as two clusters, as the network often splits a uniform area
    labels[10:20, 10:20] = 2
    labels[25:35, 45:55] = 3
    return image, labels


def test_touching_regions_of_like_colour_merge_into_the_larger_cluster():
    from napari_selfseg.methods import feature_clustering as fc

    image, labels = _two_tone_scene()
    labels[:, 28:30] = 1  # the right half's cluster is now the larger one
    merged = fc._merge_similar_regions(labels, fc._colours_for_merging(image), max_difference=5.0)
    background = (labels == 0) | (labels == 1)
    assert np.all(merged[background] == 1)  # one region, labelled by the cluster covering most of it
    assert np.array_equal(merged[~background], labels[~background])  # distinct colours stay apart
    assert np.array_equal(fc._merge_similar_regions(labels, fc._colours_for_merging(image), 0.5), labels)


def test_regions_of_like_colour_that_do_not_touch_stay_apart():
    from napari_selfseg.methods import feature_clustering as fc

    image, labels = _two_tone_scene()
    image[25:35, 45:55] = image[10:20, 10:20]  # both squares red, but far apart and in different clusters
    merged = fc._merge_similar_regions(labels, fc._colours_for_merging(image), max_difference=5.0)
    assert set(np.unique(merged[10:20, 10:20])) == {2} and set(np.unique(merged[25:35, 45:55])) == {3}


def test_an_edge_keeps_like_coloured_regions_apart_where_a_gradual_change_merges():
    from napari_selfseg.methods import feature_clustering as fc

    width = 64
    step = np.full((32, width, 1), 0.40)
    step[:, width // 2:] = 0.46  # two gray areas 6 % apart with a sharp edge between them
    ramp = np.repeat((0.40 + 0.12 * np.arange(width) / (width - 1))[None, :, None], 32, axis=0)  # same halves' means
    labels = np.zeros((32, width), dtype=np.int64)
    labels[:, width // 2:] = 1
    for image, joined in ((step, False), (ramp, True)):
        colours = fc._colours_for_merging(image)
        merged = fc._merge_similar_regions(labels, colours, 10.0, fc._colour_gradient(colours), edge_weight=2.0)
        assert (len(np.unique(merged)) == 1) == joined
        assert len(np.unique(fc._merge_similar_regions(labels, colours, 10.0))) == 1  # by colour alone: both join


def test_region_merging_is_part_of_the_final_map(regions):
    from napari_selfseg.methods import feature_clustering as fc

    image, _ = regions
    labels = segment(image, seed=0, merge_regions=0.0, **FAST)
    merged = segment(image, seed=0, merge_regions=60.0, merge_edges=0.5, **FAST)  # the same training, merged
    colours = fc._colours_for_merging(prepare_image(image, rgb=True))
    assert len(np.unique(merged)) < len(np.unique(labels))
    expected = fc._merge_similar_regions(labels.astype(np.int64), colours, 60.0, fc._colour_gradient(colours), 0.5)
    assert same_partition(expected, merged)


def test_final_pass_builds_no_autograd_graph(regions):
    """The final map runs without gradients: the Ward merge of clusters reads the responses as arrays."""
    image, truth = regions
    labels = segment(image, seed=0, merge_cost=0.05, **FAST)
    assert labels.shape == truth.shape and len(np.unique(labels)) >= 2
