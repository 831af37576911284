import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from skimage.color import rgb2lab

from napari_selfseg import segment, training
from napari_selfseg.api import resolve_params
from napari_selfseg.engine import TrainContext
from napari_selfseg.losses import context_consistency, coordinate_grid
from napari_selfseg.methods.feature_clustering import _colour_merge, _reassign_by_colour
from napari_selfseg.methods.sgscn import METHOD, SGSCNTrainer, load

FAST = {"channels": 16, "train_pixels": 0, "max_iterations": 60, "threads": 1}


def _one_hot_response(labels: np.ndarray, k: int, sharpness: float = 10.0) -> torch.Tensor:
    """``(1, k, H, W)`` responses whose argmax (and nearly whole softmax mass) is ``labels``."""
    return torch.nn.functional.one_hot(torch.from_numpy(labels), k).permute(2, 0, 1)[None].float() * sharpness


@pytest.mark.parametrize("weighting", ["mass", "clusters"])
def test_consistency_is_lower_for_compact_clusters_than_for_scattered_ones(weighting):
    compact = np.zeros((32, 32), dtype=np.int64)
    compact[:, 16:] = 1  # two halves
    scattered = (np.indices((32, 32)).sum(0) % 2).astype(np.int64)  # a checkerboard of the same two clusters
    low = context_consistency(_one_hot_response(compact, 2), weighting=weighting)
    high = context_consistency(_one_hot_response(scattered, 2), weighting=weighting)
    assert low < 0.7 * high  # halves: 1/3 + 1/12 against 1/3 + 1/3 (units of half the side, squared)
    if weighting == "mass":
        # mass weighting = total spread minus the spread of the cluster centres, which sit at the image
        # centre for both maps below: a tie by symmetry, so only the per-cluster average is compared
        return
    # a blob in the centre is more compact than the same area spread over the four corners
    blob = np.zeros((32, 32), dtype=np.int64)
    blob[12:20, 12:20] = 1
    corners = np.zeros((32, 32), dtype=np.int64)
    for y, x in ((0, 0), (0, 28), (28, 0), (28, 28)):
        corners[y:y + 4, x:x + 4] = 1
    assert context_consistency(_one_hot_response(blob, 2), weighting=weighting) < context_consistency(
        _one_hot_response(corners, 2), weighting=weighting)


def test_consistency_weightings_of_small_and_absent_clusters():
    labels = np.zeros((16, 16), dtype=np.int64)
    labels[:, 8:] = 1
    response = _one_hot_response(labels, 5).requires_grad_(True)
    present = torch.tensor([True, True, False, False, False])
    # 'clusters' averages over the present clusters only; 'mass' gives absent ones no weight by itself
    alone = context_consistency(_one_hot_response(labels, 2), weighting="clusters")
    assert context_consistency(response, present, "clusters").item() == pytest.approx(alone.item(), rel=0.05)
    mass = context_consistency(response, weighting="mass")
    assert mass.item() == pytest.approx(context_consistency(_one_hot_response(labels, 2)).item(), rel=0.05)
    mass.backward()
    assert torch.isfinite(response.grad).all() and response.grad.abs().sum() > 0
    # a tiny compact cluster counts by its size under 'mass', as much as the big one under 'clusters'
    speck = np.zeros((16, 16), dtype=np.int64)
    speck[7:9, 7:9] = 1
    r = _one_hot_response(speck, 2)
    assert context_consistency(r, weighting="mass") > context_consistency(r, weighting="clusters")
    with pytest.raises(ValueError, match="weighting"):
        context_consistency(r, weighting="nope")


def test_coordinate_grid_keeps_the_aspect_ratio():
    grid = coordinate_grid(10, 20)
    assert grid.shape == (2, 10, 20)
    assert grid[1].max() - grid[1].min() == pytest.approx(2 * 19 / 20)
    assert grid[0].max() - grid[0].min() == pytest.approx(2 * 9 / 20)  # same units on both axes


def test_converges_on_known_regions(regions):
    image, truth = regions
    labels = segment(image, "sgscn", seed=0, min_labels=4, **FAST)
    assert labels.shape == truth.shape
    assert adjusted_rand_score(truth.ravel(), labels.ravel()) > 0.9


def test_same_seed_gives_identical_labels_on_cpu(regions):
    image, _ = regions
    a = segment(image, "sgscn", seed=3, device="cpu", **FAST)
    b = segment(image, "sgscn", seed=3, device="cpu", **FAST)
    assert np.array_equal(a, b)


def test_live_sliders_act_on_a_running_training(regions):
    image, _ = regions
    run = training(image, "sgscn", max_fps=1000, min_labels=1, **FAST)
    frames = run.snapshots()
    first = next(frames)
    assert set(first.losses) == {"cross-entropy", "spatial", "consistency"}
    run.update(max_clusters=2, w_cc=3.0, learning_rate=0.05, w_ss=0.5, w_ce=2.0)
    frame = next(frames)
    assert frame.params["max_clusters"] == 2 and frame.params["w_cc"] == 3.0
    assert frame.n_clusters <= 2  # the argmax now uses two responses only
    run.cancel()


def test_ablation_switches_stop_the_updates(regions):
    image, _ = regions
    params = resolve_params("sgscn", None, {"channels": 8, "cross_entropy": False, "sparse_spatial": False,
                                                "consistency": False})
    trainer = SGSCNTrainer(TrainContext(image.astype(np.float32) / 255, params, torch.device("cpu"), 0))
    before = [p.detach().clone() for p in trainer.model.net.parameters()]
    losses = trainer.step()
    assert set(losses) == {"cross-entropy", "spatial", "consistency"}  # still reported for the plot
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.net.parameters()))
    trainer.ctx.params = resolve_params("sgscn", None, {"channels": 8, "cross_entropy": False,
                                                            "sparse_spatial": False})
    trainer.step()  # the consistency term alone now trains the network
    assert not all(torch.equal(a, b) for a, b in zip(before, trainer.model.net.parameters()))


@pytest.mark.parametrize("resolution", ["training", "full"])
def test_state_dict_and_load_predict_like_the_trainer(regions, resolution):
    image, _ = regions
    params = resolve_params("sgscn", None, {"channels": 8, "train_pixels": 600, "label_resolution": resolution})
    prepared = image.astype(np.float32) / 255
    trainer = SGSCNTrainer(TrainContext(prepared, params, torch.device("cpu"), 0))
    for _ in range(5):
        trainer.step()
    expected = trainer.predict(prepared)
    assert expected.shape == image.shape[:2]
    predictor = load(params, trainer.state_dict(), torch.device("cpu"))
    assert np.array_equal(predictor.predict(prepared), expected)


def test_gray_image_and_volume(regions):
    image, truth = regions
    gray = (image.mean(-1) * 100).astype(np.uint16)
    labels = segment(gray, "sgscn", colour_space="rgb+lab", label_resolution="full", **FAST)
    assert labels.shape == truth.shape and labels.min() >= 1
    volume = np.stack([gray] * 3)
    stack = segment(volume, "sgscn", **FAST)
    assert stack.shape == volume.shape and np.array_equal(stack[0], stack[2])


def test_colour_merge_joins_look_alike_clusters_first():
    # two red and two blue quarters, each its own cluster; one dark-red quarter
    labels = np.repeat(np.arange(4), 8)[None].repeat(8, 0)  # (8, 32): four vertical bands, ids 0-3
    image = np.zeros((8, 32, 3), dtype=np.float32)
    image[:, :8] = image[:, 8:16] = (0.9, 0.1, 0.1)
    image[:, 16:24] = (0.1, 0.1, 0.9)
    image[:, 24:] = (0.15, 0.1, 0.85)
    merged = _colour_merge(labels, image, 2)
    assert len(np.unique(merged)) == 2
    assert merged[0, 0] == merged[0, 8] and merged[0, 16] == merged[0, 24] and merged[0, 0] != merged[0, 16]
    assert np.array_equal(_colour_merge(labels, image, 4), labels)  # already few enough: unchanged
    gray = image[..., :1]  # gray images merge on their intensity
    assert len(np.unique(_colour_merge(labels, gray, 2))) == 2


def test_reassign_by_colour_moves_a_misgrouped_region_to_its_colour():
    image = np.zeros((8, 16, 3), dtype=np.float32)
    image[:, :8] = (0.9, 0.1, 0.1)  # red left half
    image[:, 8:] = (0.1, 0.1, 0.9)  # blue right half
    labels = np.zeros((8, 16), dtype=np.int64)
    labels[:, 12:] = 1  # the network put the blue columns 8-11 with the red cluster
    segments = np.repeat(np.arange(4), 4)[None].repeat(8, 0)  # four 4-column superpixels
    out = _reassign_by_colour(labels, image, segments)
    assert (out[:, :8] == 0).all() and (out[:, 8:] == 1).all()
    pixels = np.arange(labels.size).reshape(labels.shape)  # without superpixels: pixel by pixel
    assert np.array_equal(_reassign_by_colour(labels, image, pixels), out)
    # ids are kept (no renumbering), and a label map that is already right is left as it is
    assert np.array_equal(_reassign_by_colour(out * 5, image, segments, steps=3), out * 5)


def test_reassign_by_colour_weighs_each_clusters_spread():
    # wide uniform skin; a lesion that varies from dark to light brown; a light-brown rim grouped with the
    # skin. The rim's colour is nearer the skin's mean than the lesion's, but it is one of the lesion's colours.
    skin, dark, light = (0.95, 0.85, 0.75), (0.25, 0.12, 0.05), (0.80, 0.62, 0.48)
    image = np.empty((4, 120, 3), dtype=np.float32)
    image[:, :100] = skin
    image[:, 100:105] = image[:, 110:115] = dark
    image[:, 105:110] = image[:, 115:] = light  # the lesion's light part, and the rim
    labels = np.zeros((4, 120), dtype=np.int64)
    labels[:, 100:115] = 1
    segments = np.repeat(np.arange(24), 5)[None].repeat(4, 0)
    lab = rgb2lab(image)
    skin_mean, lesion_mean = lab[labels == 0].mean(0), lab[labels == 1].mean(0)
    assert np.linalg.norm(lab[0, -1] - skin_mean) < np.linalg.norm(lab[0, -1] - lesion_mean)  # nearer the skin
    expected = (np.arange(120) >= 100)[None].repeat(4, 0)
    assert np.array_equal(_reassign_by_colour(labels, image, segments), expected)


def test_reassign_by_colour_refits_the_models_at_every_step():
    # a gray ramp split too far left: each step refits both models and moves the boundary right
    image = np.repeat(np.linspace(0, 1, 40)[None, :, None], 2, 0).astype(np.float32)  # (2, 40, 1)
    labels = np.zeros((2, 40), dtype=np.int64)
    labels[:, 8:] = 1
    pixels = np.arange(80).reshape(2, 40)
    once = _reassign_by_colour(labels, image, pixels, steps=1)
    twice = _reassign_by_colour(labels, image, pixels, steps=2)
    assert np.array_equal(twice, _reassign_by_colour(once, image, pixels, steps=1))
    assert (once != labels).any() and (twice != once).any()
    settled = _reassign_by_colour(labels, image, pixels, steps=20)
    assert np.array_equal(_reassign_by_colour(settled, image, pixels, steps=1), settled)  # a fixed point


def test_reassign_by_colour_weighs_spread_on_gray_images_too():
    # gray: uniform light background, a body that varies from dark to mid-gray, a mid-gray rim grouped with
    # the background though nearer its mean
    image = np.empty((4, 120, 1), dtype=np.float32)
    image[:, :100] = 0.9
    image[:, 100:105] = image[:, 110:115] = 0.1
    image[:, 105:110] = image[:, 115:] = 0.6
    labels = np.zeros((4, 120), dtype=np.int64)
    labels[:, 100:115] = 1
    segments = np.repeat(np.arange(24), 5)[None].repeat(4, 0)
    expected = (np.arange(120) >= 100)[None].repeat(4, 0)
    assert np.array_equal(_reassign_by_colour(labels, image, segments), expected)


def test_predict_regroups_the_final_superpixels(regions, monkeypatch):
    from napari_selfseg.methods import sgscn

    calls = []
    real = sgscn._reassign_by_colour

    def spy(labels, image, segments, steps):
        calls.append((segments, steps))
        return real(labels, image, segments, steps)

    monkeypatch.setattr(sgscn, "_reassign_by_colour", spy)
    image, truth = regions
    segment(image, "sgscn", seed=0, merge_colours=2, reassign_steps=3, refine_superpixels=300, **FAST)
    segments, steps = calls[-1]
    assert steps == 3 and segments.shape == truth.shape and segments.max() + 1 < truth.size / 2  # superpixels
    segment(image, "sgscn", seed=0, merge_colours=2, reassign_steps=1, refine_superpixels=0, **FAST)
    assert np.array_equal(calls[-1][0].ravel(), np.arange(truth.size))  # no superpixels: pixel by pixel
    calls.clear()
    segment(image, "sgscn", seed=0, merge_colours=2, **FAST)
    assert not calls  # off by default


def test_merge_by_colour_caps_the_final_cluster_count(regions):
    image, truth = regions
    labels = segment(image, "sgscn", seed=0, min_labels=4, merge_colours=2, **FAST)
    assert len(np.unique(labels)) == 2
    # the merge only joins whole clusters: each true region still lies in one final cluster
    assert all(len(np.unique(labels[truth == t])) == 1 for t in range(4))


def test_paper_preset_and_method():
    p = resolve_params("sgscn", "paper")
    assert (p.channels, p.conv_layers, p.w_ce, p.w_ss, p.learning_rate) == (100, 2, 1.0, 5.0, 0.1)
    assert (p.max_iterations, p.min_labels, p.train_pixels, p.consistency) == (50, 3, 0, True)
    assert p.consistency_weighting == "clusters"
    assert METHOD.id == "sgscn" and set(METHOD.presets) == {"interactive", "lesion", "paper"}
    lesion = resolve_params("sgscn", "lesion")
    assert (lesion.merge_colours, lesion.reassign_steps, lesion.border_components) == (2, 4, True)


def test_ph2_lesion_beats_a_coin(data_dir):
    from benchmarks import datasets
    from napari_selfseg.metrics import evaluate

    sample = next(datasets.load("ph2", 1))
    labels = segment(sample.image, "sgscn", rgb=True, seed=0, threads=1, max_iterations=100, train_pixels=6000)
    assert evaluate(labels, sample.gt, "best-overlap")["dsc"] > 0.7


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda(regions):
    image, truth = regions
    assert segment(image, "sgscn", device="cuda", **FAST).shape == truth.shape


def test_saved_model_labels_like_the_run(regions, tmp_path):
    from napari_selfseg.bundle import load_model, save_model

    image, _ = regions
    run = training(image, "sgscn", max_fps=0, **FAST)
    final = run.run()
    path = save_model(run, tmp_path / "sgscn")
    model = load_model(path, device="cpu")
    assert np.array_equal(model.predict(image), final.labels)
    assert np.array_equal(run.predict(image), final.labels)


def test_final_map_is_feature_clusterings_vote_and_region_merge(regions):
    """Watershed superpixels and the edge-weighted region merge by default, as in feature clustering."""
    import dataclasses

    from napari_selfseg.imageprep import prepare_image
    from napari_selfseg.methods import feature_clustering as fc

    assert (METHOD.params().refine_method, METHOD.params().merge_regions) == ("watershed", 20.0)
    image, _ = regions
    run = training(image, "sgscn", max_fps=0, refine_superpixels=0, merge_regions=0.0, **FAST)
    run.run()
    model, prepared = run.trainer.model, prepare_image(image, rgb=True)
    raw = model.predict(prepared)  # the network's own ids: the vote's ties break the same way below
    model.params = dataclasses.replace(model.params, refine_superpixels=200, merge_regions=60.0)
    final = model.predict(prepared)
    segments = fc._watershed_superpixels(prepared, 200)
    assert all(len(np.unique(final[segments == s])) == 1 for s in np.unique(segments))  # one label each
    expected, _ = fc.vote_and_merge(raw, prepared, model.params)
    assert np.array_equal(expected, final)


def test_models_and_settings_from_before_the_region_merge_keep_their_final_map(tmp_path, regions):
    import json

    from safetensors.torch import load_file, save_file

    from napari_selfseg import api
    from napari_selfseg.bundle import load_model, read_record, save_model

    image, _ = regions
    path = save_model(api.train(image, "sgscn", **FAST), tmp_path / "m")
    record = read_record(path)
    record["params"]["refine_superpixels"] = 1000  # as an older version wrote it: SLIC, no merge
    for name in ("refine_method", "merge_regions", "merge_edges"):
        del record["params"][name]
    save_file(load_file(str(path)), str(path), metadata={"napari_selfseg": json.dumps(record)})
    params = load_model(path, "cpu").params
    assert (params.refine_method, params.refine_superpixels, params.merge_regions) == ("slic", 1000, 0.0)
    lesion = resolve_params("sgscn", "lesion")  # the preset keeps the final map it was chosen with
    assert (lesion.refine_method, lesion.refine_superpixels, lesion.merge_regions) == ("slic", 1000, 0.0)
