"""Bad inputs in every method's panel, as a user meets them: a napari notification that says why, the panel
stays usable (Train enabled, no worker left running) and the next good training still works.

Uncaught exceptions in Qt callbacks fail these tests (pytest-qt), so "no traceback dialog" is checked too.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from napari.utils.notifications import notification_manager
from qtpy.QtCore import QThreadPool
from qtpy.QtWidgets import QAbstractSpinBox

from napari_selfseg import imageprep
from napari_selfseg._qt import panel_class
from napari_selfseg.methods import get_method, list_methods

from ..test_bad_inputs import base_image, fast, truth_for

pytestmark = pytest.mark.gui


def wait_idle(qtbot, panel, timeout=60000):
    qtbot.waitUntil(lambda: panel.worker is None, timeout=timeout)


class Session:
    """A viewer with one method's panel docked, and helpers to try an input the way a user would."""

    def __init__(self, viewer, qtbot):
        self.viewer, self.qtbot, self.panel, self.dock = viewer, qtbot, None, None

    def open_panel(self, method: str):
        """Dock ``method``'s panel (closing the previous one, as a user switching panels would)."""
        if self.panel is not None:
            self.panel.cancel(wait=True)
            self.viewer.window.remove_dock_widget(self.dock)
        self.method = get_method(method)
        self.panel = panel_class(method)(self.viewer)
        self.dock = self.viewer.window.add_dock_widget(self.panel)
        self.panel.form.set_values(fast(method))
        return self.panel

    def layer(self, data, name, **kwargs):
        layer = self.viewer.layers[name] if name in self.viewer.layers else \
            self.viewer.add_image(data, name=name, **kwargs)
        self.panel.image_box.value = layer
        return layer

    def truth(self, data, name="truth"):
        layer = self.viewer.layers[name] if name in self.viewer.layers else self.viewer.add_labels(data, name=name)
        if self.method.ground_truth != "none":
            self.panel.truth_box.value = layer
        return layer

    def train(self) -> list[str]:
        """Press Train, wait until nothing runs; return the notifications it raised."""
        seen = len(notification_manager.records)
        self.panel.train_button.click()
        wait_idle(self.qtbot, self.panel)
        return [str(n.message) for n in notification_manager.records[seen:]]

    def expect_message(self, pattern: str) -> None:
        messages = self.train()
        assert any(re.search(pattern, m) for m in messages), f"{self.method.id}: no notification matching " \
                                                             f"{pattern!r}: {messages}"
        assert re.search(pattern, self.panel.status.text()) or "failed" in self.panel.status.text().lower()
        self.assert_usable()

    def assert_usable(self) -> None:
        assert self.panel.worker is None and self.panel.train_button.isEnabled()
        assert not self.panel.stop_button.isEnabled() and self.panel.image_box.enabled


@pytest.fixture
def session(make_napari_viewer, qtbot):
    s = Session(make_napari_viewer(), qtbot)
    yield s
    if s.panel is not None:
        s.panel.cancel(wait=True)


def by_input_kind(methods):
    """Methods grouped by what they train on, so each group shares one set of layers."""
    groups = {}
    for m in methods:
        groups.setdefault(get_method(m).inputs, []).append(m)
    return groups


def test_bad_inputs_give_a_message_and_the_panel_stays_usable(session, monkeypatch):
    """Every panel: NaN, 1 x N, beyond memory, ground truth of another shape or empty; then a good run.
    (One viewer for all panels: a viewer costs seconds under Xvfb.)"""
    for inputs, methods in by_input_kind(list_methods()).items():
        session.viewer.layers.clear()
        for method in methods:
            session.open_panel(method)
            check_bad_inputs(session, monkeypatch)


def check_bad_inputs(session, monkeypatch):
    method, base = session.method, base_image(session.method.id)
    truth = session.truth(truth_for(base)) if method.ground_truth == "required" else None
    bad = base.copy()
    bad[..., 2, 2] = np.nan
    session.layer(bad, "nan")
    session.expect_message("NaN or infinite")
    session.layer(base[..., :1, :], "thin")
    if method.ground_truth == "required":  # ground truth of the thin image's shape, so the image is at fault
        session.truth(truth_for(base)[..., :1, :], "thin truth")
    session.expect_message("too small")
    session.layer(base, "good")
    if method.ground_truth == "required":
        session.panel.truth_box.value = truth
    with monkeypatch.context() as patch:  # beyond memory: the free memory is mocked, nothing big is allocated
        patch.setattr(imageprep, "available_memory", lambda: 1000)
        session.expect_message("needs about .* free")
    if method.ground_truth != "none":
        session.truth(np.zeros((5, 7), np.int32), "other shape")
        session.expect_message("shape")
        session.panel.truth_box.value = truth
    if method.ground_truth == "required":
        session.truth(np.zeros(base.shape, np.int32), "empty")
        session.expect_message("ground truth|Labels|class")
        session.panel.truth_box.value = truth
    # after all that, a good input still trains to its final frame
    messages = session.train()
    assert not any("failed" in m for m in messages), messages
    labels = session.panel.labels_layer
    assert labels is not None and labels.data.shape == base.shape
    assert labels.data.max() > 0 or method.semantic  # 3 steps of a U-Net may still say "all background"
    assert "napari_selfseg" in labels.metadata  # written with the final frame
    session.assert_usable()
    assert QThreadPool.globalInstance().waitForDone(5000)


# one method of each input kind and ground-truth use; the headless tests cover every method and type
ODD_TYPES_METHODS = ["kmeans", "acwe", "unet", "deep-clustering-3d"]


def test_odd_types_and_shapes_train_on_the_displayed_data(session):
    """uint16, Hounsfield floats, a dask array, an extra time axis and RGBA all train (dtype and layout
    handling is the panel's, shared by all methods of an input kind)."""
    for method in ODD_TYPES_METHODS:
        session.viewer.layers.clear()
        session.open_panel(method)
        check_odd_types(session, method)


def check_odd_types(session, method):
    import dask.array as da

    base = base_image(method)
    inputs = {
        "uint16": (base * 3000 + 100).astype(np.uint16),
        "hounsfield": base * 2000 - 1000,
        "dask": da.from_array(base, chunks=10),
        "time series": np.stack([base, base[..., ::-1]]),
        "rgba": (np.stack([base] * 3 + [np.ones_like(base)], -1).clip(0, 1) * 255).astype(np.uint8),
    }
    if method != "kmeans":  # dtypes are prepared alike for every input kind: only the layout cases repeat
        inputs = {k: v for k, v in inputs.items() if k in ("dask", "time series")}
    if method == "deep-clustering-3d":
        inputs.pop("time series")  # a 4D volume trains the same way, only slower
    truth = truth_for(base)
    for name, data in inputs.items():
        layer = session.layer(data, name, rgb=name == "rgba")
        if session.method.ground_truth == "required":
            session.truth(np.stack([truth, truth]) if name == "time series" else truth,
                          "truth 4d" if name == "time series" else "truth")
        messages = session.train()
        assert not any(re.search("failed|Cannot", m) for m in messages), (name, messages)
        labels = session.panel.labels_layer
        spatial = layer.data.shape[:-1] if layer.rgb else layer.data.shape
        assert labels.data.shape == spatial and (labels.data.max() > 0 or session.method.semantic), name
        assert "napari_selfseg" in labels.metadata, name
        session.assert_usable()


def test_a_value_typed_beyond_the_range_is_clamped(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    for method in ("feature-clustering", "unet"):
        check_typed_values(panel_class(method)(viewer), qtbot)


def check_typed_values(panel, qtbot):
    for name, widget in panel.form.widgets.items():
        spec = panel.form.specs[name]
        if spec.high is None:
            continue
        box = widget.native if isinstance(widget.native, QAbstractSpinBox) else \
            widget.native.findChild(QAbstractSpinBox)
        if box is None:
            continue
        box.lineEdit().selectAll()
        qtbot.keyClicks(box.lineEdit(), str(spec.high * 10 + 7))
        box.interpretText()
        box.editingFinished.emit()
        assert spec.low <= widget.value <= spec.high, name
    panel.form.values()  # every value validates


def test_corrupt_model_file_is_refused_in_every_panel_with_a_network(make_napari_viewer, tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # a header that is not a model
    viewer = make_napari_viewer()
    for method in list_methods():
        if not get_method(method).trains_network:
            continue
        panel = panel_class(method)(viewer)
        seen = len(notification_manager.records)
        assert panel.model_section.load(bad) is None
        assert "not a napari-selfseg model" in panel.model_section.status.text()
        assert any("not a napari-selfseg model" in str(n.message) for n in notification_manager.records[seen:])
        assert panel.train_button.isEnabled() and panel.model_section.load_button.isEnabled()
