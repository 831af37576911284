"""The generic panel as a user drives it: real viewer, real worker thread, under Xvfb."""
import json

import numpy as np
import pytest
from qtpy.QtCore import QThreadPool

from napari_selfseg._qt import FeatureClusteringPanel
from napari_selfseg.methods.feature_clustering import FeatureClusteringParams

from ..conftest import regions_image

pytestmark = pytest.mark.gui
FAST = {"channels": 16, "scale": 1.0, "max_iterations": 5000, "min_labels": 1, "mu": 2.0}  # runs until stopped


@pytest.fixture
def panel(make_napari_viewer, qtbot):
    yield from _panel(make_napari_viewer())


@pytest.fixture
def shown_panel(make_napari_viewer, qtbot):
    """In a shown viewer: napari tracks what is in view when it draws."""
    yield from _panel(make_napari_viewer(show=True))


def _panel(viewer):
    image, _ = regions_image(64)
    viewer.add_image(image, name="regions", rgb=True)
    widget = FeatureClusteringPanel(viewer)
    viewer.window.add_dock_widget(widget)
    widget.form.set_values(FAST)
    yield widget
    widget.cancel(wait=True)


def wait_idle(qtbot, panel, timeout=60000):
    qtbot.waitUntil(lambda: panel.worker is None, timeout=timeout)


def test_train_streams_frames_into_one_labels_layer(panel, qtbot):
    panel.form.set_values({"max_iterations": 40})
    frames = []
    panel.train_button.click()
    panel.worker.yielded.connect(frames.append)
    wait_idle(qtbot, panel)
    layer = panel.labels_layer
    assert layer is not None and layer.name == "regions feature clustering"
    assert layer.data.shape == (64, 64) and len(np.unique(layer.data)) > 1
    assert frames and frames[-1].final
    assert np.array_equal(layer.data, frames[-1].labels)
    meta = layer.metadata["napari_selfseg"]
    assert meta["method"] == "feature-clustering" and meta["params"]["channels"] == 16 and "seed" in meta
    assert panel.train_button.isEnabled()
    assert QThreadPool.globalInstance().waitForDone(5000)  # no leaked worker thread


def test_slider_moved_mid_run_is_honoured(panel, qtbot):
    frames = []
    panel.train_button.click()
    panel.worker.yielded.connect(frames.append)
    qtbot.waitUntil(lambda: len(frames) >= 1, timeout=30000)
    panel.form.widgets["mu"].value = 7.0
    assert panel.training.params.mu == 7.0
    count = len(frames)
    qtbot.waitUntil(lambda: len(frames) > count + 1, timeout=30000)
    assert frames[-1].params["mu"] == 7.0
    assert not panel.form.widgets["channels"].enabled  # fixed once training starts
    panel.stop()
    wait_idle(qtbot, panel)


def test_stop_mid_run_leaves_a_consistent_layer(panel, qtbot):
    frames = []
    panel.train_button.click()
    panel.worker.yielded.connect(frames.append)
    qtbot.waitUntil(lambda: len(frames) >= 2, timeout=30000)
    panel.stop()
    wait_idle(qtbot, panel)
    assert frames[-1].final and frames[-1].stop_reason == "stopped"
    assert np.array_equal(panel.labels_layer.data, frames[-1].labels)
    assert panel.train_button.isEnabled() and not panel.stop_button.isEnabled()


def test_pause_and_resume(panel, qtbot):
    frames = []
    panel.train_button.click()
    panel.worker.yielded.connect(frames.append)
    qtbot.waitUntil(lambda: len(frames) >= 1, timeout=30000)
    panel.toggle_pause()
    assert panel.training.paused and panel.pause_button.text() == "Resume"
    qtbot.wait(300)
    count = len(frames)
    qtbot.wait(300)
    assert len(frames) == count  # nothing trains while paused
    panel.toggle_pause()
    qtbot.waitUntil(lambda: len(frames) > count, timeout=30000)
    panel.stop()
    wait_idle(qtbot, panel)


def test_no_image_gives_a_message_not_a_crash(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = FeatureClusteringPanel(viewer)
    widget.train_button.click()
    assert widget.worker is None and "open an image" in widget.status.text()


def test_stack_trains_on_the_displayed_slice_then_labels_all(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, _ = regions_image(48)
    stack = np.stack([image.mean(-1)] * 4).astype(np.float32)
    viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 2)
    widget = FeatureClusteringPanel(viewer)
    widget.form.set_values({**FAST, "max_iterations": 30})
    widget.train_button.click()
    wait_idle(qtbot, widget)
    data = widget.labels_layer.data
    assert data.shape == stack.shape and data[2].max() > 0 and data[0].max() == 0
    assert widget.apply_button.isEnabled()
    widget.apply_button.click()
    wait_idle(qtbot, widget)
    assert all(widget.labels_layer.data[z].max() > 0 for z in range(4))
    assert np.array_equal(widget.labels_layer.data[0], widget.labels_layer.data[2])


def test_removing_the_image_cancels_training(panel, qtbot):
    panel.form.set_values({"max_iterations": 5000})  # long enough to still run when the image goes
    frames = []
    panel.train_button.click()
    panel.worker.yielded.connect(frames.append)
    qtbot.waitUntil(lambda: len(frames) >= 1, timeout=30000)
    panel.viewer.layers.remove("regions")
    wait_idle(qtbot, panel)
    assert panel.training.stop_reason == "cancelled"


def test_saved_labels_layer_reads_back(panel, qtbot, tmp_path):
    import tifffile

    panel.form.set_values({"max_iterations": 20})
    panel.train_button.click()
    wait_idle(qtbot, panel)
    paths = panel.labels_layer.save(str(tmp_path / "labels.tif"), plugin="napari-selfseg")
    saved = tifffile.imread(tmp_path / "labels.tif")
    assert saved.dtype in (np.uint8, np.uint16) and np.array_equal(saved, panel.labels_layer.data)
    sidecar = json.loads((tmp_path / "labels.json").read_text())
    assert sidecar["method"] == "feature-clustering" and len(paths) == 2


def test_paper_preset_fills_the_form_and_an_edit_returns_to_custom(panel):
    panel.preset_box.value = "paper"
    assert panel.form.widgets["channels"].value == 100 and panel.form.widgets["scale"].value == 1.0
    assert panel.preset_box.value == "paper"
    panel.form.widgets["mu"].value = 3.0
    assert panel.preset_box.value == "(custom)"


def test_preset_box_names_the_preset_the_form_equals(make_napari_viewer):
    """A fresh panel says it holds the interactive setting; an edit away and back shows it."""
    panel = FeatureClusteringPanel(make_napari_viewer())
    assert panel.preset_box.value == "interactive"
    default_mu = panel.form.values().mu
    panel.form.widgets["mu"].value = 3.0
    assert panel.preset_box.value == "(custom)"
    panel.form.widgets["mu"].value = default_mu
    assert panel.preset_box.value == "interactive"
    panel.set_params({"mu": 0.05})  # e.g. a kept sweep result
    assert panel.preset_box.value == "photos"
    panel.restore_defaults()
    assert panel.preset_box.value == "interactive"


def test_settings_persist_between_sessions_until_restored(panel, qtbot, make_napari_viewer):
    panel.form.set_values({"mu": 3.5, "max_iterations": 3})
    panel.train_button.click()
    wait_idle(qtbot, panel)
    again = FeatureClusteringPanel(make_napari_viewer())
    assert again.form.values().mu == 3.5  # remembered from the last training
    again.restore_defaults()
    default = FeatureClusteringParams().mu
    assert default != 3.5 and again.form.values().mu == default
    assert FeatureClusteringPanel(make_napari_viewer()).form.values().mu == default  # forgotten


def test_sweep_shows_results_side_by_side_and_keeps_one(panel, qtbot):
    sweep = panel.sweep_section
    sweep.first.value = "mu"
    sweep.first_values.value = "0.5, 4"
    sweep.second.value = "channels"
    sweep.second_values.value = "8"
    panel.form.set_values({"max_iterations": 5})
    sweep.start()
    qtbot.waitUntil(lambda: sweep.worker is None, timeout=60000)
    names = sorted(sweep.layers)
    assert names == ["regions mu=0.5 channels=8", "regions mu=4 channels=8"]
    assert panel.viewer.grid.enabled
    sweep.keep("regions mu=4 channels=8")
    layer_names = [layer.name for layer in panel.viewer.layers]
    assert "regions mu=0.5 channels=8" not in layer_names and "regions mu=4 channels=8" in layer_names
    assert panel.form.values().mu == 4.0 and panel.form.values().channels == 8
    assert not panel.viewer.grid.enabled


def test_train_on_the_visible_region_then_label_the_whole_plane(shown_panel, qtbot):
    panel = shown_panel
    viewer = panel.viewer
    viewer.camera.center = (0, 16, 16)
    viewer.camera.zoom *= 3  # only the top-left part of the 64x64 image in view
    qtbot.waitUntil(lambda: np.asarray(viewer.layers["regions"].corner_pixels)[1, 0] < 63, timeout=5000)
    panel.region_box.value = True
    panel.form.set_values({"max_iterations": 30})
    frames = []
    panel.train_button.click()
    panel.worker.yielded.connect(frames.append)
    qtbot.waitUntil(lambda: panel.worker is None and not panel._labelling_slices, timeout=60000)
    wait_idle(qtbot, panel)
    (y0, y1), (x0, x1) = panel.labels_layer.metadata["napari_selfseg"]["trained_region"]
    assert frames[-1].labels.shape == (y1 - y0, x1 - x0) and (y1 - y0) * (x1 - x0) < 64 * 64
    whole = panel.labels_layer.data
    assert np.array_equal(whole, panel.training.predict(viewer.layers["regions"].data, rgb=True))
    assert whole[-8:, -8:].any()  # outside the region: labelled by the trained network
    assert "labelled with the trained network" in panel.status.text()


def test_a_visible_region_too_small_to_train_on_is_refused(shown_panel, qtbot):
    panel = shown_panel
    panel.viewer.camera.zoom *= 40
    qtbot.waitUntil(lambda: np.ptp(np.asarray(panel.viewer.layers["regions"].corner_pixels)[:, 0]) < 16,
                    timeout=5000)
    panel.region_box.value = True
    panel.train_button.click()
    assert panel.worker is None and "zoom out" in panel.status.text()


def test_frame_rate_follows_the_drawing_cost(panel, qtbot):
    from napari_selfseg._qt.method_panel import MAX_FRAMES_PER_SECOND, MIN_FRAMES_PER_SECOND

    panel.form.set_values({"max_iterations": 5000, "min_labels": 1})
    frames = []
    panel.train_button.click()
    panel.worker.yielded.connect(frames.append)
    qtbot.waitUntil(lambda: panel._pacer.cost is not None, timeout=30000)  # a frame was drawn and timed
    assert MIN_FRAMES_PER_SECOND <= panel.training.max_fps <= MAX_FRAMES_PER_SECOND
    assert panel.training.max_fps == panel._pacer.fps  # the running training asks for the paced rate
    panel.stop_button.click()
    wait_idle(qtbot, panel)
    assert frames[-1].final and np.array_equal(panel.labels_layer.data, frames[-1].labels)


def test_settings_remembered_by_an_older_version_run_as_they_did(make_napari_viewer):
    from napari_selfseg._qt.settings import load_settings, save_settings

    remembered = {"mu": 0.7, "refine_superpixels": 1000}  # saved before refine_method etc. existed
    save_settings("feature-clustering", remembered)
    values = FeatureClusteringPanel(make_napari_viewer()).form.values()
    assert (values.mu, values.refine_superpixels, values.refine_method, values.start_steps) == (0.7, 1000, "slic", 0)
    assert values.merge_regions == 0 and values.merge_edges == 0
    save_settings("feature-clustering", None)
    assert load_settings("feature-clustering") == {}
    assert FeatureClusteringPanel(make_napari_viewer()).form.values().refine_method == "watershed"  # fresh start
