"""Quality of any set of methods on any set of ../shared/data, scored with each set's published protocol.

Each method is trained once per image; the border step (napari_selfseg.postprocess) is then applied to
that same result, so "with" and "without" rows compare exactly one segmentation.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from napari_selfseg import segment
from napari_selfseg.engine import resolve_device
from napari_selfseg.metrics import evaluate
from napari_selfseg.postprocess import split_border_components

from . import datasets

# The headline number of each protocol, then the others it reports.
METRICS = {
    "bsds": ("bsds_best", "bsds_mean"),
    "best-overlap": ("dsc", "hammoude", "xor"),
    "multiclass": ("nmi", "ari", "mean_label_iou"),
}


@dataclass
class Result:
    """Scores of one method on one data set, with or without the border step."""

    dataset: str
    method: str
    border: bool
    scores: dict[str, list[float]] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.scores.setdefault(key, []).append(float(value))


def prepare(sample: datasets.Sample, name: str) -> tuple[np.ndarray, object, dict]:
    """The image a 2D method gets, the ground truth, and segment() keyword arguments for this set."""
    image, gt, kwargs = sample.image, sample.gt, {}
    if name == "brats_mri_3d":  # FLAIR only, scored inside the brain (multi-channel 3D is the 3D panel's job)
        image = sample.image[..., 0]
    if name in ("bsds500", "ph2"):
        kwargs["rgb"] = True
    return image, gt, kwargs


def score(labels: np.ndarray, sample: datasets.Sample, name: str) -> dict[str, float]:
    rule = datasets.PROTOCOL[name]
    gt = sample.gt
    if name == "brats_mri_3d":
        brain = sample.extra["brain_mask"]
        labels = np.where(brain, labels, 0)
    values = evaluate(labels, gt, rule)
    return {k: values[k] for k in METRICS[rule]}


def with_border_step(labels: np.ndarray) -> np.ndarray:
    """The border step on a 2D map, or on every slice of a stack (as the engine applies it per plane)."""
    if labels.ndim == 2:
        return split_border_components(labels)
    return np.stack([split_border_components(s) for s in labels])


def run(methods: dict[str, dict], names: list[str], limit: int | None, seed: int = 0, threads: int = 1,
        device: str = "auto", border: bool = True, log=print) -> list[Result]:
    """Run ``methods`` ({id: parameter overrides}) on the data sets ``names``; skip absent sets."""
    results: dict[tuple, Result] = {}
    for name in names:
        if not datasets.available(name):
            log(f"skip {name}: not found under {datasets.DATA_ROOT}")
            continue
        for sample in datasets.load(name, limit):
            image, _, kwargs = prepare(sample, name)
            for method, params in methods.items():
                started = time.perf_counter()
                labels = segment(image, method, seed=seed, threads=threads, device=device, **kwargs, **params)
                seconds = time.perf_counter() - started
                for with_border in ((False, True) if border else (False,)):
                    key = (name, method, with_border)
                    result = results.setdefault(key, Result(name, method, with_border))
                    result.add(score(with_border_step(labels) if with_border else labels, sample, name))
                    result.seconds.append(seconds)
            log(f"  {name}/{sample.name} done")
    return list(results.values())


def table(results: list[Result], device: str = "auto") -> str:
    """A markdown table: mean ± std of each metric, n, seconds per image, device."""
    dev = str(resolve_device(device))
    lines = ["| data | method | border step | n | metrics (mean ± std) | s / image | device |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        cells = []
        for key, values in r.scores.items():
            finite = [v for v in values if np.isfinite(v)]
            cells.append(f"{key} {np.mean(finite):.3f} ± {np.std(finite):.3f}" if finite else f"{key} n/a")
        lines.append(f"| {r.dataset} | {r.method} | {'yes' if r.border else 'no'} | {len(r.seconds)} | "
                     f"{'; '.join(cells)} | {np.mean(r.seconds):.2f} | {dev} |")
    return "\n".join(lines)
