"""Stack and volume inputs, ground truth, semantic ids and model bundles, on toy methods whose answer is
known, so the engine is tested apart from any real method."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from napari_selfseg.bundle import load_model, read_record, save_model
from napari_selfseg.engine import Method, StopRules, Training
from napari_selfseg.imageprep import InputError
from napari_selfseg.labelmaps import ground_truth
from napari_selfseg.params import param
from napari_selfseg.postprocess import PostprocessParams


@dataclass
class ThresholdParams(PostprocessParams):
    learning_rate: float = param(0.5, low=0.0, high=5.0, help="step size")


class ThresholdModel:
    """Foreground (1) where the first channel is above a learnt threshold."""

    def __init__(self, params, state, device):
        self.threshold = state["threshold"].to(device)

    def predict(self, image: np.ndarray) -> np.ndarray:
        return (image[..., 0] > float(self.threshold)).astype(np.int64)


class ThresholdTrainer:
    """Learns the threshold halfway between the labelled foreground and background means."""

    done = False

    def __init__(self, ctx):
        self.ctx = ctx
        labelled = ctx.labels >= 0
        values, classes = ctx.image[..., 0][labelled], ctx.labels[labelled]
        self.goal = (values[classes == 1].mean() + values[classes == 0].mean()) / 2
        self.threshold = torch.zeros(())

    def step(self):
        self.threshold += self.ctx.params.learning_rate * (float(self.goal) - self.threshold)
        return {"gap": abs(float(self.goal) - self.threshold)}

    def current(self):
        return ThresholdModel(None, self.state_dict(), "cpu").predict(self.ctx.image[self.ctx.preview])

    def finish(self):
        return ThresholdModel(None, self.state_dict(), "cpu").predict(self.ctx.image)

    predict = current  # replaced below: a plane in, its labels out

    def state_dict(self):
        return {"threshold": self.threshold.clone()}


ThresholdTrainer.predict = lambda self, image: ThresholdModel(None, self.state_dict(), "cpu").predict(image)

THRESHOLD = Method(id="toy-threshold", title="Toy threshold", params=ThresholdParams, build=ThresholdTrainer,
                   inputs="stack", ground_truth="required", semantic=True, load=ThresholdModel,
                   stop_rules=lambda p: StopRules(max_iterations=30))


class QuantileTrainer:
    """Volume toy: two clusters split at the median, ids 5 and 9 (the engine renumbers them)."""

    done = False

    def __init__(self, ctx):
        self.ctx = ctx

    def step(self):
        return {}

    def current(self):
        v = self.ctx.image[::2, ::2, ::2, 0]
        return np.where(v > np.median(self.ctx.image), 9, 5)

    def finish(self):
        return self.predict(self.ctx.image)

    def predict(self, volume):
        return np.where(volume[..., 0] > np.median(volume), 9, 5)


QUANTILE = Method(id="toy-quantile", title="Toy quantile", params=PostprocessParams, build=QuantileTrainer,
                  inputs="volume", stop_rules=lambda p: StopRules(max_iterations=5))


@pytest.fixture
def toy_methods(monkeypatch):
    """The toy methods in the registry for one test (bundles name their method by id)."""
    from napari_selfseg import methods

    for method in (THRESHOLD, QUANTILE):
        monkeypatch.setitem(methods._REGISTRY, method.id, method)


def bright_square_stack(n: int = 6, size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """``(n, size, size)`` uint8 slices with a bright square (truth 1) on a dark background (0)."""
    rng = np.random.default_rng(0)
    truth = np.zeros((n, size, size), np.int64)
    truth[:, 6:18, 5:15] = 1
    image = np.where(truth == 1, 200, 50) + rng.integers(0, 20, truth.shape)
    return image.astype(np.uint8), truth


def test_ground_truth_maps_binary_masks_and_marks_unannotated_slices():
    masks = np.zeros((3, 4, 4), np.uint8)
    masks[0, :2] = 255
    masks[2, 1:] = 255
    out = ground_truth(masks, unannotated_slices=True)
    assert out.dtype == np.int64
    assert set(np.unique(out[0])) == {0, 1} and np.all(out[1] == -1) and set(np.unique(out[2])) == {0, 1}
    assert set(np.unique(ground_truth(np.array([[0, 2], [3, 0]])))) == {0, 2, 3}  # multi-class kept


def test_stack_method_streams_the_preview_slice_and_labels_the_whole_stack():
    image, truth = bright_square_stack()
    labels = ground_truth(np.where(np.arange(6)[:, None, None] < 2, truth, 0), unannotated_slices=True)
    run = Training(THRESHOLD, image, labels=labels, preview=4, max_fps=1e9)
    frames = list(run.snapshots())
    assert all(f.index == (4,) and f.labels.shape == (24, 24) for f in frames[:-1])
    final = frames[-1]
    assert final.final and final.index == () and final.labels.shape == (6, 24, 24)
    assert np.array_equal(final.labels, truth)  # semantic: class ids 0/1 kept as they are


def test_preview_follows_the_user_during_training():
    image, truth = bright_square_stack()
    run = Training(THRESHOLD, image, labels=truth, preview=0, max_fps=1e9)
    frames = run.snapshots()
    assert next(frames).index == (0,)
    run.set_preview(3)
    assert next(frames).index == (3,)
    run.set_preview(99)  # clamped to the stack
    assert next(frames).index == (5,)
    frames.close()


def test_required_ground_truth_is_asked_for_clearly():
    image, _ = bright_square_stack()
    with pytest.raises(InputError, match="ground truth"):
        Training(THRESHOLD, image)
    with pytest.raises(InputError, match="ground truth"):
        Training(THRESHOLD, image, labels=np.full(image.shape, -1))
    with pytest.raises(InputError, match="do not match"):
        Training(THRESHOLD, image, labels=np.zeros((6, 24, 23), int))


def test_volume_method_frames_are_volumes_with_stable_ids():
    volume = np.random.default_rng(1).random((8, 10, 12)).astype(np.float32)
    run = Training(QUANTILE, volume, max_fps=1e9, check_every=100)
    frames = list(run.snapshots())
    assert all(f.labels.shape == (8, 10, 12) for f in frames)
    assert set(np.unique(frames[-1].labels)) == {1, 2}  # clusters renumbered from 1
    assert run.predict(volume).shape == (8, 10, 12)


def test_bundle_round_trip_gives_identical_labels(tmp_path, toy_methods):
    image, truth = bright_square_stack()
    run = Training(THRESHOLD, image, labels=truth, max_fps=0)
    run.run()
    path = save_model(run, tmp_path / "toy", note="test")
    assert path.suffix == ".safetensors" and not list(tmp_path.glob("*.part*"))
    record = read_record(path)
    assert record["method"] == "toy-threshold" and record["provenance"]["note"] == "test"
    model = load_model(path, "cpu")
    assert np.array_equal(model.predict(image), run.predict(image))  # a stack
    assert np.array_equal(model.predict(image[2]), truth[2])  # one plane


def test_feature_clustering_bundle_keeps_cluster_ids(tmp_path, regions):
    from napari_selfseg import api

    image, _ = regions
    run = api.train(image, "feature-clustering", max_iterations=15, channels=8)
    model = load_model(save_model(run, tmp_path / "fc.safetensors"), "cpu")
    labels = model.predict(image)
    assert np.array_equal(labels, run.predict(image))
    assert set(np.unique(labels)) <= set(np.unique(run.predict(image)))


def test_corrupt_or_foreign_model_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 40)
    with pytest.raises(InputError, match="not a napari-selfseg model"):
        load_model(bad)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(InputError, match="not a napari-selfseg model"):
        load_model(foreign)
    with pytest.raises(InputError, match="no such model file"):
        load_model(tmp_path / "missing.safetensors")
