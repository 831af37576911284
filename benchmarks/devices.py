"""Headless speed of plane methods on every device this machine has, measured in one run so the ratios
hold on a noisy machine: time to the first frame and to the final segmentation (each preset), and
training iterations per second at a fixed number of steps.

    python -m benchmarks devices [--methods feature-clustering sgscn] [--iterations 100] [--write]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_selfseg import training
from napari_selfseg.engine import StopRules, Training
from napari_selfseg.methods import get_method

from .report import machine, write_section
from .speed import speed_image


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def first_and_final(image: np.ndarray, method: str, preset: str | None, device: str) -> dict:
    """Seconds to the first streamed frame and to the final labels of one training (30 frames/s)."""
    started = time.perf_counter()
    first, snap = None, None
    run = training(image, method, preset=preset, device=device, max_fps=30, rgb=True, max_seconds=60,
                   threads=1 if device == "cpu" else None)
    for snap in run.snapshots():
        if first is None:
            first = time.perf_counter() - started
    return {"first": first, "final": time.perf_counter() - started, "iterations": snap.iteration,
            "stop": snap.stop_reason}


def iteration_rate(image: np.ndarray, method: str, device: str, iterations: int) -> float:
    """Training iterations per second over ``iterations`` steps (no frames, no early stop)."""
    spec = get_method(method)
    run = Training(spec, image, rgb=True, device=device, max_fps=0, threads=1 if device == "cpu" else None,
                   stop_rules=StopRules(max_iterations=iterations))
    final = run.run()
    _sync(device)
    return final.iteration / final.elapsed


def run(methods: list[str], iterations: int, log=print) -> str:
    image, label = speed_image()
    rows = ["| method | device | preset | first frame (s) | final (s) | iterations (stop) | it/s |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for method in methods:
        presets = list(get_method(method).presets) or [None]
        for device in devices():
            iteration_rate(image, method, device, 5)  # warm-up: CUDA context, kernels, allocator
            rate = iteration_rate(image, method, device, iterations)
            for preset in presets:
                r = first_and_final(image, method, preset, device)
                rows.append(f"| {method} | {device} | {preset or 'default'} | {r['first']:.2f} | {r['final']:.2f} | "
                            f"{r['iterations']} ({r['stop']}) | {rate:.1f} |")
                log(rows[-1])
    return f"Image: {label}; CPU rows use 1 torch thread; it/s at the default parameters.\n\n" + "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks devices", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["feature-clustering"])
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    body = run(args.methods, args.iterations)
    report = f"Measured {machine()}.\nCommand: `python -m benchmarks devices {' '.join(argv or [])}`\n\n{body}"
    print(report)
    if args.write:
        write_section("speed devices " + " ".join(args.methods), report)
    return 0
