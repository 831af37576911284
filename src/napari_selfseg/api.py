"""The headless API: the same engine the panels use, as plain functions."""
from __future__ import annotations

import platform
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from . import __version__
from .bundle import Model, load_model, save_model  # noqa: F401  (re-exported)
from .engine import Snapshot, StopRules, Training
from .imageprep import InputError
from .labelmaps import ground_truth
from .methods import get_method, list_methods  # noqa: F401  (re-exported)
from .params import make_params


def resolve_params(method: str, preset: str | None = None, params: Mapping[str, Any] | None = None):
    """A method's validated parameter instance: defaults, then a named preset, then ``params``."""
    spec = get_method(method)
    if preset is not None and preset not in spec.presets:
        raise ValueError(f"{method} has no preset {preset!r}; presets: {', '.join(spec.presets) or 'none'}")
    base = make_params(spec.params, spec.presets.get(preset, {}) if preset else {})
    return make_params(spec.params, params or {}, base=base)


def training(
    image: np.ndarray,
    method: str = "feature-clustering",
    *,
    preset: str | None = None,
    scribbles: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    preview: int | None = None,
    spacing: tuple[float, ...] | None = None,
    device: str = "auto",
    seed: int = 0,
    max_seconds: float | None = None,
    max_fps: float = 30.0,
    threads: int | None = None,
    rgb: bool | None = None,
    **params: Any,
) -> Training:
    """A ready-to-run :class:`~napari_selfseg.engine.Training` of ``method`` on ``image``.

    ``image``: a plane ``(Y, X[, 3|4])`` for plane methods, ``(N, Y, X[, C])`` for stack and volume
    methods. ``labels``: ground truth for methods that learn from it (see
    :func:`napari_selfseg.labelmaps.ground_truth`). ``params`` override the method's (or ``preset``'s)
    values.
    """
    spec = get_method(method)
    values = resolve_params(method, preset, params)
    rules: StopRules = spec.stop_rules(values)
    if max_seconds is not None:
        rules.max_seconds = max_seconds
    return Training(spec, image, values, rgb=rgb, scribbles=scribbles, labels=labels, preview=preview,
                    spacing=spacing, device=device, seed=seed, stop_rules=rules, max_fps=max_fps, threads=threads)


def train(images: np.ndarray | Sequence[np.ndarray], method: str = "feature-clustering", *,
          labels: np.ndarray | Sequence[np.ndarray] | None = None, **kwargs: Any) -> Training:
    """Train ``method`` to the end and return the finished run (``run.predict``, :func:`save_model`).

    ``images``: one input, or for stack methods a list of same-size planes or stacks (concatenated into
    one stack); ``labels`` likewise (masks paired by order; 0/255 masks count as binary). Keyword
    arguments are those of :func:`training`.
    """
    spec = get_method(method)
    image = as_training_input(images, spec.inputs, kwargs.get("rgb"))
    if labels is not None:
        labels = ground_truth(as_training_input(labels, spec.inputs, False))
    kwargs.setdefault("max_fps", 0)
    run = training(image, method, labels=labels, **kwargs)
    run.run()
    return run


def as_training_input(images: np.ndarray | Sequence[np.ndarray], inputs: str, rgb: bool | None = None) -> np.ndarray:
    """One array for a method's ``inputs`` kind: stack methods get 2D planes stacked to ``(N, Y, X[, C])``."""
    if isinstance(images, np.ndarray):
        images = [images]
    arrays = [np.asarray(a) for a in images]
    if not arrays:
        raise InputError("no images to train on")
    if inputs != "stack":
        if len(arrays) > 1:
            raise InputError(f"a {inputs} method trains on one input, got {len(arrays)}")
        return arrays[0]
    stacks = [a if is_volume(a, rgb) else a[None] for a in arrays]
    shapes = {s.shape[1:] for s in stacks}
    if len(shapes) > 1:
        raise InputError(f"the planes to train on differ in size ({sorted(shapes)}); resize them to one size")
    return np.concatenate(stacks) if len(stacks) > 1 else stacks[0]


def apply(model: Model | str, image: np.ndarray, rgb: bool | None = None, device: str = "auto") -> np.ndarray:
    """Label ``image`` with a trained model (a :class:`~napari_selfseg.bundle.Model` or a bundle path)."""
    if not isinstance(model, Model):
        model = load_model(model, device)
    return model.predict(image, rgb)


def iter_segment(image: np.ndarray, method: str = "feature-clustering", **kwargs: Any) -> Iterator[Snapshot]:
    """Generator form of :func:`segment`: throttled snapshots, the last one with ``final=True``."""
    return training(image, method, **kwargs).snapshots()


def segment(image: np.ndarray, method: str = "feature-clustering", **kwargs: Any) -> np.ndarray:
    """Segment ``image`` and return its label map.

    ``image``: ``(Y, X)``, ``(Y, X, 3|4)``, or a volume ``(Z, Y, X)``. Plane methods train on a
    volume's middle slice (or ``train_slice``) and then label every slice, so a cluster has the same id
    in all of them; stack methods train on all slices; volume methods on the volume. Returns labels of the image's spatial shape, ids from 1 (uint8/uint16).
    Keyword arguments are those of :func:`training` plus the method's parameters.
    """
    image = np.asarray(image)
    train_slice = kwargs.pop("train_slice", None)
    inputs = get_method(method).inputs
    volume = is_volume(image, kwargs.get("rgb"), channels=inputs == "volume")
    kwargs.setdefault("max_fps", 0)
    if inputs == "plane" and volume:
        return segment_volume(image, method, train_slice=train_slice, **kwargs)
    if inputs == "stack" and not volume:  # one plane: a stack of one, and so its ground truth
        if kwargs.get("labels") is not None and np.ndim(kwargs["labels"]) == 2:
            kwargs["labels"] = np.asarray(kwargs["labels"])[None]
        return training(image[None], method, **kwargs).run().labels[0]
    if inputs == "volume" and not volume:
        raise InputError(f"{method} segments 3D volumes (Z, Y, X); got an image of shape {image.shape}")
    return training(image, method, **kwargs).run().labels


def is_volume(image: np.ndarray, rgb: bool | None = None, channels: bool = False) -> bool:
    """True for ``(Z, Y, X)`` (and ``(Z, Y, X, 3|4)`` colour) stacks; with ``channels``, also for
    ``(Z, Y, X, C)`` with a few channels (e.g. FLAIR + T1c for a volume method)."""
    if channels and image.ndim == 4 and image.shape[-1] <= 8:
        return True
    colour = image.ndim >= 3 and (rgb if rgb is not None else image.shape[-1] in (3, 4))
    return image.ndim - int(colour) == 3


def segment_volume(volume: np.ndarray, method: str = "feature-clustering", *, train_slice: int | None = None,
                   **kwargs: Any) -> np.ndarray:
    """Train on one slice of a ``(Z, Y, X[, C])`` volume, then label every slice with the same network.

    Why per slice and not 3D convolutions: a 2D network trained on one slice costs Z times less per
    step, labels the neighbouring slices well, and keeps cluster ids consistent across the stack.
    """
    if volume.shape[0] == 0:
        raise InputError("the volume has no slices")
    z = volume.shape[0] // 2 if train_slice is None else int(train_slice)
    if not 0 <= z < volume.shape[0]:
        raise InputError(f"train_slice {z} is outside the volume's {volume.shape[0]} slices")
    kwargs.setdefault("max_fps", 0)
    run = training(volume[z], method, **kwargs)
    run.run()
    slices = [run.predict(volume[i], rgb=kwargs.get("rgb")) for i in range(volume.shape[0])]
    labels = np.stack(slices)
    return labels.astype(np.result_type(*[s.dtype for s in slices]), copy=False)


def provenance(run: Training, **extra: Any) -> dict[str, Any]:
    """What produced a label map: method, parameters, seed, device, version, stop reason (JSON-able)."""
    import dataclasses

    return {
        "method": run.method.id,
        "params": dataclasses.asdict(run.params),
        "seed": run.seed,
        "device": str(run.device),
        "stop_reason": run.stop_reason,
        "napari_selfseg_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        **extra,
    }
