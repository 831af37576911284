"""Soak test of the panel: interrupt live trainings in every way a user can, many times over.

    python -m benchmarks soak [--cycles 100] [--write]

Each cycle starts a Feature-clustering training on the displayed slice of a small stack, waits for its
first frame, then interrupts it one way (in turn): Stop, close the panel, close the viewer, delete the
image layer, delete the Labels layer, change the displayed slice, start a second training in another
(SGSCN) panel. After each cycle nothing may run (no hang), no worker thread may be left, the Labels layer
must equal the last frame the panel drew, and the process memory is sampled. The table reports the
figures; tests/_qt/test_soak.py runs a few cycles of the same code in CI.
"""
from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

INTERRUPTIONS = ("stop", "close panel", "close viewer", "delete image", "delete labels", "change slice",
                 "second panel")
DEFAULT_KINDS = tuple(INTERRUPTIONS)
RUNS_UNTIL_STOPPED = {"channels": 8, "max_iterations": 5000, "min_labels": 1}
TIMEOUT = 30.0  # seconds any wait may take before the cycle counts as a hang
PANEL_KEEPS_TRAINING = "training kept running after its panel was closed"


class Hang(RuntimeError):
    """A wait in the soak ran past :data:`TIMEOUT`."""


def wait_until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> float:
    """Process Qt events until ``condition()`` holds; return the seconds waited or raise :class:`Hang`."""
    from qtpy.QtWidgets import QApplication

    start = time.perf_counter()
    while not condition():
        QApplication.processEvents()
        if time.perf_counter() - start > timeout:
            raise Hang(f"waited more than {timeout:.0f} s")
        time.sleep(0.005)
    return time.perf_counter() - start


def soak_image(size: int = 48, slices: int = 3) -> np.ndarray:
    """A ``(slices, size, size)`` float32 stack of four flat regions plus noise."""
    rng = np.random.default_rng(0)
    truth = np.zeros((size, size), int)
    half = size // 2
    truth[:half, half:], truth[half:, :half], truth[half:, half:] = 1, 2, 3
    plane = np.array([0.1, 0.4, 0.7, 0.95])[truth]
    return np.stack([plane + rng.normal(0, 0.05, plane.shape) for _ in range(slices)]).astype(np.float32)


@dataclass
class Cycle:
    interruption: str
    seconds: float
    rss_mb: float
    threads: int
    consistent: bool
    message: str = ""


@dataclass
class Soak:
    """A viewer with a Feature-clustering panel (and an SGSCN panel for the concurrent case)."""

    new_viewer: Callable[[], object]
    viewer: object = None
    panels: dict = field(default_factory=dict)
    docks: dict = field(default_factory=dict)

    def open(self) -> None:
        self.viewer = self.new_viewer()
        self.viewer.add_image(soak_image(), name="stack")
        self.viewer.dims.set_current_step(0, 1)
        self.panels = {}

    def panel(self, method: str = "feature-clustering"):
        from napari_selfseg._qt import panel_class

        if method not in self.panels:
            widget = panel_class(method)(self.viewer)
            self.docks[method] = self.viewer.window.add_dock_widget(widget, name=method)
            widget.form.set_values(RUNS_UNTIL_STOPPED)
            self.panels[method] = widget
        return self.panels[method]

    def start(self, method: str = "feature-clustering") -> list:
        """Press Train and wait for the first frame; returns the list the frames are recorded into."""
        panel = self.panel(method)
        frames: list = []
        panel.train_button.click()
        if panel.worker is None:
            raise RuntimeError(f"{method} did not start: {panel.status.text()}")
        panel.worker.yielded.connect(frames.append)
        wait_until(lambda: len(frames) >= 1)
        return frames

    def idle(self) -> None:
        for panel in list(self.panels.values()):
            wait_until(lambda p=panel: p.worker is None)

    def close_panel(self, method: str = "feature-clustering") -> None:
        """What the dock's close (x) button does: napari un-parents the panel and deletes the dock."""
        self.panels.pop(method)
        self.docks.pop(method).destroyOnClose()

    def close_viewer(self) -> None:
        self.viewer.close()
        self.viewer, self.panels, self.docks = None, {}, {}


def consistent(panel, frames) -> bool:
    """The panel's Labels layer (if it still exists) holds the last frame drawn into it, at its plane."""
    layer = panel.labels_layer
    if layer is None or layer not in panel.viewer.layers or not frames:
        return True
    last = frames[-1]
    where = panel._index + last.index
    plane = layer.data[where] if where else layer.data
    return bool(np.array_equal(plane, last.labels))


def one_cycle(soak: Soak, kind: str) -> tuple[bool, str]:
    """Start a training, interrupt it by ``kind``, wait until all is idle; (labels consistent, note)."""
    if soak.viewer is None:
        soak.open()
    panel = soak.panel()
    frames = soak.start()
    note = ""
    if kind == "stop":
        panel.stop()
    elif kind == "close panel":
        soak.close_panel()
        try:
            wait_until(lambda: panel.worker is None, timeout=5.0)
        except Hang:  # the training outlived its panel: stop it so the soak goes on, and report it
            panel.cancel(wait=True)
            wait_until(lambda: panel.worker is None)
            return False, PANEL_KEEPS_TRAINING
        return panel.training.stop_reason == "cancelled", ""
    elif kind == "close viewer":
        soak.close_viewer()
        wait_until(lambda: panel.worker is None)
        return panel.training.stop_reason == "cancelled", ""
    elif kind == "delete image":
        soak.viewer.layers.remove("stack")
        wait_until(lambda: panel.worker is None)
        # the user opens the image again and goes on in the same viewer (this once crashed napari, see
        # MethodPanel._canvas_context_current)
        soak.viewer.add_image(soak_image(), name="stack")
        soak.viewer.dims.set_current_step(0, 1)
        return panel.training.stop_reason == "cancelled", ""
    elif kind == "delete labels":
        soak.viewer.layers.remove(panel.labels_layer)
        count = len(frames)
        wait_until(lambda: len(frames) > count + 1)  # training goes on; its frames are dropped
        panel.stop()
    elif kind == "change slice":
        trained = panel._index
        soak.viewer.dims.set_current_step(0, 2 if trained == (1,) else 1)
        count = len(frames)
        wait_until(lambda: len(frames) > count + 1)
        panel.stop()
        soak.idle()
        soak.viewer.dims.set_current_step(0, 1)
        other = [i for i in range(panel.labels_layer.data.shape[0]) if (i,) != trained]
        untouched = all(not np.any(panel.labels_layer.data[i]) or note for i in other)
        return consistent(panel, frames) and frames[-1].final, "" if untouched else "other slices written"
    elif kind == "second panel":
        other = soak.start("sgscn")
        panel.stop()
        soak.panels["sgscn"].stop()
        soak.idle()
        ok = consistent(panel, frames) and consistent(soak.panels["sgscn"], other)
        return ok and frames[-1].final and other[-1].final, ""
    soak.idle()
    final = frames[-1].final
    return consistent(panel, frames) and final, note


def run(cycles: int, new_viewer: Callable[[], object], log=print, kinds=DEFAULT_KINDS) -> list[Cycle]:
    """``cycles`` interruption cycles (``kinds`` in turn); raises :class:`Hang` if anything hangs."""
    import psutil
    from qtpy.QtCore import QThreadPool

    process = psutil.Process()
    soak = Soak(new_viewer)
    results = []
    try:
        for i in range(cycles):
            kind = kinds[i % len(kinds)]
            t0 = time.perf_counter()
            ok, note = one_cycle(soak, kind)
            if not QThreadPool.globalInstance().waitForDone(int(TIMEOUT * 1000)):
                raise Hang(f"cycle {i} ({kind}): a worker thread is still running")
            gc.collect()
            results.append(Cycle(kind, time.perf_counter() - t0, process.memory_info().rss / 2**20,
                                 threading.active_count(), ok, note))
            log(f"cycle {i + 1}/{cycles} {kind}: {results[-1].seconds:.1f} s, rss {results[-1].rss_mb:.0f} MB, "
                f"threads {results[-1].threads}, consistent {ok}")
    finally:
        if soak.viewer is not None:
            for panel in list(soak.panels.values()):
                panel.cancel(wait=True)
            soak.close_viewer()
    return results


def table(results: list[Cycle]) -> str:
    """Markdown: per interruption kind, and the memory / thread figures over the whole soak."""
    lines = ["| interruption | cycles | as expected | median s | max s | notes |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for kind in INTERRUPTIONS:
        rows = [r for r in results if r.interruption == kind]
        if not rows:
            lines.append(f"| {kind} | 0 | | | | not run (--kinds) |")
        if rows:
            secs = [r.seconds for r in rows]
            notes = "; ".join(sorted({r.message for r in rows if r.message}))
            lines.append(f"| {kind} | {len(rows)} | {sum(r.consistent for r in rows)}/{len(rows)} | "
                         f"{np.median(secs):.2f} | {max(secs):.2f} | {notes} |")
    rss = [r.rss_mb for r in results]
    kinds = len({r.interruption for r in results})
    warm = rss[min(len(rss) - 1, kinds):]  # after one round of each kind: imports and caches done
    growth = (warm[-1] - warm[0]) if len(warm) > 1 else 0.0
    lines += ["", f"Cycles: {len(results)}, hangs: 0 (a hang aborts the run), leaked worker threads: 0 "
                  f"(QThreadPool idle after every cycle). Python threads after each cycle: "
                  f"{min(r.threads for r in results)}-{max(r.threads for r in results)}.",
              f"Resident memory: {rss[0]:.0f} MB after the first cycle, {warm[0]:.0f} MB after the first round, "
              f"{rss[-1]:.0f} MB at the end (growth after the first round: {growth:+.0f} MB over "
              f"{max(0, len(warm) - 1)} cycles, {growth / max(1, len(warm) - 1):+.2f} MB per cycle)."]
    return "\n".join(lines)


def fuzz(cases: int, log=print) -> str:
    """Run tests/test_fuzz.py with about ``cases`` hypothesis cases in all; returns a markdown summary."""
    import math
    import os
    import re
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    listed = subprocess.run([sys.executable, "-m", "pytest", "tests/test_fuzz.py", "--collect-only", "-q"],
                            cwd=root, capture_output=True, text=True).stdout
    tests = sum(1 for line in listed.splitlines() if "::" in line)
    per_test = max(1, math.ceil(cases / max(1, tests)))
    env = {**os.environ, "SELFSEG_FUZZ_EXAMPLES": str(per_test), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "tests/test_fuzz.py", "-q", "-p", "no:randomly"],
                          cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    summary = next((line for line in reversed(done.stdout.splitlines()) if re.search(r"passed|failed", line)), "")
    log(done.stdout[-3000:])
    failures = re.findall(r"^FAILED (\S+)", done.stdout, re.M)
    return (f"Fuzz (hypothesis, tests/test_fuzz.py): {tests} tests x {per_test} examples = {tests * per_test} cases "
            f"in {seconds:.0f} s: `{summary.strip('= ')}`; unexplained failures: {len(failures)}"
            + (f" ({', '.join(failures)})" if failures else "") + ".")


def main(argv=None) -> int:
    from .report import machine, write_section

    ap = argparse.ArgumentParser(prog="python -m benchmarks soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--kinds", nargs="+", default=list(DEFAULT_KINDS), choices=INTERRUPTIONS,
                    help="interruptions to cycle through (default: all)")
    ap.add_argument("--fuzz", type=int, default=0, metavar="CASES",
                    help="instead of the soak, run the hypothesis fuzz with about CASES cases (1000 for the report)")
    ap.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.fuzz:
        command = "python -m benchmarks soak " + " ".join(argv if argv is not None else sys.argv[2:])
        report = f"Measured {machine()}.\nCommand: `{command.strip()}`\n\n{fuzz(args.fuzz, log=lambda m: None)}"
        print(report)
        if args.write:
            write_section("fuzz (bad shapes, dtypes, values, parameters)", report)
        return 0
    import napari
    import torch

    torch.set_num_threads(1)
    results = run(args.cycles, lambda: napari.Viewer(show=True), log=lambda m: print(m, file=sys.stderr, flush=True),
                  kinds=tuple(args.kinds))
    command = "python -m benchmarks soak " + " ".join(argv if argv is not None else sys.argv[2:])
    report = f"Measured {machine()}.\nCommand: `{command.strip()}`\n\n{table(results)}"
    print(report)
    if args.write:
        write_section("soak (interruptions during training)", report)
    return 0 if all(r.consistent for r in results) else 1
