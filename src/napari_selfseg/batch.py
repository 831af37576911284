"""Label many files: train-and-label each (``segment``) or apply one trained model (``apply``), serially
or on a dask.distributed cluster. Used by the CLI; no Qt.

Every input ends in an :class:`Outcome`; a bad input fails alone (its message kept), the others are
still written, and each label file and its JSON sidecar are written atomically.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .api import is_volume, provenance, training
from .bundle import Model, load_model
from .imageprep import InputError
from .io import ImageFile, label_path, read_image, write_json, write_labels
from .methods import get_method

# What a failed input can raise: reported and skipped, never a traceback for the whole batch.
INPUT_ERRORS = (InputError, ValueError, RuntimeError, MemoryError, OSError)


@dataclass(frozen=True)
class Outcome:
    """What happened to one input: ``status`` is "written", "skipped" (output exists) or "failed"."""

    path: str
    status: str
    output: str = ""
    message: str = ""


def sidecar_path(labels_file: Path) -> Path:
    """``<stem>.json`` beside a label file (``.nii.gz`` counts as one suffix)."""
    return labels_file.with_name(labels_file.name.split(".")[0] + ".json")


def label_file(path: Path, outdir: Path, labeller: Callable[[ImageFile], tuple[np.ndarray, dict]],
               skip_existing: bool = False) -> Outcome:
    """Read ``path``, label it with ``labeller`` and write labels + sidecar into ``outdir``."""
    try:
        image = read_image(path)
        out = label_path(image, outdir)
        if skip_existing and out.exists() and sidecar_path(out).exists():
            return Outcome(str(path), "skipped", str(out))
        started = time.perf_counter()
        labels, record = labeller(image)
        record["seconds"] = round(time.perf_counter() - started, 3)
        write_labels(out, labels, image)
        write_json(sidecar_path(out), record)
        return Outcome(str(path), "written", str(out))
    except INPUT_ERRORS as err:
        message = str(err) if str(path) in str(err) else f"{path}: {err}"
        return Outcome(str(path), "failed", message=message)


def segment_image(image: ImageFile, method: str, threads: int | None = None, **kwargs: Any) -> tuple[np.ndarray, dict]:
    """Train ``method`` on one file's data and label it; returns labels and their provenance record.

    Plane methods train on a volume's middle slice and label every slice; stack methods train on all
    slices; volume methods on the volume. ``kwargs`` are :func:`napari_selfseg.api.training`'s.
    """
    spec, data = get_method(method), image.data
    volume = is_volume(data, image.rgb, channels=spec.inputs == "volume")
    common = dict(rgb=image.rgb, threads=threads, max_fps=0, **kwargs)
    if spec.inputs == "volume" and not volume:
        raise InputError(f"{method} segments 3D volumes; {image.path.name} has shape {data.shape}")
    if spec.inputs == "plane":
        run = training(data[data.shape[0] // 2] if volume else data, method, **common)
        final = run.run()
        labels = np.stack([run.predict(s, rgb=image.rgb) for s in data]) if volume else final.labels
        trained_on = "middle slice" if volume else "image"
    else:
        stack = data if volume or spec.inputs == "volume" else data[None]
        run = training(stack, method, spacing=image.spacing, **common)
        final = run.run()
        labels = final.labels if volume else final.labels[0]
        trained_on = "volume" if spec.inputs == "volume" else ("all slices" if volume else "image")
    record = provenance(run, input=str(image.path), input_shape=list(data.shape), iterations=final.iteration,
                        final_losses=final.losses, trained_on=trained_on, threads=threads)
    return labels, record


def model_record(model: Model, **extra) -> dict:
    """Provenance of labels a loaded model produced (JSON-able): method, model file, its parameters."""
    return {"method": model.method.id, "model": str(model.path), "params": model.record.get("params"),
            "napari_selfseg_version": model.record.get("napari_selfseg_version"), "applied": True, **extra}


def model_labeller(model: Model) -> Callable[[ImageFile], tuple[np.ndarray, dict]]:
    """A ``labeller`` for :func:`label_file` that applies a trained model (no training)."""

    def label(image: ImageFile) -> tuple[np.ndarray, dict]:
        labels = model.predict(image.data, rgb=image.rgb)
        return labels, model_record(model, input=str(image.path), input_shape=list(image.data.shape))

    return label


@lru_cache(maxsize=4)
def _cached_model(model_file: str, device: str) -> Model:
    """One load per worker process and model (a distributed batch sends paths, not weights)."""
    return load_model(model_file, device)


def apply_file(model_file: str, path: str, outdir: str, device: str = "cpu", skip_existing: bool = False,
               threads: int | None = None) -> Outcome:
    """Apply the bundle ``model_file`` to one input file (the unit of work of a distributed batch)."""
    try:
        model = _cached_model(str(model_file), device)
    except INPUT_ERRORS as err:
        return Outcome(str(path), "failed", message=str(err))
    if threads:
        import torch

        torch.set_num_threads(threads)
    return label_file(Path(path), Path(outdir), model_labeller(model), skip_existing)


def apply_distributed(model_file: str, paths: Iterable[Path], outdir: Path, scheduler: str, device: str = "cpu",
                      skip_existing: bool = False, workers: int = 2) -> Iterator[Outcome]:
    """Apply a model to ``paths`` on dask.distributed, yielding outcomes as they finish.

    ``scheduler`` is a scheduler address (``tcp://host:8786``) or ``local`` for a LocalCluster of
    ``workers`` single-threaded processes on this machine.
    """
    from distributed import Client, LocalCluster, as_completed

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.CRITICAL) if scheduler == "local" else None
    try:
        with Client(cluster if cluster is not None else scheduler) as client:
            futures = [client.submit(apply_file, str(model_file), str(p), str(outdir), device, skip_existing, 1,
                                     pure=False) for p in paths]
            for future in as_completed(futures):
                yield future.result()
    finally:
        if cluster is not None:
            cluster.close()
