"""U-Net, LGAN and cycle GAN: network shapes, the adversarial pieces and learning from a labelled stack."""
import numpy as np
import pytest
import torch
from torch import nn

from napari_selfseg import metrics
from napari_selfseg.engine import Training, TrainContext
from napari_selfseg.losses import cycle_consistency, gradient_penalty, masked_cross_entropy, soft_dice_loss
from napari_selfseg.methods import get_method
from napari_selfseg.methods.supervised import data, load
from napari_selfseg.methods.supervised.trainers import LGANTrainer, cycle_pass
from napari_selfseg.nn import Critic, UNet

TINY = dict(depth=2, base_channels=8, batch_size=4, max_side=0)


def disc_stack(n=12, size=33, seed=0, values=(0, 1)):
    """``n`` noisy gray slices ``(n, size, size)`` float32 each with a bright disc (and, for three
    ``values``, a dark square), and their ``(n, size, size)`` truth using the class ``values``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, truth = [], []
    for _ in range(n):
        cy, cx = rng.uniform(10, size - 10, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(4, 8) ** 2
        label = np.where(disc, values[1], values[0])
        image = 0.4 + 0.4 * disc
        if len(values) > 2:
            t, l = rng.integers(0, size - 6, 2)
            square = np.zeros_like(disc)
            square[t:t + 6, l:l + 6] = True
            square &= ~disc
            label = np.where(square, values[2], label)
            image = np.where(square, 0.05, image)
        images.append(image + rng.normal(0, 0.08, disc.shape))
        truth.append(label)
    return np.asarray(images, np.float32), np.asarray(truth, np.int64)


def context(method, image, labels, **params):
    from napari_selfseg.params import make_params

    spec = get_method(method)
    prepared = spec.prepare(image, make_params(spec.params, {}), None)
    return TrainContext(prepared, make_params(spec.params, {**TINY, **params}), torch.device("cpu"), 0,
                        labels=labels, preview=0)


@pytest.mark.parametrize("shape", [(37, 53), (5, 7), (1, 1), (64, 31)])
def test_unet_output_shape_equals_input_shape(shape):
    net = UNet(3, 4, depth=3, base_channels=4)
    assert net(torch.rand(2, 3, *shape)).shape == (2, 4, *shape)


def test_discriminator_judges_image_mask_pairs():
    image, truth = disc_stack(6)
    trainer = LGANTrainer(context("lgan", image, truth))
    seen = []
    trainer.critic.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    x, y, _, _ = trainer._batch(trainer.data.train, {})
    probs = trainer.net(x).softmax(1)
    real, fake = trainer.pairs(x, y, probs)
    # channels: the image's, then one per class; the real mask is the one-hot ground truth, the fake the softmax
    assert real.shape[1] == fake.shape[1] == 1 + 2
    assert torch.equal(real[:, :1], x) and torch.equal(fake[:, :1], x)
    assert torch.equal(real[:, 1:].argmax(1), y) and torch.allclose(fake[:, 1:], probs)
    trainer.step()
    assert seen and all(s.shape[1] == 3 for s in seen)  # every critic call during a step got pairs
    assert not torch.equal(seen[0][:, 1:], seen[1][:, 1:])  # ground-truth pairs and predicted pairs


def test_cycle_loss_is_zero_for_identity_generators_only():
    x, y = torch.rand(2, 2, 9, 11), torch.rand(2, 2, 9, 11).softmax(1)
    trips = cycle_pass(nn.Identity(), nn.Identity(), x, y)
    assert cycle_consistency(x, trips["image_back"], y, trips["mask_back"]).item() == 0.0
    trips = cycle_pass(lambda a: a * 0.5, nn.Identity(), x, y)
    assert cycle_consistency(x, trips["image_back"], y, trips["mask_back"]).item() > 0.1


def test_dice_over_all_classes_also_scores_a_thin_background_class():
    target = torch.ones((1, 16, 16), dtype=torch.long)
    target[:, 8] = 0  # a one-pixel line of class 0 (an EM membrane) in a sea of class 1
    missed = torch.zeros((1, 2, 16, 16))
    missed[:, 1] = 10.0  # predicts class 1 everywhere: the line is lost
    perfect = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 10
    assert soft_dice_loss(missed, target) < 0.05  # foreground Dice barely notices the lost line
    assert soft_dice_loss(missed, target, background=True) > 0.45  # averaged with class 0's Dice of ~0
    assert soft_dice_loss(perfect, target, background=True) < 0.01


def test_gradient_penalty_is_zero_for_a_unit_slope_critic():
    critic = nn.Sequential(nn.Flatten(), nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        critic[1].weight.copy_(torch.tensor([[0.6, 0.8, 0.0, 0.0]]))  # |grad| = 1 everywhere
    real, fake = torch.rand(3, 1, 2, 2), torch.rand(3, 1, 2, 2)
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(0.0, abs=1e-10)
    critic[1].weight.data *= 3
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(4.0, rel=1e-4)


def test_patch_critic_scores_every_location():
    assert Critic(3, 4, layers=2, patch=True)(torch.rand(2, 3, 32, 32)).shape == (2, 1, 8, 8)
    assert Critic(3, 4, layers=2)(torch.rand(2, 3, 32, 32)).shape == (2,)


def test_augmentation_moves_image_and_labels_together():
    y = torch.randint(0, 3, (4, 8, 8))
    x = y[:, None].float()
    for seed in range(6):
        ax, ay = data.augment(x, y, 0.0, torch.Generator().manual_seed(seed))
        assert torch.equal(ax[:, 0].long(), ay)


def test_elastic_deformation_moves_image_and_labels_together():
    y = torch.from_numpy(disc_stack(4, size=48, values=(0, 1, 2))[1])
    y[0, :6] = -1  # unlabelled pixels stay unlabelled, wherever they move
    x = y[:, None].float()
    same_x, same_y = data.elastic_deform(x, y, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(same_x, x) and torch.equal(same_y, y)
    moved_x, moved_y = data.elastic_deform(x, y, 4.0, torch.Generator().manual_seed(0))
    assert (moved_y != y).float().mean() > 0.01  # it deforms
    assert set(moved_y.unique().tolist()) <= {-1, 0, 1, 2}
    assert (moved_x[:, 0].round().long() == moved_y).float().mean() > 0.97  # same displacement field


def test_separation_weights_peak_in_the_gap_between_touching_objects():
    labels = np.zeros((1, 20, 30), np.int64)
    labels[0, 5:15, 3:13] = 1
    labels[0, 5:15, 15:25] = 1  # two objects 2 pixels apart (columns 13-14)
    labels[0, 0, 0] = -1
    w = data.border_weights(labels, 10.0, 2.0)[0]
    assert w[10, 13] == pytest.approx(1 + 10 * np.exp(-(1 + 2) ** 2 / 8), rel=1e-3)  # 1 and 2 px from them
    assert w[10, 13] > 4 and w[19, 29] == pytest.approx(1.0, abs=1e-3)  # far from both: plain weight
    assert w[0, 0] == 0  # unlabelled
    assert w[10, 12] == 1  # an object's own pixels keep the plain weight, even next to the gap
    one = labels.copy()
    one[0, 5:15, 13:15] = 1  # a single object: nothing to separate
    assert np.all(data.border_weights(one, 10.0, 2.0)[0][one[0] >= 0] == 1)


def test_separation_weights_travel_with_the_labels_through_crop_and_augmentation():
    truth = np.zeros((6, 40, 40), np.int64)
    truth[:, 10:20, 8:18] = truth[:, 10:20, 20:30] = 1  # two squares 2 pixels apart: something to separate
    image = (0.2 + 0.6 * truth + np.random.default_rng(0).normal(0, 0.05, truth.shape)).astype(np.float32)
    trainer = get_method("unet").build(context("unet", image, truth, border_weight=10.0, patch=24))
    for _ in range(5):
        x, y, weights, _ = trainer._batch(trainer.data.train, trainer._order)
        assert x.shape[1] == 1 and weights.shape == y.shape  # the weights are not an input channel
        assert torch.all(weights[y > 0] == 1) and weights[y == 0].max() > 2
    deformed = get_method("unet").build(context("unet", image, truth, border_weight=10.0, elastic=3.0, patch=24))
    assert np.isfinite(float(deformed.step()["cross_entropy"]))


def test_validation_dice_averages_the_classes_the_dice_loss_does():
    truth = np.array([[[0, 0, 0, 1, 1, 1]]] * 4)
    pred = np.array([[[0, 0, 1, 1, 1, 1]]] * 4)  # a thin class 0 loses a pixel to class 1
    interior = metrics.dice(pred == 1, truth == 1)
    membrane = metrics.dice(pred == 0, truth == 0)
    assert data.scores(pred, truth, 2)["val_dice"] == pytest.approx(interior)
    assert data.scores(pred, truth, 2, background=True)["val_dice"] == pytest.approx((interior + membrane) / 2)


def test_weighted_cross_entropy_is_the_weighted_mean_over_labelled_pixels():
    logits = torch.randn(2, 3, 5, 6)
    target = torch.randint(0, 3, (2, 5, 6))
    target[0, 0] = -1
    plain = masked_cross_entropy(logits, target)
    assert torch.allclose(masked_cross_entropy(logits, target, torch.full((2, 5, 6), 3.0)), plain)
    weight = torch.zeros(2, 5, 6)
    weight[1, 2, 3] = 1.0  # all the weight on one pixel: its own cross-entropy
    one = torch.nn.functional.cross_entropy(logits[1:2, :, 2, 3], target[1:2, 2, 3])
    assert torch.allclose(masked_cross_entropy(logits, target, weight), one)
    nothing = torch.full((2, 5, 6), -1)  # a crop without labelled pixels: no loss, not NaN
    assert masked_cross_entropy(logits, nothing) == 0


@pytest.mark.parametrize("method", ["unet", "lgan"])
def test_learns_from_labelled_slices_and_segments_held_out_ones(method):
    image, truth = disc_stack(14)
    labels = truth.copy()
    labels[10:] = -1  # four slices the user did not annotate: they are segmented, never trained on
    run = Training(get_method(method), image, {**TINY, "max_iterations": 120}, labels=labels, device="cpu",
                   threads=1, max_fps=0)
    final = run.run()
    assert final.labels.shape == truth.shape
    held_out = np.mean([metrics.dice(final.labels[i] == 1, truth[i] == 1) for i in range(10, 14)])
    assert held_out > 0.9
    assert {"val_dice", "val_iou", "val_hd95"} <= set(final.losses)
    assert 0.0 <= final.losses["val_dice"] <= 1.0


def test_multiclass_values_are_kept_and_odd_sizes_work():
    image, truth = disc_stack(10, size=31, seed=1, values=(0, 3, 7))
    labels = truth.copy()
    labels[8:] = -1
    labels[0, :5] = -1  # unlabelled pixels inside an annotated slice are ignored
    run = Training(get_method("unet"), image[:, :, :29], {**TINY, "max_iterations": 150}, labels=labels[:, :, :29],
                   device="cpu", threads=1, max_fps=0)
    final = run.run().labels
    assert final.shape == (10, 31, 29) and set(np.unique(final)) <= {0, 3, 7}
    for value in (3, 7):
        assert metrics.dice(final[8:] == value, truth[8:, :, :29] == value) > 0.8


def test_saved_weights_reload_to_the_same_predictions():
    image, truth = disc_stack(8)
    run = Training(get_method("unet"), image, {**TINY, "max_iterations": 20}, labels=truth, device="cpu",
                   threads=1, max_fps=0)
    run.run()
    model = load(run.params, run.trainer.state_dict(), "cpu")
    plane = image[3][..., None]
    assert np.array_equal(model.predict(plane), run.trainer.predict(plane))


@pytest.mark.parametrize("method", ["unet", "lgan"])
def test_tiny_patches_grow_to_the_smallest_grid_the_networks_take(method):
    # a 1-pixel crop would reach the critic's strided 4x4 convolutions (and the U-Net's bottom) as 1x1
    image, truth = disc_stack(3)
    run = Training(get_method(method), image, {**TINY, "patch": 1, "max_iterations": 3, "batch_norm": False},
                   labels=truth, device="cpu", threads=1, max_fps=0)
    assert run.run().labels.shape == truth.shape


def test_a_model_keeps_its_training_resolution(tmp_path):
    from napari_selfseg import api

    image, truth = disc_stack(8, size=40)
    run = api.train(list(image), "unet", labels=list(truth * 255), max_iterations=10, max_side=16, depth=2,
                    base_channels=4, device="cpu", threads=1)
    path = api.save_model(run, tmp_path / "disc.model")
    model = api.load_model(path, device="cpu")
    assert model.predictor.max_side == 16  # a GPU would also predict at the 16 pixels it was trained at
    assert np.array_equal(model.predict(image[0]), run.predict(image[0]))
    assert set(np.unique(model.predict(image[0]))) <= {0, 1}


def test_cycle_gan_uses_unlabelled_slices_and_trains():
    image, truth = disc_stack(8, size=24)
    labels = truth.copy()
    labels[4:] = -1
    ctx = context("cycle", image, labels, max_iterations=30)
    trainer = get_method("cycle").build(ctx)
    assert set(trainer.data.unlabelled) == {4, 5, 6, 7} and set(trainer.data.unlabelled) <= set(trainer.pool)
    assert not set(trainer.data.val) & set(trainer.pool)  # validation slices are never trained on
    for _ in range(30):
        losses = trainer.step()
    assert {"cycle", "adversarial", "val_dice"} <= set(losses) and np.isfinite(float(losses["cycle"]))
    assert trainer.finish().shape == truth.shape


def test_validation_split_keeps_a_slice_to_train_on():
    train, val = data.split(np.arange(5), 0.2, 0)
    assert len(val) == 1 and len(train) == 4 and not set(train) & set(val)
    train, val = data.split(np.arange(2), 0.9, 0)
    assert len(train) == 1 and len(val) == 1
    train, val = data.split(np.array([3]), 0.2, 0)
    assert list(train) == list(val) == [3]  # a single labelled slice validates on itself


def test_ground_truth_with_one_class_is_refused():
    image, truth = disc_stack(4)
    with pytest.raises(ValueError, match="class"):
        get_method("unet").build(context("unet", image, np.zeros_like(truth)))


def test_hounsfield_window_and_reduced_training_size():
    from napari_selfseg.params import make_params

    spec = get_method("unet")
    p = make_params(spec.params, {"intensity": "hounsfield", "hu_low": -1000, "hu_high": 400})
    ct = np.tile(np.array([[-1000, -300], [400, 2000]], dtype=np.int16), (1, 8, 8))  # 16x16: the smallest slice
    assert np.allclose(spec.prepare(ct, p, None)[0, :2, :2, 0], [[0, 0.5], [1, 1]])
    p = make_params(spec.params, {"max_side": 128})
    assert data.training_size((512, 256), data.effective_max_side(p, torch.device("cpu"))) == (128, 64)
    assert data.effective_max_side(p, torch.device("cuda")) == 0  # full resolution on a GPU


def test_presets():
    from napari_selfseg.api import resolve_params

    for method in ("unet", "lgan", "cycle"):
        paper = resolve_params(method, "paper")
        assert (paper.base_channels, paper.depth, paper.max_side) == (64, 4, 0)
    assert resolve_params("lgan", "paper").critic == "gradient-penalty"
    assert resolve_params("cycle", "paper").cycle_weight == 10.0
