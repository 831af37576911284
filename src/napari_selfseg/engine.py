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

from .imageprep import InputError, prepare_image
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

    ``labels`` is ``(Y, X)`` (image-shaped) with ids from 1; ids are stable between frames of one run.
    """

    iteration: int
    losses: dict[str, float]
    labels: np.ndarray
    n_clusters: int
    elapsed: float
    final: bool = False
    stop_reason: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class TrainContext:
    """What a method's trainer gets: the prepared image and the run's settings.

    ``image`` is ``(Y, X, C)`` float32 in [0, 1]. ``params`` is replaced (never mutated) by the engine
    when the user moves a slider, so a trainer reads ``ctx.params`` afresh at every step.
    ``scribbles`` is ``(Y, X)`` int, 0 = unlabelled, or None.
    """

    image: np.ndarray
    params: Any
    device: torch.device
    seed: int
    scribbles: np.ndarray | None = None
    mixed_precision: bool = False

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
        """Optional: label another prepared ``(Y, X, C)`` image with what was learnt (cluster ids as in
        :meth:`finish`), for applying a trained network to other slices or files."""


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
    image : ``(Y, X)`` or ``(Y, X, 3|4)`` array of any numeric type.
    params : a parameter instance or a mapping of overrides of the method's defaults.
    max_fps : at most this many intermediate snapshots per second; 0 = only the final one.
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
        self.image = prepare_image(image, rgb)
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
        self.max_fps = max_fps
        self.threads = threads
        self.check_every = check_every or (1 if self.device.type == "cpu" else 10)
        self._ctx = TrainContext(self.image, params, self.device, self.seed, scribbles, mixed_precision)
        self._lock = threading.Lock()
        self._pending: Any = None
        self._running = threading.Event()
        self._running.set()
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self.stop_reason: str | None = None
        self.trainer: Trainer | None = None  # kept after training, for predict()
        self._id_map: dict[int, int] = {}

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

    # -- the loop ---------------------------------------------------------------------------------
    def _apply_pending(self) -> None:
        with self._lock:
            if self._pending is not None:
                self._ctx.params = self._pending
                self._pending = None

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
        rules = self.stop_rules
        start = time.perf_counter()
        paused_for = 0.0
        min_gap = 1.0 / self.max_fps if self.max_fps else None  # None: only the final frame
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
            losses = trainer.step()
            iteration += 1
            elapsed = time.perf_counter() - start - paused_for
            current = None
            if trainer.done:
                reason = "done"
            elif iteration % self.check_every == 0:
                current = trainer.current()
                reason, unchanged = self._check_rules(rules, iteration, elapsed, current, previous, unchanged)
                previous = current
            elif rules.max_iterations and iteration >= rules.max_iterations:
                reason = "max iterations"
            if reason is None and rules.max_seconds is not None and elapsed >= rules.max_seconds:
                reason = "time budget"
            now = time.perf_counter()
            if reason is None and min_gap is not None and now - last_emit >= min_gap:
                labels = self._display_labels(current if current is not None else trainer.current(), shown)
                shown = labels
                last_emit = now
                yield self._snapshot(iteration, losses, labels, elapsed)
        raw = np.asarray(trainer.finish())
        final = match_labels(raw, shown) if shown is not None else canonical_labels(raw)
        self._remember_ids(raw, final)
        final = postprocess(final, self._ctx.params)
        self.trainer = trainer
        self.stop_reason = reason
        elapsed = time.perf_counter() - start - paused_for
        yield self._snapshot(iteration, losses, final, elapsed, final=True, reason=reason)

    def _remember_ids(self, raw: np.ndarray, final: np.ndarray) -> None:
        """Keep the raw-cluster -> label-id map of the final frame, so :meth:`predict` uses the same ids."""
        self._id_map = {int(r): int(f) for r, f in zip(*np.unique(np.stack([raw.ravel(), final.ravel()]),
                                                                       axis=1))}

    def predict(self, image: np.ndarray, rgb: bool | None = None) -> np.ndarray:
        """Label another 2D image with the trained method; the same cluster gets the same id as in the
        final frame (clusters unseen there get new ids, stable across calls). Call after training."""
        if self.trainer is None or not hasattr(self.trainer, "predict"):
            raise RuntimeError(f"{self.method.id} cannot label other images (train it first)")
        with _torch_threads(self.threads):
            raw = np.asarray(self.trainer.predict(prepare_image(image, rgb)))
        for r in np.unique(raw):
            self._id_map.setdefault(int(r), max(self._id_map.values(), default=0) + 1)
        lookup = np.zeros(int(raw.max()) + 1, dtype=np.int64)
        for r, f in self._id_map.items():
            if r < len(lookup):
                lookup[r] = f
        labels = postprocess(lookup[raw], self._ctx.params)
        return labels.astype(smallest_dtype(int(labels.max(initial=0))), copy=False)

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
        labels = postprocess(resize_labels(current, self.image.shape[:2]), self._ctx.params)
        return match_labels(labels, shown) if shown is not None else canonical_labels(labels)

    def _snapshot(self, iteration, losses, labels, elapsed, final=False, reason=None) -> Snapshot:
        values = {k: float(v) for k, v in losses.items()}  # the host sync, only when emitting
        n = int(len(np.unique(labels)))
        return Snapshot(
            iteration=iteration,
            losses=values,
            labels=labels.astype(smallest_dtype(int(labels.max(initial=0))), copy=False),
            n_clusters=n,
            elapsed=elapsed,
            final=final,
            stop_reason=reason,
            params=dataclasses.asdict(self._ctx.params),
        )


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
