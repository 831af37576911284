"""The loop every method runs in. No Qt, no napari.

A method supplies a :class:`Trainer` (built from a :class:`TrainContext`) that knows how to take one
optimisation step, report its current label map and produce a final one. :class:`Training` owns
everything around it: device and precision, seeding, CPU threads, live parameter updates (thread-safe,
applied before the next step), pause / resume / stop / cancel, stop rules, and throttled
:class:`Snapshot` s with label ids kept stable between frames. Drained in a ``for`` loop it is the
headless API, the CLI and the test path; in napari the same generator runs in a ``thread_worker``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Protocol

import numpy as np
import torch

from .imageprep import InputError, check_memory, prepare_image, prepare_stack
from .labelmaps import canonical_labels, match_labels, resize_labels, smallest_dtype
from .params import make_params
from .postprocess import postprocess


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA if present, else Apple MPS, else CPU; any torch device string is accepted."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but no CUDA GPU is available; use 'auto' or 'cpu'")
    return device


def default_threads() -> int:
    """CPU threads for torch: small, because torch's intra-op pool collapses under load in a Qt worker."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


_warm = threading.Event()


def warm_up() -> None:
    """Pay torch's one-time costs of a first training step now rather than at the user's first Train.

    Why: the first optimiser a process builds imports ``torch._dynamo`` (about 1.3 s on a 2-core CPU, the
    larger part of a cold first frame), and the first convolution and backward pass set up their kernels.
    A panel calls this in a background thread when it opens. Uses no random numbers, so a concurrent
    training's seeded initialisation is untouched; later calls return at once.
    """
    if _warm.is_set():
        return
    weight = torch.zeros((1, 1, 3, 3), requires_grad=True)
    optimiser = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    x = torch.ones((1, 1, 8, 8))
    torch.nn.functional.batch_norm(torch.nn.functional.conv2d(x, weight, padding=1), None, None,
                                   training=True).sum().backward()
    optimiser.step()
    _warm.set()


def start_warm_up() -> threading.Thread | None:
    """:func:`warm_up` in a daemon thread (None when already done), for a GUI that must not wait on it."""
    if _warm.is_set():
        return None
    thread = threading.Thread(target=warm_up, name="napari-selfseg warm-up", daemon=True)
    thread.start()
    return thread


@dataclass
class StopRules:
    """When training ends by itself; ``None`` / 0 switches a rule off."""

    max_iterations: int | None = 1000
    min_clusters: int | None = None  # stop once at most this many clusters remain
    patience: int = 0  # stop when the labels are unchanged for this many checks
    max_seconds: float | None = None  # time budget, paused time excluded


@dataclass(frozen=True)
class Snapshot:
    """One frame of a training: what the panel draws and the API yields.

    ``labels`` is image-shaped: ``(Y, X)`` for a plane, ``(Z, Y, X)`` for a volume, and for a stack
    ``(N, Y, X)`` in the final frame but ``(Y, X)`` of slice ``index[0]`` in the frames before it.
    Clustering ids start at 1 and are stable between frames of one run; semantic methods keep their
    class ids (0 = background).
    """

    iteration: int
    losses: dict[str, float]
    labels: np.ndarray
    n_clusters: int
    elapsed: float
    final: bool = False
    stop_reason: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    index: tuple[int, ...] = ()  # the slice ``labels`` belongs to; () = the whole input
    notice: str | None = None  # something the user should know (e.g. an out-of-memory fallback)


INPUT_KINDS = ("plane", "stack", "volume")


@dataclass
class TrainContext:
    """What a method's trainer gets: the prepared image and the run's settings.

    ``image`` is float32, in [0, 1] as the engine prepares it (a method's own ``prepare`` may differ: deep
    clustering 3D keeps an unclipped stretch), channels last: ``(Y, X, C)`` for a plane method, ``(N, Y, X, C)``
    for a stack method, ``(Z, Y, X, C)`` for a volume method. ``params`` is replaced (never mutated)
    by the engine when the user moves a slider, so a trainer reads ``ctx.params`` afresh at every step.
    ``scribbles`` is ``(Y, X)`` int, 0 = unlabelled, or None. ``labels`` is ground truth of shape
    ``image.shape[:-1]``, int64, -1 = unlabelled (0 = background), or None. ``preview`` is the stack
    slice the user looks at (it may change during training). ``spacing`` is the voxel size per
    spatial axis (1s when unknown).
    """

    image: np.ndarray
    params: Any
    device: torch.device
    seed: int
    scribbles: np.ndarray | None = None
    mixed_precision: bool = False
    labels: np.ndarray | None = None
    preview: int = 0
    spacing: tuple[float, ...] = ()

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast on CUDA when mixed precision is on; a no-op elsewhere."""
        if self.mixed_precision and self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


class Trainer(Protocol):
    """What a method implements. Only :meth:`current` and :meth:`finish` move data to the host."""

    done: bool  # True once the method has nothing more to learn (e.g. a one-shot baseline)

    def step(self) -> Mapping[str, Any]:
        """One optimisation step; returns loss terms (tensors or floats, not synchronised)."""

    def current(self) -> np.ndarray:
        """The current label map at the training resolution, ``(y, x)`` int, on the host."""

    def finish(self) -> np.ndarray:
        """The final label map at the image's resolution, ``(Y, X)`` int."""

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Optional: label another prepared ``(Y, X, C)`` plane (a ``(Z, Y, X, C)`` volume for volume
        methods) with what was learnt (ids as in :meth:`finish`), for other slices or files."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Optional: what :meth:`predict` needs besides the parameters (weights, centres), for
        saving the trained model; ``Method.load`` rebuilds a predictor from it."""


class Predictor(Protocol):
    """A trained model rebuilt from a bundle (``Method.load``): labels prepared inputs like
    :meth:`Trainer.predict`."""

    def predict(self, image: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Method:
    """A segmentation method as the engine, API, CLI and panel see it."""

    id: str
    title: str  # the panel's name in the Plugins menu
    params: type  # a dataclass declared with napari_selfseg.params.param
    build: Callable[[TrainContext], Trainer]
    description: str = ""
    uses_scribbles: bool = False
    iterative: bool = True  # False: one step gives the answer (no live loss curve)
    stop_rules: Callable[[Any], StopRules] = lambda params: StopRules()
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # name -> overrides
    inputs: str = "plane"  # what it trains on: "plane" (2D), "stack" (N same-size planes), "volume" (3D)
    ground_truth: str = "none"  # "none", "optional" or "required": a Labels layer / mask files of classes
    semantic: bool = False  # ids are classes (kept as given, 0 = background), not clusters (renumbered)
    # raw input ((Y, X[, C]), (N, Y, X[, C]) or (Z, Y, X[, C])), params, rgb -> float32 channels last;
    # None = the engine's percentile normalisation
    prepare: Callable[[np.ndarray, Any, bool | None], np.ndarray] | None = None
    load: Callable[[Any, dict, torch.device], Predictor] | None = None  # (params, state_dict, device)
    # parameters added after a release -> the value that settings and models saved before them behave as
    older_defaults: Mapping[str, Any] = field(default_factory=dict)

    def saved_values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Parameter values saved earlier (a model bundle's record, a panel's remembered settings): the
        ones this version knows, plus :attr:`older_defaults` for parameters added since, so that an older
        save runs as it did rather than with today's defaults. Nothing saved gives an empty dict."""
        known = {k: v for k, v in values.items() if k in self.params.__dataclass_fields__}
        return {**self.older_defaults, **known} if known else {}

    def preset_of(self, params: Any) -> str | None:
        """The name of the first preset whose values (over the defaults) equal ``params``, else None."""
        values = dataclasses.asdict(params)
        return next((name for name, overrides in self.presets.items()
                     if dataclasses.asdict(make_params(self.params, overrides)) == values), None)

    @property
    def trains_network(self) -> bool:
        """True when a trained model can be saved and applied elsewhere."""
        return self.load is not None


def prepare_input(method: Method, image: np.ndarray, params: Any, rgb: bool | None = None) -> np.ndarray:
    """The method's input from a raw array: ``(Y, X, C)`` for a plane, ``(N|Z, Y, X, C)`` otherwise."""
    check_memory(image)  # before anything loads a lazy (dask, zarr) array
    if method.prepare is not None:
        out = np.asarray(method.prepare(np.asarray(image), params, rgb), dtype=np.float32)
        want = 3 if method.inputs == "plane" else 4
        if out.ndim != want:
            raise InputError(f"{method.id} expects a {method.inputs} input; got shape {np.shape(image)}")
        return out
    if method.inputs == "plane":
        return prepare_image(image, rgb)
    return prepare_stack(image, rgb)


def spatial_shape(method: Method, image: np.ndarray) -> tuple[int, ...]:
    """The label shape of a prepared input: ``(Y, X)`` per plane for plane and stack methods, ``(Z, Y, X)``."""
    return tuple(image.shape[1:3] if method.inputs == "stack" else image.shape[:-1])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU kernels are deterministic for a fixed thread count)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Training:
    """One training run of ``method`` on ``image``; iterate :meth:`snapshots` to run it.

    Thread-safe controls (:meth:`update`, :meth:`pause`, :meth:`resume`, :meth:`stop`, :meth:`cancel`)
    may be called from any thread while another iterates. ``stop`` ends training early but still
    yields the final full-resolution frame; ``cancel`` abandons the run without one.

    Parameters
    ----------
    image : any numeric type; ``(Y, X)`` or ``(Y, X, 3|4)`` for a plane method, ``(N, Y, X[, C])`` for
        stack and volume methods.
    params : a parameter instance or a mapping of overrides of the method's defaults.
    labels : ground truth shaped like the image without channels, -1 = unlabelled (see
        :func:`napari_selfseg.labelmaps.ground_truth`); for methods that take it.
    preview : the stack slice whose labels the frames show (stack methods; default the middle one).
    spacing : voxel size per spatial axis (volume methods), 1s when None.
    max_fps : at most this many intermediate snapshots per second; 0 = only the final one. Read at every
        step, so a consumer may change it during the run (the panel paces frames to its drawing cost).
    threads : torch CPU threads during the run (restored afterwards); None leaves torch's setting.
    check_every : stop rules look at the labels every this many steps (they cost a host sync on GPUs);
        None = 1 on CPU, 10 elsewhere. Deterministic, so a seed gives the same result at any frame rate.
    """

    def __init__(
        self,
        method: Method,
        image: np.ndarray,
        params: Any = None,
        *,
        rgb: bool | None = None,
        scribbles: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        preview: int | None = None,
        spacing: tuple[float, ...] | None = None,
        device: str = "auto",
        seed: int = 0,
        stop_rules: StopRules | None = None,
        max_fps: float = 30.0,
        threads: int | None = None,
        mixed_precision: bool = True,
        check_every: int | None = None,
    ):
        self.method = method
        if params is None or isinstance(params, Mapping):
            params = make_params(method.params, params or {})
        self.rgb = rgb
        self.image = prepare_input(method, image, params, rgb)
        labels = self._check_labels(labels)
        if scribbles is not None:
            scribbles = np.asarray(scribbles)
            if scribbles.shape != self.image.shape[:2]:
                raise InputError(
                    f"scribbles of shape {scribbles.shape} do not match the image's {self.image.shape[:2]}"
                )
        self.device = resolve_device(device)
        self.seed = int(seed)
        self.stop_rules = stop_rules if stop_rules is not None else method.stop_rules(params)
        if scribbles is not None and method.uses_scribbles and np.any(scribbles > 0):
            # with scribbles the user has said how many classes there are: the label count follows them
            classes = len(np.unique(scribbles[scribbles > 0]))
            self.stop_rules = dataclasses.replace(self.stop_rules, min_clusters=classes)
        self._scribble_classes = bool(scribbles is not None and method.uses_scribbles and np.any(scribbles > 0))
        self.max_fps = max_fps
        self.threads = threads
        self.check_every = check_every or (1 if self.device.type == "cpu" else 10)
        n = self.image.shape[0]
        preview = n // 2 if preview is None else int(preview)
        spacing = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * (self.image.ndim - 1)
        self._ctx = TrainContext(self.image, params, self.device, self.seed, scribbles, mixed_precision,
                                 labels, min(max(preview, 0), n - 1), spacing)
        self._lock = threading.Lock()
        self._pending: Any = None
        self._running = threading.Event()
        self._running.set()
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self.stop_reason: str | None = None
        self.trainer: Trainer | None = None  # kept after training, for predict()
        self.id_map = IdMap()
        self.notices: list[str] = []  # out-of-memory fallbacks taken, for the user
        self._shown_notices = 0

    def _check_labels(self, labels: np.ndarray | None) -> np.ndarray | None:
        method, shape = self.method, self.image.shape[:-1]
        if method.ground_truth == "none":
            return None
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != shape:
                raise InputError(f"ground-truth labels of shape {labels.shape} do not match the image's {shape}")
            if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
                raise InputError(f"ground-truth labels must be integers, got {labels.dtype}")
            labels = labels.astype(np.int64)
            if not np.any(labels >= 0):
                labels = None
        if labels is None and method.ground_truth == "required":
            raise InputError(f"{method.title} learns from ground truth: give a Labels layer (or mask files) "
                             "with at least one annotated slice")
        return labels

    # -- controls, callable from any thread -------------------------------------------------------
    @property
    def params(self) -> Any:
        """The parameters in force (or about to be, after :meth:`update`)."""
        with self._lock:
            return self._pending if self._pending is not None else self._ctx.params

    def update(self, **values: Any) -> Any:
        """Change parameters of a running training; validated now, applied before the next step."""
        with self._lock:
            base = self._pending if self._pending is not None else self._ctx.params
            new = make_params(self.method.params, values, base=base)
            self._pending = new
            return new

    def set_preview(self, index: int) -> None:
        """Show stack slice ``index`` in the next frames (stack methods; ignored otherwise)."""
        if self.method.inputs == "stack":
            self._ctx.preview = min(max(int(index), 0), self.image.shape[0] - 1)  # an int write: atomic

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def stop(self) -> None:
        """End training after the current step; the final frame is still produced."""
        self._stop.set()
        self._running.set()

    def cancel(self) -> None:
        """Abandon the run as soon as possible; no final frame."""
        self._cancel.set()
        self._running.set()
        # said now: the consumer (a thread worker told to quit) may never resume the generator to see it
        self.stop_reason = self.stop_reason or "cancelled"

    # -- the loop ---------------------------------------------------------------------------------
    def _apply_pending(self) -> None:
        with self._lock:
            if self._pending is not None:
                self._ctx.params = self._pending
                self._pending = None
                if not self._scribble_classes:  # a live minimum cluster count (scribbles fix it otherwise)
                    live = self.method.stop_rules(self._ctx.params).min_clusters
                    self.stop_rules = dataclasses.replace(self.stop_rules, min_clusters=live)

    def _wait_while_paused(self) -> float:
        """Block while paused (waking for cancel/stop); return the seconds spent paused."""
        if self._running.is_set():
            return 0.0
        t0 = time.perf_counter()
        while not self._running.wait(0.05):
            pass
        return time.perf_counter() - t0

    def snapshots(self) -> Iterator[Snapshot]:
        """Run the training, yielding throttled snapshots and, unless cancelled, a final one."""
        with _torch_threads(self.threads):
            seed_everything(self.seed)
            try:
                yield from self._loop()
            except GeneratorExit:  # the consumer stopped iterating (e.g. a worker's quit())
                self.stop_reason = self.stop_reason or "cancelled"
                raise

    def run(self) -> Snapshot:
        """Train to the end without a consumer in between; return the final snapshot."""
        final = None
        for final in self.snapshots():
            pass
        if final is None or not final.final:
            raise RuntimeError(f"{self.method.id}: training was cancelled before its final frame")
        return final

    def _loop(self) -> Iterator[Snapshot]:
        trainer = self.method.build(self._ctx)
        start = time.perf_counter()
        paused_for = 0.0
        last_emit = -math.inf
        shown: np.ndarray | None = None  # the last emitted labels, to keep ids stable
        previous: np.ndarray | None = None
        unchanged = 0
        iteration = 0
        losses: Mapping[str, Any] = {}
        reason = None
        while reason is None:
            paused_for += self._wait_while_paused()
            if self._cancel.is_set():
                self.stop_reason = "cancelled"
                return
            if self._stop.is_set():
                reason = "stopped"
                break
            self._apply_pending()
            rules = self.stop_rules  # a slider may have just changed the minimum cluster count
            try:
                losses = trainer.step()
            except torch.cuda.OutOfMemoryError:
                trainer = self._out_of_memory(trainer)
                continue
            iteration += 1
            elapsed = time.perf_counter() - start - paused_for
            current = None
            if trainer.done:
                reason = "done"
            elif iteration % self.check_every == 0 and (rules.min_clusters or rules.patience):
                # only the label rules need the labels: a U-Net's full-size preview costs more than its step
                current = trainer.current()
                reason, unchanged = self._check_rules(rules, iteration, elapsed, current, previous, unchanged)
                previous = current
            elif rules.max_iterations and iteration >= rules.max_iterations:
                reason = "max iterations"
            if reason is None and rules.max_seconds is not None and elapsed >= rules.max_seconds:
                reason = "time budget"
            now = time.perf_counter()
            if reason is None and self.max_fps and now - last_emit >= 1.0 / self.max_fps:  # read live: paced
                index = (self._ctx.preview,) if self.method.inputs == "stack" else ()
                labels = self._display_labels(current if current is not None else trainer.current(), shown)
                shown = labels
                last_emit = now
                yield self._snapshot(iteration, losses, labels, elapsed, index=index)
        raw = np.asarray(self._finish(trainer))
        final = self._final_ids(raw, shown)
        final = self._postprocess(final)
        self.trainer = trainer
        self.stop_reason = reason
        elapsed = time.perf_counter() - start - paused_for
        yield self._snapshot(iteration, losses, final, elapsed, final=True, reason=reason)

    def _finish(self, trainer: Trainer) -> np.ndarray:
        """``trainer.finish()``; out of GPU memory: with smaller tiles while the trainer can shrink them,
        then with the trained weights on the CPU (``Method.load``), so the training is not lost."""
        while True:
            try:
                return trainer.finish()
            except torch.cuda.OutOfMemoryError:
                if self._shrink(trainer, "labelling with smaller tiles"):
                    continue
                if self.method.load is None or self.device.type == "cpu":
                    raise InputError("out of memory while labelling the image: use a smaller image or scale") \
                        from None
                state = {k: v.detach().cpu() for k, v in trainer.state_dict().items()}
                self.notices.append(f"out of GPU memory: the final labels were computed on the CPU (was "
                                    f"{self.device})")
                model = self.method.load(self._ctx.params, state, torch.device("cpu"))
                if self.method.inputs == "stack":  # the predictors label one plane at a time
                    return np.stack([model.predict(plane) for plane in self._ctx.image])
                return model.predict(self._ctx.image)

    def _shrink(self, trainer: Trainer, doing: str) -> bool:
        """After an out-of-memory: free CUDA's cache and let the trainer shrink its tiles or batches
        (optional ``reduce_memory()``); True (and a notice) if it did."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        reduce = getattr(trainer, "reduce_memory", None)
        if reduce is None or not reduce():
            return False
        self.notices.append(f"out of GPU memory: {doing}")
        return True

    def _out_of_memory(self, trainer: Trainer) -> Trainer:
        """After an out-of-memory step: smaller tiles if the trainer can (``reduce_memory()``), else start
        again on the CPU; on the CPU with nothing left to shrink, a clear error."""
        if self._shrink(trainer, "continuing with smaller tiles"):
            return trainer
        if self.device.type == "cpu":
            raise InputError("out of memory even on the CPU: use a smaller image, scale or batch")
        self.notices.append(f"out of GPU memory: continuing on the CPU (was {self.device})")
        del trainer
        self.device = self._ctx.device = torch.device("cpu")
        self._ctx.mixed_precision = False
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.check_every = 1
        return self.method.build(self._ctx)

    def _final_ids(self, raw: np.ndarray, shown: np.ndarray | None) -> np.ndarray:
        """Final ids: classes as given (semantic), else clusters matched to the last frame; the
        raw -> id map is kept so :meth:`predict` gives the same cluster the same id."""
        if self.method.semantic:
            final = raw
        elif shown is not None and shown.shape == raw.shape:
            final = match_labels(raw, shown)
        else:
            final = canonical_labels(raw)
        self.id_map = IdMap.from_pair(raw, final, identity=self.method.semantic)
        return final

    def _postprocess(self, labels: np.ndarray) -> np.ndarray:
        return postprocess(labels, self._ctx.params, per_slice=self.method.inputs == "stack" and labels.ndim == 3,
                           semantic=self.method.semantic)

    def predict(self, image: np.ndarray, rgb: bool | None = None) -> np.ndarray:
        """Label another input with the trained method: a plane (or, for stack methods, a stack of
        planes) or, for volume methods, a volume. The same cluster gets the same id as in the final
        frame (clusters unseen there get new ids, stable across calls). Call after training."""
        if self.trainer is None or not hasattr(self.trainer, "predict"):
            raise RuntimeError(f"{self.method.id} cannot label other images (train it first)")
        with _torch_threads(self.threads):
            return apply_predictor(self.method, self.trainer, self._ctx.params, self.id_map, image, rgb,
                                   channels=self.image.shape[-1])

    def state(self) -> dict[str, Any]:
        """What a model bundle stores of this finished run (see :mod:`napari_selfseg.bundle`)."""
        if self.trainer is None or not hasattr(self.trainer, "state_dict") or self.method.load is None:
            raise RuntimeError(f"{self.method.id} has no trained network to save (train it first)")
        return {"tensors": self.trainer.state_dict(), "params": dataclasses.asdict(self._ctx.params),
                "id_map": self.id_map.to_json(), "seed": self.seed, "device": str(self.device),
                "data_shape": list(self.image.shape), "stop_reason": self.stop_reason}

    def _check_rules(self, rules, iteration, elapsed, current, previous, unchanged):
        if rules.max_iterations and iteration >= rules.max_iterations:
            return "max iterations", unchanged
        n = len(np.unique(current))
        if rules.min_clusters and n <= rules.min_clusters:
            return "min clusters", unchanged
        if rules.patience:
            unchanged = unchanged + 1 if previous is not None and np.array_equal(current, previous) else 0
            if unchanged >= rules.patience:
                return "converged", unchanged
        return None, unchanged

    def _display_labels(self, current: np.ndarray, shown: np.ndarray | None) -> np.ndarray:
        shape = self.image.shape[1:3] if self.method.inputs == "stack" else self.image.shape[:-1]
        labels = postprocess(resize_labels(np.asarray(current), shape), self._ctx.params,
                             semantic=self.method.semantic)
        if self.method.semantic:
            return labels
        return match_labels(labels, shown) if shown is not None else canonical_labels(labels)

    def _snapshot(self, iteration, losses, labels, elapsed, final=False, reason=None, index=()) -> Snapshot:
        values = {k: float(v) for k, v in losses.items()}  # the host sync, only when emitting
        n = int(np.count_nonzero(np.bincount(labels.ravel()))) if labels.min(initial=0) >= 0 \
            else int(len(np.unique(labels)))  # bincount: far cheaper than unique on volumes
        return Snapshot(
            iteration=iteration,
            losses=values,
            labels=labels.astype(smallest_dtype(int(labels.max(initial=0))), copy=False),
            n_clusters=n,
            elapsed=elapsed,
            final=final,
            stop_reason=reason,
            params=dataclasses.asdict(self._ctx.params),
            index=index,
            notice=self._take_notice(),
        )

    def _take_notice(self) -> str | None:
        """Fallback notices not yet shown, joined, for the next emitted snapshot."""
        fresh, self._shown_notices = self.notices[self._shown_notices:], len(self.notices)
        return "; ".join(fresh) or None


@contextlib.contextmanager
def _torch_threads(n: int | None):
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class IdMap:
    """Raw cluster id -> label id of one trained model, so every output of it uses the same ids.

    Clusters first seen after training get new ids above the known ones (stable across calls).
    ``identity`` (semantic methods): class ids are kept as they are.
    """

    def __init__(self, mapping: Mapping[int, int] | None = None, identity: bool = False):
        self.mapping = {int(k): int(v) for k, v in (mapping or {}).items()}
        self.identity = identity

    @classmethod
    def from_pair(cls, raw: np.ndarray, final: np.ndarray, identity: bool = False) -> "IdMap":
        if identity:
            return cls(identity=True)
        pairs = np.unique(np.stack([np.ravel(raw), np.ravel(final)]), axis=1)
        return cls(dict(zip(pairs[0].tolist(), pairs[1].tolist())))

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw)
        if self.identity:
            return raw
        for r in np.unique(raw):
            self.mapping.setdefault(int(r), max(self.mapping.values(), default=0) + 1)
        lookup = np.zeros(int(raw.max(initial=0)) + 1, dtype=np.int64)
        for r, f in self.mapping.items():
            if 0 <= r < len(lookup):
                lookup[r] = f
        return lookup[raw]

    def to_json(self) -> dict[str, Any]:
        return {"identity": self.identity, "mapping": {str(k): v for k, v in self.mapping.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "IdMap":
        return cls({int(k): int(v) for k, v in data.get("mapping", {}).items()}, bool(data.get("identity")))


def apply_predictor(method: Method, predictor: Any, params: Any, id_map: IdMap, image: np.ndarray,
                    rgb: bool | None = None, channels: int | None = None) -> np.ndarray:
    """Label a raw input with a trained ``predictor`` (a trainer or a loaded model).

    Plane and stack methods label a ``(Y, X[, C])`` plane, or each plane of a ``(N, Y, X[, C])`` stack
    (normalised together); volume methods a ``(Z, Y, X[, C])`` volume. ``channels``: the channel count
    the model was trained on (checked). Returns the smallest uint type.
    """
    if not hasattr(image, "ndim"):
        image = np.asarray(image)  # dask, zarr and memory-mapped arrays stay lazy: read plane by plane
    if method.inputs == "volume":
        volume = _checked_channels(prepare_input(method, np.asarray(image), params, rgb), channels)
        labels = postprocess(id_map(predictor.predict(volume)), params, semantic=method.semantic)
    else:
        colour = image.ndim >= 3 and (rgb if rgb is not None else image.shape[-1] in (3, 4))
        stack = image.ndim - int(colour) == 3
        if not stack:
            planes = [np.asarray(image)[None]]
        elif method.inputs == "plane":  # each plane alone: a large stack never sits in memory as floats
            planes = (np.asarray(image[i])[None] for i in range(image.shape[0]))
        else:  # stack methods normalise a stack as a whole, as in training
            planes = [np.asarray(image)]
        labels = None
        for chunk in planes:
            for p in _checked_channels(_prepare_planes(method, chunk, params, rgb), channels):
                plane = postprocess(id_map(predictor.predict(p)), params, semantic=method.semantic)
                if labels is None:
                    labels = np.empty((image.shape[0] if stack else 1, *plane.shape), np.uint32)
                    filled = 0
                labels[filled] = plane
                filled += 1
        labels = labels if stack else labels[0]
    labels = np.asarray(labels)
    return labels.astype(smallest_dtype(int(labels.max(initial=0))), copy=False)


def _checked_channels(prepared: np.ndarray, channels: int | None) -> np.ndarray:
    if channels is not None and prepared.shape[-1] != channels:
        kind = {1: "gray", 3: "RGB"}
        raise InputError(f"the model was trained on {kind.get(channels, f'{channels}-channel')} images; this one "
                         f"is {kind.get(prepared.shape[-1], f'{prepared.shape[-1]}-channel')}")
    return prepared


def _prepare_planes(method: Method, stack: np.ndarray, params: Any, rgb: bool | None) -> np.ndarray:
    """``(N, Y, X[, C])`` raw planes -> ``(N, Y, X, C)`` prepared as the method's training input was."""
    if method.inputs == "plane":
        return np.stack([prepare_input(method, plane, params, rgb) for plane in stack])
    return prepare_input(method, stack, params, rgb)
