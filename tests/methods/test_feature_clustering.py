import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from napari_selfseg import segment, training
from napari_selfseg.api import resolve_params

FAST = dict(channels=16, scale=1.0, max_iterations=60, threads=1)


def test_converges_on_known_regions(regions):
    image, truth = regions
    labels = segment(image, "feature-clustering", seed=0, min_labels=4, mu=5.0, **FAST)
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
