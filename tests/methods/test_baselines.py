import numpy as np
import pytest
import tifffile
from sklearn.metrics import adjusted_rand_score

from napari_selfseg import metrics, segment, training
from napari_selfseg.cli import main
from napari_selfseg.methods import get_method, list_methods

from ..conftest import regions_image


def disk_image(size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A gray ``(size, size)`` float image: a bright disk on a dark background plus noise, and its mask."""
    yy, xx = np.mgrid[:size, :size]
    mask = (yy - size / 2) ** 2 + (xx - size / 2.5) ** 2 < (size / 4) ** 2
    noise = np.random.default_rng(seed).normal(0, 0.08, (size, size))
    return (0.25 + 0.5 * mask + noise).astype(np.float32), mask


def test_registered_after_the_learning_methods():
    assert list_methods()[0] == "feature-clustering"
    assert list_methods()[-3:] == ["kmeans", "multi-otsu", "chan-vese"]
    assert not get_method("kmeans").iterative and not get_method("multi-otsu").iterative
    assert get_method("chan-vese").iterative


def test_kmeans_finds_the_four_colour_regions(regions):
    image, truth = regions
    labels = segment(image, "kmeans", k=4)
    assert labels.shape == truth.shape and labels.min() == 1
    assert adjusted_rand_score(truth.ravel(), labels.ravel()) > 0.9


def test_kmeans_is_one_step_and_repeatable(regions):
    image, _ = regions
    run = training(image, "kmeans", k=3, seed=5, max_fps=1000)
    frames = list(run.snapshots())
    assert len(frames) == 1 and frames[0].final and frames[0].stop_reason == "done"
    assert frames[0].n_clusters == 3
    assert np.array_equal(frames[0].labels, segment(image, "kmeans", k=3, seed=5))


def test_kmeans_labels_a_volume_with_the_same_centres(regions):
    image, _ = regions
    volume = np.stack([image.mean(-1)] * 3).astype(np.float32)
    labels = segment(volume, "kmeans", k=4)
    assert labels.shape == volume.shape and np.array_equal(labels[0], labels[2])


def test_api_rejects_k_1_clearly(regions):
    image, _ = regions
    with pytest.raises(ValueError, match="k=1 is below its minimum 2"):
        segment(image, "kmeans", k=1)


def test_multi_otsu_two_classes_on_a_two_region_gray_image():
    image, mask = disk_image()
    labels = segment(image, "multi-otsu", classes=2)
    assert len(np.unique(labels)) == 2
    assert metrics.binary_scores(labels, mask)["dsc"] > 0.95


def test_multi_otsu_three_levels_and_luminance_of_colour(regions):
    image, truth = regions
    gray = np.select([truth == 0, truth == 1], [0.1, 0.5], 0.9) + np.random.default_rng(1).normal(0, 0.03, truth.shape)
    labels = segment(gray.astype(np.float32), "multi-otsu", classes=3)
    assert len(np.unique(labels)) == 3
    assert adjusted_rand_score(np.minimum(truth, 2).ravel(), labels.ravel()) > 0.9
    assert segment(image, "multi-otsu", classes=4).shape == truth.shape  # RGB: thresholds on the luminance


def test_multi_otsu_too_few_grey_values_is_a_clear_error():
    flat = np.zeros((16, 16), np.uint8)
    flat[:8] = 200
    with pytest.raises(ValueError, match="Multi-Otsu with 4 classes"):
        segment(flat, "multi-otsu", classes=4)


def test_chan_vese_finds_the_disk():
    image, mask = disk_image()
    labels = segment(image, "chan-vese", mu=0.1)
    assert len(np.unique(labels)) == 2
    assert metrics.binary_scores(labels, mask)["dsc"] > 0.95


def test_chan_vese_streams_its_level_set():
    image, mask = disk_image()
    run = training(image, "chan-vese", iterations=100, max_fps=1000)
    frames = list(run.snapshots())
    assert len(frames) > 2 and frames[-1].final and not any(f.final for f in frames[:-1])
    assert frames[-1].iteration <= 10  # 10 level-set iterations per step
    assert all("energy" in f.losses for f in frames)
    first, last = (metrics.binary_scores(f.labels, mask)["dsc"] for f in (frames[0], frames[-1]))
    assert last > first  # the contour moves towards the disk as it streams


def test_chan_vese_stops_when_the_regions_settle():
    image, _ = disk_image()
    run = training(image, "chan-vese", iterations=5000, max_fps=0)
    final = list(run.snapshots())[-1]
    assert final.stop_reason == "converged" and final.iteration < 50
    assert run.trainer.iterations < 500


def test_chan_vese_live_update_applies_to_the_next_step():
    image, _ = disk_image()
    run = training(image, "chan-vese", max_fps=1000)
    frames = run.snapshots()
    next(frames)
    run.update(mu=0.9)
    assert next(frames).params["mu"] == 0.9
    run.cancel()


def test_cli_runs_kmeans(tmp_path):
    image, _ = regions_image(40)
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", image)
    out = tmp_path / "out"
    assert main(["segment", str(folder), "-o", str(out), "--method", "kmeans", "--set", "k=3", "--quiet"]) == 0
    labels = tifffile.imread(out / "a.tif")
    assert labels.shape == (40, 40) and len(np.unique(labels)) == 3
    assert '"method": "kmeans"' in (out / "a.json").read_text()


def test_cli_rejects_a_bad_k(tmp_path, capsys):
    assert main(["segment", str(tmp_path), "-o", str(tmp_path / "o"), "--method", "kmeans", "--set", "k=30"]) == 2
    assert "above its maximum" in capsys.readouterr().err
