"""Bad inputs, headless: every kind in docs/bad-inputs.md, through the API every method shares.

Each bad input ends in labels of the right shape or in a specific exception (``InputError`` for data,
``ValueError`` for parameters) whose message says what to do; never another exception, a materialised
huge array or a half-written file. The table of kinds lives here (``BAD_IMAGES``) and is reused by the
panel tests (tests/_qt/test_bad_inputs_panel.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch

from napari_selfseg import api
from napari_selfseg.bundle import load_model, save_model
from napari_selfseg.cli import main as cli
from napari_selfseg.engine import StopRules, Training
from napari_selfseg.imageprep import InputError, prepare_image, prepare_stack
from napari_selfseg.io import write_json, write_labels
from napari_selfseg.methods import get_method, list_methods

# Cheapest settings of each method: a few steps on tiny inputs (the outcome, not the quality, is tested).
FAST = {
    "feature-clustering": dict(channels=8, max_iterations=3),
    "sgscn": dict(channels=8, max_iterations=3, train_pixels=0),
    "acwe": dict(channels=4, train_size=16, iterations=3, finetune_iterations=0, batch_size=1),
    "deep-clustering-3d": dict(patch_size=12, stride=2, n_patches=50, channels=4, hidden=16, features=16,
                               period_iterations=1, final_iterations=1, batch_size=8, k=2, clusters=3),
    "unet": dict(depth=2, base_channels=4, batch_size=2, max_side=0, max_iterations=3),
    "lgan": dict(depth=2, base_channels=4, batch_size=2, max_side=0, max_iterations=3, critic_channels=4),
    "cycle": dict(depth=2, base_channels=4, batch_size=2, max_side=0, max_iterations=3, critic_channels=4),
    "kmeans": dict(n_init=1, sample=1000),
    "multi-otsu": {},
    "chan-vese": dict(iterations=10),
}
METHODS = list_methods()


def fast(method: str) -> dict:
    """FAST settings of ``method`` (empty for a method registered after this table was written)."""
    return dict(FAST.get(method, {}))


def base_image(method: str, size: int = 20, seed: int = 0) -> np.ndarray:
    """A float32 input of the kind ``method`` trains on: ``(Y, X)`` plane, ``(3, Y, X)`` stack or
    ``(16, Y, X)`` volume, with a bright square (so two classes exist) plus noise."""
    inputs = get_method(method).inputs
    lead = {"plane": (), "stack": (3,), "volume": (16,)}[inputs]
    rng = np.random.default_rng(seed)
    image = rng.normal(0.3, 0.05, lead + (size, size))
    image[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] += 0.5
    return image.astype(np.float32)


def truth_for(image: np.ndarray) -> np.ndarray:
    """Ground truth of a :func:`base_image`-like array (its bright square is class 1)."""
    gray = np.asarray(image, dtype=np.float64)
    gray = (gray - gray.min()) / (np.ptp(gray) or 1.0)
    return (gray > 0.5).astype(np.int64)


def run_segment(method: str, image, truth_of=None, **kwargs) -> np.ndarray:
    """``api.segment`` with the method's FAST settings, on the CPU; methods that need ground truth get
    that of ``truth_of`` (default ``image``; give the gray original of an RGB(A) image)."""
    if get_method(method).ground_truth == "required" and "labels" not in kwargs:
        kwargs["labels"] = truth_for(image if truth_of is None else truth_of)
    return api.segment(image, method, device="cpu", threads=1, **{**fast(method), **kwargs})


class LazyHuge:
    """A lazy array (like dask or zarr) of a shape no machine holds; loading it fails the test."""

    def __init__(self, shape, dtype=np.uint16):
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)

    def __array__(self, *args, **kwargs):
        raise AssertionError(f"a {self.shape} array was loaded into memory before its size was checked")


# name -> (build from the base image, expected: "labels" or a substring of the InputError message)
BAD_IMAGES = {
    "NaN values": (lambda b: _with(b, np.nan), "NaN or infinite"),
    "inf values": (lambda b: _with(b, np.inf), "NaN or infinite"),
    "1x1 image": (lambda b: b[..., :1, :1], "too small"),
    "1xN image": (lambda b: b[..., :1, :], "too small"),
    "empty (0 pixels)": (lambda b: b[..., :0, :], "too small"),
    "5D data": (lambda b: np.stack([np.stack([b] * 2)] * 2)[(None,) * max(0, 3 - b.ndim)], r"got (an image of )?shape"),
    "complex values": (lambda b: b.astype(np.complex64), "complex"),
    "text (object) data": (lambda b: b.astype(object), "cannot segment"),
    "RGBA": (lambda b: (np.stack([b, b, b, np.ones_like(b)], -1).clip(0, 1) * 255).astype(np.uint8), "labels"),
    "bool": (lambda b: b > 0.5, "labels"),
    "int64": (lambda b: (b * 1e6).astype(np.int64), "labels"),
    "uint16 microscopy": (lambda b: (b * 3000 + 100).astype(np.uint16), "labels"),
    "float CT in Hounsfield units": (lambda b: (b * 2000 - 1000).astype(np.float32), "labels"),
    "float64 beyond float32 range": (lambda b: b.astype(np.float64) * 1e300, "labels"),
    "dask array": (lambda b: __import__("dask.array").array.from_array(b, chunks=7), "labels"),
}
# (method, kind) -> the InputError message where refusing is the right answer for that method
REFUSED = {("multi-otsu", "bool"): "cannot be thresholded in 3 classes"}
# a constant image may be refused (nothing to separate) but only with an InputError
CONSTANT = {"constant image": lambda b: np.full_like(b, 0.3), "all-zero uint8": lambda b: np.zeros(b.shape, np.uint8)}


def _with(image: np.ndarray, value: float) -> np.ndarray:
    out = image.copy()
    out[..., 1, 1] = value
    return out


def expected_shape(method: str, image) -> tuple[int, ...]:
    shape = tuple(np.shape(image))
    return shape[:-1] if len(shape) == np.ndim(base_image(method)) + 1 else shape


@pytest.mark.parametrize("kind", list(BAD_IMAGES))
@pytest.mark.parametrize("method", METHODS)
def test_bad_image_gives_labels_or_a_clear_message(method, kind):
    build, expected = BAD_IMAGES[kind]
    base = base_image(method, size=20)
    image = build(base)
    expected = REFUSED.get((method, kind), expected)
    if expected == "labels":
        labels = run_segment(method, image, truth_of=base)
        assert labels.shape == expected_shape(method, image) and labels.dtype.kind == "u"
    else:
        with pytest.raises(InputError, match=expected):
            run_segment(method, image, truth_of=base)




SUPERVISED = [m for m in METHODS if m in ("unet", "lgan", "cycle")]


@pytest.mark.parametrize("shape", [(3, 12, 12), (3, 5, 40), (1, 2, 5), (1, 2, 2), (2, 15, 16)])
@pytest.mark.parametrize("method", SUPERVISED)
def test_supervised_methods_refuse_slices_under_16_pixels(method, shape):
    """Slices under 16x16 (methods/supervised/data.MIN_SIDE) are refused before a network is built (they
    crashed the critics' stride-2 convolutions and batch norm at the U-Net's bottom level)."""
    image = base_image(method, size=40)[:, : shape[1], : shape[2]][: shape[0]]
    with pytest.raises(InputError, match="too small for these networks.*16x16"):
        run_segment(method, image)


@pytest.mark.parametrize("method", SUPERVISED)
def test_supervised_methods_train_on_16_pixel_slices(method):
    image = base_image(method, size=16)
    assert run_segment(method, image).shape == image.shape


# -- found by the fuzz and fixed: regression tests -------------------------------------------------
def test_lgan_trains_on_a_long_thin_slice():
    image = base_image("lgan", size=256)[:2, :16, :]  # 16 x 256: max_side=128 would make it 8 x 128
    assert run_segment("lgan", image, max_side=128).shape == image.shape


@pytest.mark.parametrize("method", SUPERVISED)
def test_one_16_pixel_training_slice_at_the_default_depth(method):
    image = base_image(method, size=16)[:1]  # trained on a 32 x 32 grid: the U-Net's bottom level 2 x 2
    assert run_segment(method, image, depth=4, max_iterations=1).shape == image.shape


def test_deep_clustering_3d_on_a_single_2x2_slice_says_why_not():
    image = base_image("deep-clustering-3d", size=2)[:1]
    with pytest.raises(InputError, match="block centre lies inside"):
        run_segment("deep-clustering-3d", image)


def test_segment_a_plane_with_its_ground_truth_for_a_stack_method():
    image = base_image("unet")[0]
    assert run_segment("unet", image).shape == image.shape  # run_segment passes the plane's own truth


@pytest.mark.parametrize("kind", list(CONSTANT))
@pytest.mark.parametrize("method", METHODS)
def test_constant_image_gives_labels_or_a_clear_message(method, kind):
    image = CONSTANT[kind](base_image(method, size=20))
    try:
        labels = run_segment(method, image)
    except InputError as err:
        assert len(str(err)) > 20  # a sentence, not a bare exception
    else:
        assert labels.shape == image.shape




@pytest.mark.parametrize("method", METHODS)
def test_huge_lazy_image_is_refused_before_it_is_loaded(method):
    inputs = get_method(method).inputs
    shape = (400_000, 400_000) if inputs == "plane" else (4000, 40_000, 40_000)
    with pytest.raises(InputError, match="TiB"):
        Training(get_method(method), LazyHuge(shape), fast(method), device="cpu")


def test_huge_image_guard_reads_the_free_memory(monkeypatch):
    from napari_selfseg import imageprep

    monkeypatch.setattr(imageprep, "available_memory", lambda: 10_000)
    with pytest.raises(InputError, match="crop it"):
        prepare_image(np.broadcast_to(np.uint8(1), (100, 100)))  # 100 * 100 * 9 B > 10 kB
    monkeypatch.setattr(imageprep, "available_memory", lambda: 10**9)
    assert prepare_image(np.broadcast_to(np.uint8(1), (100, 100))).shape == (100, 100, 1)


def test_4d_time_series_is_refused_with_a_hint():
    with pytest.raises(InputError, match="pick one"):
        prepare_image(np.zeros((2, 3, 12, 12), np.float32))
    with pytest.raises(InputError, match="time point"):
        prepare_stack(np.zeros((2, 3, 12, 12), np.float32))


def test_volume_method_given_a_plane_says_so():
    with pytest.raises(InputError, match="3D volumes"):
        run_segment("deep-clustering-3d", np.random.default_rng(0).random((20, 20)))


# -- ground truth and scribbles --------------------------------------------------------------------
NEEDS_TRUTH = [m for m in METHODS if get_method(m).ground_truth == "required"]
TAKES_TRUTH = [m for m in METHODS if get_method(m).ground_truth != "none"]


@pytest.mark.parametrize("method", NEEDS_TRUTH)
@pytest.mark.parametrize("labels", ["unlabelled", "all background"])
def test_empty_ground_truth_is_refused(method, labels):
    image = base_image(method)
    truth = np.full(image.shape, -1 if labels == "unlabelled" else 0, np.int64)
    with pytest.raises(InputError, match="ground truth|annotated|Labels"):
        api.train(image, method, labels=truth, device="cpu", **fast(method))


@pytest.mark.parametrize("method", TAKES_TRUTH)
def test_ground_truth_of_another_shape_is_refused(method):
    image = base_image(method)
    with pytest.raises(InputError, match="do not match|does not match"):
        Training(get_method(method), image, fast(method), labels=np.zeros((5, 7, 9), np.int64), device="cpu")


def test_float_ground_truth_is_refused():
    image = base_image("unet")
    with pytest.raises(InputError, match="integers"):
        Training(get_method("unet"), image, fast("unet"), labels=truth_for(image) + 0.5, device="cpu")


def test_empty_scribbles_are_ignored_and_misshaped_ones_refused():
    image = base_image("feature-clustering")
    labels = run_segment("feature-clustering", image, scribbles=np.zeros(image.shape, np.uint8))
    assert labels.shape == image.shape
    with pytest.raises(InputError, match="scribbles"):
        run_segment("feature-clustering", image, scribbles=np.zeros((3, 3), np.uint8))


# -- parameters --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_parameter_outside_its_range_names_the_bound(method):
    from napari_selfseg.params import param_specs

    spec = next(s for s in param_specs(get_method(method).params) if s.high is not None)
    with pytest.raises(ValueError, match="above its maximum"):
        api.resolve_params(method, params={spec.name: spec.high + 1})
    with pytest.raises(ValueError, match="unknown parameter"):
        api.resolve_params(method, params={"no_such_knob": 1})
    if spec.type in (int, float):
        with pytest.raises(ValueError, match="number|integer"):
            api.resolve_params(method, params={spec.name: "a lot"})


def test_cuda_asked_for_without_a_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="no CUDA GPU"):
        Training(get_method("kmeans"), base_image("kmeans"), device="cuda")


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match="known: feature-clustering"):
        api.segment(base_image("kmeans"), "no-such-method")


# -- model files -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A small feature-clustering model trained on an RGB image, saved once for this module."""
    rng = np.random.default_rng(0)
    image = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
    run = api.train(image, "feature-clustering", device="cpu", threads=1, **fast("feature-clustering"))
    return save_model(run, tmp_path_factory.mktemp("model") / "fc.safetensors")


@pytest.mark.parametrize("content", ["junk", "truncated", "foreign safetensors", "empty"])
def test_corrupt_or_foreign_model_file_is_refused(bundle, tmp_path, content):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    if content == "junk":
        bad.write_bytes(b"certainly not a model")
    elif content == "truncated":
        bad.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    elif content == "foreign safetensors":
        save_file({"w": torch.zeros(3)}, str(bad))
    else:
        bad.write_bytes(b"")
    with pytest.raises(InputError, match="not a napari-selfseg model"):
        load_model(bad, "cpu")
    assert cli(["apply", "--model", str(bad), str(bundle), "-o", str(tmp_path / "out")]) == 2


def test_model_applied_to_the_wrong_kind_of_image_says_why(bundle):
    model = load_model(bundle, "cpu")
    with pytest.raises(InputError, match="trained on RGB"):
        model.predict(np.zeros((16, 16), np.float32))


def _rewrite_record(src: Path, dst: Path, **changes) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        record = json.loads(f.metadata()["napari_selfseg"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for key, value in changes.items():
        record[key] = value(record[key]) if callable(value) else value
    save_file(tensors, str(dst), metadata={"napari_selfseg": json.dumps(record)})


def test_model_of_an_unknown_method_is_refused(bundle, tmp_path):
    _rewrite_record(bundle, tmp_path / "m.safetensors", method="from-the-future")
    with pytest.raises(InputError, match="unknown method"):
        load_model(tmp_path / "m.safetensors", "cpu")


def test_model_with_parameters_out_of_range_is_refused_as_bad_input(bundle, tmp_path):
    _rewrite_record(bundle, tmp_path / "m.safetensors", params=lambda p: {**p, "channels": 10**6})
    with pytest.raises(InputError, match="m.safetensors"):
        load_model(tmp_path / "m.safetensors", "cpu")


# -- files in a batch, and saving ------------------------------------------------------------------
def test_unreadable_files_in_a_batch_fail_alone(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    iio.imwrite(folder / "good.png", (np.random.default_rng(0).random((20, 20, 3)) * 255).astype(np.uint8))
    (folder / "truncated.png").write_bytes((folder / "good.png").read_bytes()[:60])
    (folder / "text.tif").write_text("not a tiff")
    (folder / "empty.png").write_bytes(b"")
    iio.imwrite(folder / "tiny.png", np.zeros((1, 1), np.uint8))
    out = tmp_path / "out"
    code = cli(["segment", str(folder), "-o", str(out), "--method", "kmeans", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["good.json", "good.tif"]  # nothing half-written
    for name in ("truncated.png", "text.tif", "empty.png", "tiny.png"):
        assert name in err
    assert "cannot read" in err and "too small" in err


class Crash(Exception):
    pass


@pytest.mark.parametrize("what", ["labels", "sidecar", "model"])
def test_crash_mid_save_leaves_the_previous_file(tmp_path, monkeypatch, bundle, what):
    import safetensors.torch

    target = {"labels": tmp_path / "l.tif", "sidecar": tmp_path / "l.json", "model": tmp_path / "m.safetensors"}[what]
    if what == "labels":
        write_labels(target, np.ones((8, 8), np.uint8))
    elif what == "sidecar":
        write_json(target, {"version": 1})
    else:
        target.write_bytes(bundle.read_bytes())
    before = target.read_bytes()

    def crash(*args, **kwargs):
        path = Path(args[1] if what == "model" else args[0])
        path.write_bytes(b"half")  # some bytes reach the disk, then the process dies
        raise Crash

    with monkeypatch.context() as patch:
        if what == "labels":
            patch.setattr(tifffile, "imwrite", crash)
            call = lambda: write_labels(target, np.zeros((8, 8), np.uint8))  # noqa: E731
        elif what == "sidecar":
            patch.setattr(Path, "write_text", lambda self, text: crash(self))
            call = lambda: write_json(target, {"version": 2})  # noqa: E731
        else:
            patch.setattr(safetensors.torch, "save_file", crash)
            run = api.train(np.zeros((8, 8, 3), np.uint8) + np.arange(8, dtype=np.uint8)[:, None, None] * 30,
                            "feature-clustering", device="cpu", **fast("feature-clustering"))
            call = lambda: save_model(run, target)  # noqa: E731
        with pytest.raises(Crash):
            call()
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if ".part" in p.name] == []  # no temporary left behind
    if what == "model":
        assert load_model(target, "cpu").method.id == "feature-clustering"


# -- CUDA out of memory (simulated: a trainer raises torch.cuda.OutOfMemoryError from step) -----------
class OOMTrainer:
    """Toy trainer that runs out of GPU memory while its tiles exceed ``fits`` pixels (or always on a
    non-CPU device when ``cuda_only``); labels: the first channel above its mean."""

    done = False
    fits = 8
    cuda_only = False

    def __init__(self, ctx):
        self.ctx, self.tile, self.steps = ctx, 32, 0

    def step(self):
        if (self.cuda_only and self.ctx.device.type != "cpu") or (not self.cuda_only and self.tile > self.fits):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.steps += 1
        return {"loss": 1.0 / self.steps}

    def reduce_memory(self) -> bool:
        """Halve the tile; False once it cannot shrink further (the engine then moves to the CPU)."""
        if self.cuda_only or self.tile <= 4:
            return False
        self.tile //= 2
        return True

    def current(self):
        image = self.ctx.image[..., 0]
        return (image > image.mean()).astype(np.int64)

    finish = current


def _oom_method(cuda_only=False):
    from dataclasses import dataclass

    from napari_selfseg.engine import Method
    from napari_selfseg.postprocess import PostprocessParams

    @dataclass
    class NoParams(PostprocessParams):
        pass

    trainer = type("T", (OOMTrainer,), {"cuda_only": cuda_only})
    return Method(id="toy-oom", title="Toy OOM", params=NoParams, build=trainer,
                  stop_rules=lambda p: StopRules(max_iterations=6))




def test_cuda_oom_falls_back_to_smaller_tiles_with_a_message():
    run = Training(_oom_method(), base_image("kmeans"), device="cpu", max_fps=0)
    final = run.run()
    assert final.final and final.iteration == 6 and final.labels.shape == (20, 20)
    assert run.trainer.tile == 8
    assert any("smaller tiles" in notice for notice in run.notices)


def test_cuda_oom_falls_back_to_the_cpu_with_a_message(monkeypatch):
    from napari_selfseg import engine

    monkeypatch.setattr(engine, "resolve_device", lambda name="auto": torch.device("cuda"))
    run = Training(_oom_method(cuda_only=True), base_image("kmeans"), device="cuda", max_fps=0)
    final = run.run()
    assert final.final and final.labels.shape == (20, 20)
    assert run.device.type == "cpu" and any("CPU" in notice for notice in run.notices)


def test_an_out_of_memory_notice_reaches_the_next_snapshot_once():
    """The panel shows ``Snapshot.notice`` as a warning notification: each fallback is told once."""
    run = Training(_oom_method(), base_image("kmeans"), device="cpu", max_fps=1000)
    notices = [snap.notice for snap in run.snapshots() if snap.notice]
    assert len(notices) == 1 and notices[0].count("smaller tiles") == 2  # 32 -> 16 -> 8 px tiles, told together


def test_out_of_memory_on_the_cpu_is_a_clear_error():
    method = _oom_method()
    method.build.fits = 0  # never fits, even at the smallest tile, and the run is already on the CPU
    with pytest.raises(InputError, match="out of memory"):
        Training(method, base_image("kmeans"), device="cpu", max_fps=0).run()


def test_parameter_of_the_wrong_type_is_a_value_error_naming_it():
    """Found by the fuzz: None, inf or 2 for a switch raised TypeError / OverflowError (params._coerce)."""
    from napari_selfseg.params import make_params

    params = get_method("feature-clustering").params
    for bad in ({"theta": None}, {"channels": float("inf")}, {"batch_norm": 2}, {"batch_norm": None},
                {"channels": [8]}, {"mu": 1j}):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=name):
            make_params(params, bad)
    ok = make_params(params, {"batch_norm": np.True_, "channels": np.int64(8), "mu": np.float32(2)})
    assert ok.batch_norm is True and ok.channels == 8 and ok.mu == 2.0


def test_float64_beyond_float32_and_complex_images():
    """Found by the table: 1e300 was reported as "NaN or infinite"; complex lost its imaginary part."""
    image = np.random.default_rng(0).random((12, 12))
    assert np.allclose(prepare_image(image * 1e300), prepare_image(image), atol=1e-6)
    with pytest.raises(InputError, match="complex"):
        prepare_image(image.astype(np.complex128))


def test_cuda_oom_in_the_final_labelling_keeps_the_training_and_labels_on_the_cpu(monkeypatch):
    """The full-resolution pass after training runs out of GPU memory: the trained weights label the image
    on the CPU (``Method.load``) instead of the training being lost."""
    import dataclasses

    from napari_selfseg import engine

    class FinishOOM(OOMTrainer):
        def step(self):
            self.steps += 1
            return {"loss": 1.0}

        def finish(self):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

        def state_dict(self):
            return {"steps": torch.tensor(self.steps)}

    loaded = []

    class Loaded:
        def __init__(self, params, state, device):
            loaded.append((int(state["steps"]), device.type))

        def predict(self, image):
            return np.ones(image.shape[:2], np.int64)

    monkeypatch.setattr(engine, "resolve_device", lambda name="auto": torch.device("cuda"))
    method = dataclasses.replace(_oom_method(), build=FinishOOM, load=Loaded)
    run = Training(method, base_image("kmeans"), device="cuda", max_fps=0)
    final = run.run()
    assert loaded == [(6, "cpu")] and final.labels.shape == (20, 20)  # all 6 trained steps kept
    assert any("computed on the CPU" in notice for notice in run.notices)
