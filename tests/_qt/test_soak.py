"""Interruptions during training: one cycle of each kind of the soak benchmark (``python -m benchmarks soak``
runs 100): stop, close the panel, close the viewer, delete the image or the Labels layer, change the
displayed slice, a second training in another panel. No hang, no leaked worker, consistent labels."""
import numpy as np
import pytest
from qtpy.QtCore import QThreadPool

from benchmarks import soak

pytestmark = pytest.mark.gui


# The CI cycles (the benchmark runs every kind)
CI_KINDS = ("stop", "delete image", "delete labels", "change slice", "second panel", "close viewer")  # close panel: its own test below


@pytest.fixture
def new_viewer():
    """napari.Viewer factory; viewers still open at the end are closed (the soak closes some itself)."""
    import napari

    viewers = []

    def make():
        viewers.append(napari.Viewer(show=True))
        return viewers[-1]

    yield make
    for viewer in viewers:
        try:
            viewer.close()
        except RuntimeError:  # already closed (its Qt objects are gone)
            pass


def test_interruptions_leave_nothing_running_and_labels_consistent(new_viewer):
    results = soak.run(len(CI_KINDS), new_viewer, log=lambda m: None, kinds=CI_KINDS)
    assert [r.interruption for r in results] == list(CI_KINDS)
    bad = [(r.interruption, r.message) for r in results if not r.consistent or r.message]
    assert not bad, bad
    assert QThreadPool.globalInstance().activeThreadCount() == 0
    assert max(r.threads for r in results) - min(r.threads for r in results) <= 2  # no thread pile-up
    assert results[-1].rss_mb - results[0].rss_mb < 300


def _training_panel(new_viewer):
    s = soak.Soak(new_viewer)
    s.open()
    s.start()
    return s, s.panel()


def test_closing_the_panel_with_the_dock_button_cancels_its_training(new_viewer):
    s, panel = _training_panel(new_viewer)
    s.docks["feature-clustering"].destroyOnClose()  # what the dock's x button does
    try:
        soak.wait_until(lambda: panel.worker is None, timeout=5.0)
    finally:
        panel.cancel(wait=True)
    assert panel.training.stop_reason == "cancelled"


def test_labels_of_a_stopped_training_match_its_final_frame(new_viewer):
    s, panel = _training_panel(new_viewer)
    panel.stop()
    s.idle()
    assert np.array_equal(panel.labels_layer.data[panel._index], panel.labels_layer.data[1])
    assert panel.labels_layer.data[0].max() == 0 and panel.labels_layer.data[2].max() == 0  # other slices untouched


CRASH_AFTER_IMAGE_REMOVED = """
import napari, torch
torch.set_num_threads(1)
from benchmarks import soak
s = soak.Soak(lambda: napari.Viewer(show=True))
s.open(); panel = s.panel(); s.start()
s.viewer.layers.remove("stack")                      # the image goes while training runs
soak.wait_until(lambda: panel.worker is None)
s.viewer.add_image(soak.soak_image(), name="stack")  # the user opens it again and presses Train
s.start(); panel.stop(); s.idle()
print("survived")
"""


def test_training_again_after_the_image_was_removed_does_not_crash():
    """Regression: napari 0.9.2 deleted a removed layer's GL objects in the wrong OpenGL context and Mesa
    segfaulted on a later draw; the panel makes the canvas context current first (a subprocess: a
    segfault must not take the test run down)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CRASH_AFTER_IMAGE_REMOVED], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "survived" in done.stdout, done.stderr[-2000:]


def test_event_loop_stays_responsive_while_training(new_viewer):
    """A short run of ``python -m benchmarks latency``: the GUI never freezes while a panel trains (the
    benchmark measures p95 against the 50 ms target; under CI load only a freeze is asserted)."""
    from benchmarks import latency

    result = latency.measure(new_viewer(), seconds=2.0, size=64)
    assert result["frames"] >= 2
    assert len(result["training"]) > 20 and np.percentile(result["training"], 95) < 250
