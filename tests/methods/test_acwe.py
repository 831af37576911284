import dataclasses

import numpy as np
import pytest
import torch

from napari_selfseg import segment
from napari_selfseg.api import resolve_params, train, training
from napari_selfseg.engine import TrainContext
from napari_selfseg.imageprep import InputError
from napari_selfseg.losses import active_contour_label_loss, acwe_loss, heaviside
from napari_selfseg.methods.acwe import ACWEParams, ACWETrainer, labelled_slices, load, prepare
from napari_selfseg.metrics import dice
from napari_selfseg.params import make_params

# small and quick: the paper's network shape with fewer filters, trained at the stack's own size
FAST = dict(channels=8, train_size=32, iterations=40, finetune_iterations=30, learning_rate=0.01, threads=1)


def disc_stack(n: int = 6, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(n, size, size)`` float32 stack of a bright disc (radius and centre vary) on a dark background
    with noise, and the discs as bool masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = []
    for _ in range(n):
        cy, cx = rng.uniform(0.4, 0.6, 2) * size
        r = rng.uniform(0.2, 0.3) * size
        masks.append((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
    masks = np.stack(masks)
    image = np.where(masks, 0.75, 0.25) + rng.normal(0, 0.05, masks.shape)
    return image.astype(np.float32), masks


def best_dice(labels: np.ndarray, truth: np.ndarray) -> float:
    """Dice of the better of the two classes of a binary map (mode 1 does not know which is the object)."""
    return max(dice(labels == 1, truth), dice(labels == 0, truth))


def test_heaviside_is_half_on_the_contour_and_monotone():
    phi = torch.tensor([-5.0, -1.0, 0.0, 1.0, 5.0])
    for kind in ("atan", "sigmoid"):
        h = heaviside(phi, 1.0, kind)
        assert h[2] == pytest.approx(0.5)
        assert torch.all(h[1:] > h[:-1]) and torch.all((h > 0) & (h < 1))


def test_acwe_loss_is_lowest_when_the_mask_matches_the_two_regions():
    image, masks = disc_stack(2)
    g = torch.from_numpy(image)[:, None]
    truth = torch.from_numpy(masks)[:, None].float()
    shifted = torch.roll(truth, 5, dims=-1)
    half = torch.full_like(truth, 0.5)
    losses = [acwe_loss(u, g, nu=0.004, lambda1=1, lambda2=1, mu=0.01)[0].item() for u in (truth, shifted, half)]
    assert losses[0] < losses[1] < losses[2]
    # and descending it from a random start (a flat one is a stationary point) finds the discs
    phi = (0.1 * torch.randn(g.shape, generator=torch.Generator().manual_seed(0))).requires_grad_()
    opt = torch.optim.Adam([phi], lr=0.5)
    for _ in range(30):
        loss, _ = acwe_loss(heaviside(phi), g, 0.0, 1.0, 1.0, 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < losses[2]
    assert best_dice((phi > 0).numpy()[:, 0].astype(int), masks) > 0.95


def test_label_loss_is_zero_at_the_ground_truth_and_grows_away_from_it():
    _, masks = disc_stack(2)
    v = torch.from_numpy(masks)[:, None].float()
    assert active_contour_label_loss(v, v, length_weight=0.0).item() == 0.0  # region terms: u = v
    for wrong in (1 - v, torch.roll(v, 3, dims=-1), torch.full_like(v, 0.5)):
        assert active_contour_label_loss(wrong, v, length_weight=0.0).item() > 0.0
    # with its length term, the ground truth still beats a shifted or a ragged copy
    noisy = (v + (torch.rand_like(v) < 0.1).float()).clamp(0, 1)
    at_truth = active_contour_label_loss(v, v, length_weight=1.0).item()
    assert at_truth < active_contour_label_loss(torch.roll(v, 3, dims=-1), v, length_weight=1.0).item()
    assert at_truth < active_contour_label_loss(noisy, v, length_weight=1.0).item()
    # unannotated pixels do not count
    mask = torch.zeros_like(v, dtype=torch.bool)
    mask[0] = True
    assert active_contour_label_loss(torch.cat([v[:1], 1 - v[1:]]), v, mask, length_weight=0.0).item() == 0.0


def test_intensity_handling():
    hu = np.array([[[-2000, -1000], [-300, 400]], [[1000, 0], [-1000, -1000]]], dtype=np.int16)
    p = make_params(ACWEParams, {"intensity": "ct-window", "window_low": -1000, "window_high": 400})
    out = prepare(hu, p)
    assert out.shape == (2, 2, 2, 1) and out.dtype == np.float32
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 1, 0] == 0 and out[0, 1, 1, 0] == 1 and out[0, 1, 0, 0] == 0.5
    mm = prepare(hu, make_params(ACWEParams, {"intensity": "min-max"}))
    assert mm.min() == 0 and mm.max() == 1
    plane = prepare(hu[0], make_params(ACWEParams, {}))  # one plane: a stack of one
    assert plane.shape == (1, 2, 2, 1)
    rgb = prepare(np.zeros((3, 4, 4, 3), np.uint8), make_params(ACWEParams, {}), rgb=True)
    assert rgb.shape == (3, 4, 4, 3)
    with pytest.raises(InputError, match="window"):
        prepare(hu, make_params(ACWEParams, {"intensity": "ct-window", "window_low": 10, "window_high": 0}))


def test_mode1_segments_an_unseen_stack_and_saves_a_model():
    image, masks = disc_stack(6)
    run = train(image, "acwe", seed=0, **FAST)
    final = run.predict(image)
    assert final.shape == masks.shape and set(np.unique(final)) <= {0, 1}
    assert np.mean([best_dice(f, m) for f, m in zip(final, masks)]) > 0.9
    # the bundle's tensors rebuild the same predictor
    state = run.trainer.state_dict()
    model = load(run.params, state, torch.device("cpu"))
    planes = prepare(image, run.params)
    for plane in planes[:2]:
        assert np.array_equal(model.predict(plane), run.trainer.predict(plane))
    unseen, unseen_masks = disc_stack(3, seed=5)
    out = run.predict(unseen)
    assert np.mean([best_dice(f, m) for f, m in zip(out, unseen_masks)]) > 0.85


@pytest.mark.parametrize("foreground", ["darker", "brighter"])
def test_mode1_labels_the_chosen_side(foreground):
    image, masks = disc_stack(4)
    final = train(image, "acwe", seed=0, foreground=foreground, **FAST).predict(image)
    object_side = masks if foreground == "brighter" else ~masks  # the discs are the bright region
    assert np.mean([dice(f == 1, m) for f, m in zip(final, object_side)]) > 0.9


def test_training_streams_the_displayed_slice_and_finishes_the_stack():
    image, masks = disc_stack(4)
    run = training(image, "acwe", max_fps=1000, preview=2, seed=0, **FAST)
    frames = list(run.snapshots())
    assert frames[0].labels.shape == masks.shape[1:] and frames[0].index == (2,)
    assert frames[-1].final and frames[-1].labels.shape == masks.shape
    assert frames[-1].iteration == FAST["iterations"]
    assert {"acwe", "area", "inside", "outside"} <= set(frames[-1].losses)


@pytest.mark.parametrize("mode", [2, 4])
def test_labelled_modes_learn_which_side_is_the_object(mode):
    image, masks = disc_stack(6)
    # the user labels the dark background as the object: unsupervised ACWE alone cannot know that
    labels = np.full(masks.shape, -1, np.int64)
    labels[:2] = (~masks[:2]).astype(np.int64)
    run = train(image, "acwe", labels=labels, mode=mode, seed=0, **FAST)
    out = run.predict(image[2:])
    assert np.mean([dice(o == 1, ~m) for o, m in zip(out, masks[2:])]) > 0.9


def test_labelled_modes_need_labels_and_find_the_labelled_slices():
    image, masks = disc_stack(3)
    with pytest.raises(InputError, match="labelled slices"):
        train(image, "acwe", mode=3, **FAST)
    labels = np.full(masks.shape, -1)
    labels[1, :4, :4] = 0
    assert labelled_slices(labels).tolist() == [1]
    assert labelled_slices(None).tolist() == []


def test_single_plane_and_paper_preset():
    image, masks = disc_stack(1)
    labels = segment(image[0], "acwe", seed=0, **FAST)
    assert labels.shape == masks.shape[1:]
    p = resolve_params("acwe", "paper")
    assert (p.nu, p.mu, p.lambda1, p.lambda2, p.alpha, p.channels, p.recurrent_layers, p.time_steps) == \
        (0.004, 0.0, 1.0, 1.0, 0.4, 16, 3, 3)


def test_trainer_on_a_context_built_by_hand():
    image, _ = disc_stack(3)
    params = make_params(ACWEParams, {k: v for k, v in FAST.items() if k != "threads"})
    ctx = TrainContext(image[..., None], params, torch.device("cpu"), 0, preview=1)
    trainer = ACWETrainer(ctx)
    losses = trainer.step()
    assert torch.isfinite(losses["acwe"])
    assert trainer.current().shape == (32, 32)
    assert trainer.finish().shape == (3, 32, 32)


def test_label_loss_runs_on_the_upsampled_output_with_its_own_heaviside():
    image, masks = disc_stack(3, size=64)
    labels = np.full(masks.shape, -1, np.int64)
    labels[0] = masks[0]
    params = make_params(ACWEParams, {**{k: v for k, v in FAST.items() if k != "threads"}, "mode": 2,
                                      "label_size": 64, "label_heaviside": "sigmoid", "label_epsilon": 0.3})
    trainer = ACWETrainer(TrainContext(image[..., None], params, torch.device("cpu"), 0, labels=labels))
    assert trainer.x.shape[-2:] == (32, 32) and trainer.target.shape[-2:] == (64, 64)  # labels at 64 px
    assert set(torch.unique(trainer.target).tolist()) <= {0.0, 1.0}  # full resolution: no fractional pixels
    phi = torch.randn(1, 1, 32, 32)
    up = torch.nn.functional.interpolate(phi, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(trainer._label_u(phi), torch.sigmoid(up / 0.3))
    # label_size 0 (or below the training grid): the labels are area-averaged to the training grid
    coarse = ACWETrainer(TrainContext(image[..., None], dataclasses.replace(params, label_size=0),
                                      torch.device("cpu"), 0, labels=labels))
    assert coarse.target.shape[-2:] == (32, 32)
    assert torch.allclose(coarse._label_u(phi), torch.sigmoid(phi / 0.3))


@pytest.mark.parametrize("mode", [2, 4])
def test_labelled_phase_learning_rate_and_its_decay(mode):
    image, masks = disc_stack(3)
    labels = np.full(masks.shape, -1, np.int64)
    labels[0] = masks[0]
    settings = {**{k: v for k, v in FAST.items() if k != "threads"}, "mode": mode, "iterations": 4,
                "finetune_iterations": 4, "learning_rate": 0.002, "finetune_learning_rate": 0.02}
    for decay in (True, False):
        params = make_params(ACWEParams, {**settings, "decay": decay})
        trainer = ACWETrainer(TrainContext(image[..., None], params, torch.device("cpu"), 0, labels=labels))
        rates = []
        for _ in range(8):
            trainer.step()
            rates.append(trainer.optimiser.param_groups[0]["lr"])
        if mode == 2:  # 4 unsupervised steps at learning_rate, then 4 fine-tuning steps at finetune_learning_rate
            assert rates[:4] == [0.002] * 4
            expected = [0.02, 0.015, 0.01, 0.005] if decay else [0.02] * 4
            assert rates[4:] == pytest.approx(expected)
        else:  # mode 4: all 8 joint steps have labels
            expected = [0.02 * (1 - i / 8) for i in range(8)] if decay else [0.02] * 8
            assert rates == pytest.approx(expected)
