"""Speed of a method on one image: first frame, final segmentation, and iterations per second headless
versus streamed into a napari Labels layer through the real panel (under a virtual display if needed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from napari_selfseg import training
from napari_selfseg.engine import resolve_device, warm_up
from napari_selfseg.methods import get_method
from napari_selfseg.params import param_specs

from . import datasets

# Sets whose first image a method is also timed on (interactive default), where its targets are stated per
# image of that set; every method is timed on the BSDS500 image, so its rows compare with the others'.
SPEED_DATA = {"sgscn": "ph2"}


def speed_image(name: str = "bsds500") -> tuple[np.ndarray, str]:
    """The first RGB image of data set ``name`` when the data are here, else scikit-image's coffee crop
    (481x321)."""
    if datasets.available(name):
        sample = next(datasets.load(name, 1))
        return sample.image, f"{name}/{sample.name} {sample.image.shape[1]}x{sample.image.shape[0]}"
    from skimage import data

    return data.coffee()[:321, :481], "coffee crop 481x321"


def _declared(method: str, **values) -> dict:
    """The subset of ``values`` that ``method`` declares as parameters (stop counts differ by method)."""
    names = {spec.name for spec in param_specs(get_method(method).params)}
    return {k: v for k, v in values.items() if k in names}


def first_and_final(image, method: str, preset: str | None, threads: int, device: str, budget: float | None,
                    **params) -> dict:
    """Seconds to the first frame and to the final one, iterations and why it stopped."""
    started = time.perf_counter()
    first = None
    run = training(image, method, preset=preset, threads=threads, device=device, max_seconds=budget,
                   max_fps=30, rgb=True, **params)
    for snap in run.snapshots():
        if first is None:
            first = time.perf_counter() - started
    return {"first": first, "final": time.perf_counter() - started, "iterations": snap.iteration,
            "stop": snap.stop_reason, "clusters": snap.n_clusters}


def cold_first_frame(image, method: str, device: str) -> float:
    """Seconds to the first frame of the first training in this process, before :func:`warm_up` (a
    script's first call; in napari the panel warms torch up when it opens)."""
    started = time.perf_counter()
    snapshots = training(image, method, threads=1, device=device, max_fps=30, rgb=True).snapshots()
    next(snapshots)
    first = time.perf_counter() - started
    snapshots.close()
    return first


# Frames per second that time a "headless" training: a frame costs ~2 ms, so 1 per second costs ~0.2 %.
TIMING_FPS = 1.0


def steady_rate(frames) -> float:
    """Iterations per second between the first and the last intermediate frame of a training: the loop's
    own rate while a user watches it, without the start-up and the final map (nan with under two frames)."""
    shown = [f for f in frames if not f.final]
    if len(shown) < 2 or shown[-1].elapsed <= shown[0].elapsed:
        return float("nan")
    return (shown[-1].iteration - shown[0].iteration) / (shown[-1].elapsed - shown[0].elapsed)


def headless_rate(image, method: str, iterations: int, threads: int, device: str, max_fps: float, **params):
    """Training iterations per second over a fixed number of steps (no early stop), timed between frames
    (:func:`steady_rate`; ``max_fps`` 0 still makes :data:`TIMING_FPS` frames to time the loop by)."""
    stop = _declared(method, max_iterations=iterations, min_labels=1)
    frames = training(image, method, threads=threads, device=device, max_fps=max_fps or TIMING_FPS, rgb=True,
                      **stop, **params).snapshots()
    return steady_rate(list(frames))


def streamed_rate(method: str, iterations: int, device: str) -> tuple[float, int, float]:
    """Iterations per second while the panel streams frames into a Labels layer (:func:`steady_rate`),
    frames drawn, and seconds from Train to the first frame reaching the GUI thread.

    Runs ``python -m benchmarks.streamed`` in a child process (under ``xvfb-run`` without a screen), so
    the X server's teardown cannot disturb this process.
    """
    command = [sys.executable, "-m", "benchmarks.streamed", method, str(iterations), device]
    if not os.environ.get("DISPLAY"):
        command = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", *command]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["rate"], result["frames"], result["first"]


def run(method: str = "feature-clustering", iterations: int = 250, paper_budget: float = 60.0,
        device: str = "cpu", repeats: int = 3, log=print) -> str:
    """All speed measurements as a markdown table."""
    image, label = speed_image()
    dev = str(resolve_device(device))
    rows = ["| measurement | value | notes |", "| --- | --- | --- |"]
    presets = get_method(method).presets
    cold = cold_first_frame(image, method, device)
    rows.append(f"| interactive default: first frame, cold process | {cold:.2f} s | the process's first training, "
                "torch not warmed up (a script's first call) |")
    warm_up()  # as the panel does when it opens: the rows below are what a user of the panel sees
    for preset, budget in (("interactive", None), ("paper", paper_budget)):
        if preset not in presets:
            continue
        r = first_and_final(image, method, preset, 1, device, budget)
        note = f"{r['iterations']} iterations, stopped by {r['stop']}, {r['clusters']} clusters"
        rows.append(f"| {preset} default: first frame | {r['first']:.2f} s | |")
        rows.append(f"| {preset} default: final segmentation | {r['final']:.2f} s | {note} |")
        log(f"  {preset}: {r}")
    extra = SPEED_DATA.get(method)
    if extra and datasets.available(extra):
        other, other_label = speed_image(extra)
        r = first_and_final(other, method, "interactive", 1, device, None)
        note = f"{r['iterations']} iterations, stopped by {r['stop']}, {r['clusters']} clusters"
        rows.append(f"| interactive default on {other_label}: first frame | {r['first']:.2f} s | |")
        rows.append(f"| interactive default on {other_label}: final segmentation | {r['final']:.2f} s | {note} |")
        log(f"  {extra}: {r}")
    two_threads = headless_rate(image, method, iterations, 2, device, 0)
    throttled = headless_rate(image, method, iterations, 1, device, 10)
    # The host is shared and its speed drifts: each streamed run is compared with a headless run just before
    # it, and the median of those ratios is reported.
    runs = [(headless_rate(image, method, iterations, 1, device, 0), *streamed_rate(method, iterations, device))
            for _ in range(repeats)]
    log(f"  headless / streamed it/s, frames, first frame: {runs}")
    headless, streamed, frames, panel_first = (float(np.median(column)) for column in zip(*runs))
    ratios = [100 * s / h for h, s, _, _ in runs]
    rows.append(f"| headless it/s, 1 thread | {headless:.2f} | {iterations} iterations, timed from the first to "
                f"the last frame (1 per second); median of {repeats} runs |")
    rows.append(f"| headless it/s, 2 threads | {two_threads:.2f} | |")
    rows.append(f"| headless it/s, 1 thread, 10 frames/s | {throttled:.2f} | frames made, not drawn |")
    rows.append(f"| streamed into napari it/s (panel, 1 thread) | {streamed:.2f} | {frames:.0f} frames drawn; "
                f"**{np.median(ratios):.0f}%** of the headless run before it (median; runs: "
                f"{', '.join(f'{x:.0f}%' for x in ratios)}) |")
    rows.append(f"| panel: Train to the first frame | {panel_first:.2f} s | {iterations}-step setting, the panel "
                "open (torch warmed up); median |")
    header = f"Image: {label}; method {method}; device {dev}; torch threads as noted.\n\n"
    return header + "\n".join(rows)
