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
from napari_selfseg.engine import resolve_device

from . import datasets


def speed_image() -> tuple[np.ndarray, str]:
    """A 481x321 RGB image: the first BSDS500 image when the data are here, else scikit-image's coffee crop."""
    if datasets.available("bsds500"):
        sample = next(datasets.load("bsds500", 1))
        return sample.image, f"bsds500/{sample.name} {sample.image.shape[1]}x{sample.image.shape[0]}"
    from skimage import data

    return data.coffee()[:321, :481], "coffee crop 481x321"


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


def headless_rate(image, method: str, iterations: int, threads: int, device: str, max_fps: float, **params):
    """Training iterations per second over a fixed number of steps (no early stop)."""
    final = training(image, method, threads=threads, device=device, max_fps=max_fps, rgb=True,
                     max_iterations=iterations, min_labels=1, **params).run()
    return final.iteration / final.elapsed


def streamed_rate(method: str, iterations: int, device: str) -> tuple[float, int]:
    """Iterations per second when the panel streams frames into a Labels layer, and frames drawn.

    Runs ``python -m benchmarks.streamed`` in a child process (under ``xvfb-run`` without a screen), so
    the X server's teardown cannot disturb this process.
    """
    command = [sys.executable, "-m", "benchmarks.streamed", method, str(iterations), device]
    if not os.environ.get("DISPLAY"):
        command = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", *command]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["rate"], result["frames"]


def run(method: str = "feature-clustering", iterations: int = 60, paper_budget: float = 60.0,
        device: str = "cpu", log=print) -> str:
    """All speed measurements as a markdown table."""
    image, label = speed_image()
    dev = str(resolve_device(device))
    rows = ["| measurement | value | notes |", "| --- | --- | --- |"]
    for preset, budget in (("interactive", None), ("paper", paper_budget)):
        r = first_and_final(image, method, preset, 1, device, budget)
        note = f"{r['iterations']} iterations, stopped by {r['stop']}, {r['clusters']} clusters"
        rows.append(f"| {preset} default: first frame | {r['first']:.2f} s | |")
        rows.append(f"| {preset} default: final segmentation | {r['final']:.2f} s | {note} |")
        log(f"  {preset}: {r}")
    rates = {t: headless_rate(image, method, iterations, t, device, 0) for t in (1, 2)}
    throttled = headless_rate(image, method, iterations, 1, device, 10)
    streamed, frames = streamed_rate(method, iterations, device)
    rows.append(f"| headless it/s, 1 thread | {rates[1]:.2f} | {iterations} iterations, no frames |")
    rows.append(f"| headless it/s, 2 threads | {rates[2]:.2f} | |")
    rows.append(f"| headless it/s, 1 thread, 10 frames/s | {throttled:.2f} | frames made, not drawn |")
    rows.append(f"| streamed into napari it/s (panel, 1 thread) | {streamed:.2f} | {frames} frames drawn; "
                f"{100 * streamed / rates[1]:.0f}% of headless |")
    header = f"Image: {label}; method {method}; device {dev}; torch threads as noted.\n\n"
    return header + "\n".join(rows)
