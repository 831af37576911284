"""The engine's contract, checked with a tiny fake method whose steps record what they saw."""
import threading
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from napari_selfseg.engine import Method, StopRules, Training, resolve_device
from napari_selfseg.imageprep import InputError
from napari_selfseg.params import param


@dataclass
class CountParams:
    weight: float = param(1.0, low=0.0, high=10.0, help="recorded at each step")
    clusters: int = param(4, low=1, high=8, live=False, help="clusters at start")


class CountingTrainer:
    """Splits the image into vertical stripes, one fewer every 5 steps; records the weight per step."""

    done = False

    def __init__(self, ctx):
        self.ctx = ctx
        self.seen: list[float] = []
        self.steps = 0
        self.gate: threading.Event | None = None

    def step(self):
        if self.gate is not None:
            self.gate.wait(5)
        self.seen.append(self.ctx.params.weight)
        self.steps += 1
        return {"loss": torch.tensor(1.0 / self.steps)}

    def current(self):
        k = max(1, self.ctx.params.clusters - self.steps // 5)
        w = self.ctx.image.shape[1]
        return np.repeat((np.arange(w) * k // w)[None, :], self.ctx.image.shape[0], axis=0)

    def finish(self):
        return self.current()


def make_training(**kwargs):
    trainers = []

    def build(ctx):
        trainers.append(CountingTrainer(ctx))
        return trainers[-1]

    method = Method(id="count", title="Count", params=CountParams, build=build,
                    stop_rules=lambda p: StopRules(max_iterations=50))
    image = np.random.default_rng(0).random((16, 20))
    return Training(method, image, kwargs.pop("params", None), device="cpu", **kwargs), trainers


def test_parameter_change_is_used_by_the_next_step():
    run, trainers = make_training(max_fps=1000)
    frames = run.snapshots()
    first = next(frames)
    run.update(weight=7.5)
    second = next(frames)
    seen = trainers[0].seen
    assert seen[first.iteration - 1] == 1.0
    assert seen[first.iteration] == 7.5  # the very next step
    assert second.params["weight"] == 7.5


def test_update_rejects_out_of_range_and_fixed_values_are_validated():
    run, _ = make_training()
    with pytest.raises(ValueError, match="maximum"):
        run.update(weight=11)


def test_stop_rules_max_iterations_and_min_clusters():
    run, _ = make_training(stop_rules=StopRules(max_iterations=7))
    *_, final = run.snapshots()
    assert final.final and final.iteration == 7 and final.stop_reason == "max iterations"
    run, _ = make_training(stop_rules=StopRules(max_iterations=100, min_clusters=2))
    *_, final = run.snapshots()
    assert final.stop_reason == "min clusters" and final.n_clusters == 2 and final.iteration == 10


def test_convergence_rule_stops_when_labels_stop_changing():
    run, _ = make_training(stop_rules=StopRules(max_iterations=100, patience=3), params={"clusters": 1})
    *_, final = run.snapshots()
    assert final.stop_reason == "converged" and final.iteration == 4


def test_stop_yields_a_final_frame_and_cancel_does_not():
    run, _ = make_training(max_fps=1000)
    frames = run.snapshots()
    next(frames)
    run.stop()
    rest = list(frames)
    assert len(rest) == 1 and rest[0].final and rest[0].stop_reason == "stopped"
    run, _ = make_training(max_fps=1000)
    frames = run.snapshots()
    next(frames)
    run.cancel()
    assert list(frames) == [] and run.stop_reason == "cancelled"


def test_pause_blocks_steps_until_resume():
    run, trainers = make_training(max_fps=1000)
    frames = run.snapshots()
    next(frames)
    run.pause()
    got = []
    thread = threading.Thread(target=lambda: got.append(next(frames)))
    thread.start()
    thread.join(0.3)
    assert thread.is_alive() and run.paused  # no step while paused
    steps_while_paused = trainers[0].steps
    run.resume()
    thread.join(5)
    assert not thread.is_alive() and got and trainers[0].steps > steps_while_paused


def test_frames_are_throttled_and_labels_are_image_shaped():
    run, _ = make_training(max_fps=0)  # only the final frame
    frames = list(run.snapshots())
    assert len(frames) == 1 and frames[0].labels.shape == (16, 20) and frames[0].labels.min() >= 1


def test_time_budget():
    run, _ = make_training(stop_rules=StopRules(max_iterations=None, max_seconds=0.05))
    *_, final = run.snapshots()
    assert final.stop_reason == "time budget"


def test_bad_inputs_are_clear():
    with pytest.raises(InputError, match="NaN"):
        Training(make_training()[0].method, np.full((8, 8), np.nan))
    with pytest.raises(InputError, match="2D image"):
        Training(make_training()[0].method, np.zeros((2, 3, 4, 5)))
    with pytest.raises(InputError, match="too small"):
        Training(make_training()[0].method, np.zeros((1, 5)))
    with pytest.raises(InputError, match="scribbles"):
        Training(make_training()[0].method, np.zeros((8, 8)), scribbles=np.zeros((4, 4)))


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            resolve_device("cuda")


def test_closing_the_generator_counts_as_cancelled():
    run, _ = make_training(max_fps=1000)
    frames = run.snapshots()
    next(frames)
    frames.close()
    assert run.stop_reason == "cancelled"


def test_run_returns_the_final_frame_and_refuses_a_cancelled_run():
    run, _ = make_training(stop_rules=StopRules(max_iterations=3))
    assert run.run().final
    run, _ = make_training()
    run.cancel()
    with pytest.raises(RuntimeError, match="cancelled"):
        run.run()


def test_min_clusters_slider_acts_on_a_running_training(regions):
    from napari_selfseg import training

    image, _ = regions
    run = training(image, "feature-clustering", channels=8, min_labels=1, max_iterations=2000, max_fps=1e9)
    frames = run.snapshots()
    next(frames)
    run.update(min_labels=100)  # more clusters than exist: the next check stops the run
    last = list(frames)[-1]
    assert last.final and last.stop_reason == "min clusters" and last.iteration < 50


def test_warm_up_draws_no_random_numbers_and_runs_once(monkeypatch):
    """The panel warms torch up in a background thread: it must not shift a seeded training's initialisation."""
    from napari_selfseg import engine

    monkeypatch.setattr(engine, "_warm", threading.Event())  # as in a fresh process
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    thread = engine.start_warm_up()
    thread.join(30)
    assert torch.equal(torch.rand(4), expected)
    assert engine.start_warm_up() is None  # warmed: later panels start no thread


def test_preset_of_names_the_preset_a_parameter_set_equals():
    from napari_selfseg.api import get_method, resolve_params

    method = get_method("feature-clustering")
    assert method.preset_of(resolve_params("feature-clustering")) == "interactive"  # the defaults
    assert method.preset_of(resolve_params("feature-clustering", "paper")) == "paper"
    assert method.preset_of(resolve_params("feature-clustering", "paper", {"mu": 3.0})) is None
