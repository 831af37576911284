"""The Metrics panel as a user drives it: real viewer, real layers, under Xvfb."""
import time

import numpy as np
import pytest
from qtpy.QtWidgets import QApplication, QFileDialog

from napari_selfseg import metrics
from napari_selfseg._qt import MetricsPanel

from ..conftest import regions_image

pytestmark = pytest.mark.gui


def pair(size=48):
    """A ground-truth mask (square) and a prediction of three clusters, one overlapping it off by 4 px."""
    gt = np.zeros((size, size), np.uint8)
    gt[10:30, 10:30] = 1
    pred = np.ones((size, size), np.uint16)
    pred[14:34, 10:30] = 2
    pred[40:, :] = 3
    return pred, gt


@pytest.fixture
def viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(regions_image(48)[0], name="image", rgb=True)
    pred, gt = pair()
    viewer.add_labels(gt, name="mask")
    viewer.add_labels(pred, name="prediction")
    return viewer


@pytest.fixture
def panel(viewer, qtbot):
    widget = MetricsPanel(viewer)
    viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: bool(widget.rows), timeout=5000)
    return widget


def values(panel):
    return {(label, name): value for label, name, value in panel.rows}


def cell(panel, metric):
    for i in range(panel.table.rowCount()):
        if panel.table.item(i, 0).text() == "all" and panel.table.item(i, 1).text() == metric:
            return panel.table.item(i, 2).text()
    raise KeyError(metric)


def test_defaults_pick_the_new_layer_against_the_mask(panel):
    assert panel.pred_box.value.name == "prediction" and panel.gt_box.value.name == "mask"


def test_numbers_match_metrics_evaluate(panel, qtbot):
    pred, gt = pair()
    expected = metrics.evaluate(pred, gt, "best-overlap")
    assert expected["dsc"] == pytest.approx(0.8)
    got = values(panel)
    for name, value in expected.items():
        assert got[("all", name)] == pytest.approx(value)
    assert cell(panel, "dsc") == "0.8" and cell(panel, "iou") == f"{expected['iou']:.4g}"

    panel.rule_box.value = "multiclass"
    qtbot.waitUntil(lambda: ("1", "iou") in values(panel), timeout=5000)
    got = values(panel)
    assert got[("all", "ari")] == pytest.approx(metrics.adjusted_rand(pred, gt))
    (row,) = metrics.per_label_scores(pred, gt)
    assert got[("1", "iou")] == pytest.approx(row["iou"]) and got[("1", "matched label")] == 2
    assert got[("1", "pixels")] == 400


def test_table_follows_in_place_writes_and_refresh(panel, viewer, qtbot):
    layer = viewer.layers["prediction"]
    assert values(panel)[("all", "dsc")] < 0.9
    layer.data[14:34, 10:30] = 1  # the way the training panel streams frames in
    layer.data[10:30, 10:30] = 2
    layer.refresh()
    qtbot.waitUntil(lambda: values(panel)[("all", "dsc")] == 1.0, timeout=5000)
    assert cell(panel, "dsc") == "1"


def test_updates_are_throttled(panel, viewer, qtbot):
    layer = viewer.layers["prediction"]
    calls = []
    original = panel.evaluate
    panel._timer.timeout.disconnect()
    panel._timer.timeout.connect(lambda: (calls.append(1), original()))
    started = time.perf_counter()
    for i in range(20):
        layer.data[0, i] = 3
        layer.refresh()
        qtbot.wait(25)  # 20 writes over at least 0.5 s
    elapsed = time.perf_counter() - started
    qtbot.waitUntil(lambda: values(panel)[("all", "hd95")] > 0 and not panel._timer.isActive(), timeout=5000)
    assert 1 <= len(calls) <= elapsed / 0.5 + 2  # at most two a second, and the last write is evaluated
    assert values(panel) == {(r[0], r[1]): r[2] for r in panel.rows} and panel.rows
    assert len(calls) < 20


def test_shapes_as_ground_truth_and_a_shape_mismatch(panel, viewer, qtbot):
    shapes = viewer.add_shapes([np.array([[10, 10], [10, 29], [29, 29], [29, 10]])], shape_type="polygon",
                               name="drawn")
    panel.gt_box.value = shapes
    qtbot.waitUntil(lambda: bool(panel.rows) and panel.status.text().startswith("'prediction' vs 'drawn'"), timeout=5000)
    expected = metrics.evaluate(pair()[0], shapes.to_labels(labels_shape=(48, 48)), "best-overlap")
    assert values(panel)[("all", "dsc")] == pytest.approx(expected["dsc"])

    viewer.add_labels(np.zeros((30, 30), np.uint8), name="small")
    panel.gt_box.value = viewer.layers["small"]
    qtbot.waitUntil(lambda: not panel.rows, timeout=5000)
    assert "(48, 48)" in panel.status.text() and "(30, 30)" in panel.status.text()
    assert panel.table.rowCount() == 0


def test_missing_layer_is_said_in_the_status_line(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = MetricsPanel(viewer)
    widget.evaluate()
    assert "pick a prediction" in widget.status.text() and not widget.rows


def test_displayed_plane_or_whole_stack(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    pred, gt = pair()
    stack_gt = np.stack([gt, gt, np.zeros_like(gt)])
    viewer.add_labels(stack_gt, name="mask")
    viewer.add_labels(np.stack([pred, pred, pred]), name="prediction")
    viewer.dims.set_current_step(0, 1)
    widget = MetricsPanel(viewer)
    widget.evaluate()
    assert values(widget)[("all", "dsc")] == pytest.approx(metrics.dice(pred == 2, gt))
    widget.scope_box.value = "whole array"
    widget.evaluate()
    whole = metrics.evaluate(np.stack([pred] * 3), stack_gt, "best-overlap")
    assert values(widget)[("all", "dsc")] == pytest.approx(whole["dsc"])


def test_copy_and_save_csv(panel, tmp_path, monkeypatch):
    panel.copy_button.click()
    text = QApplication.clipboard().text()
    lines = text.splitlines()
    assert lines[0] == "label\tmetric\tvalue" and len(lines) == len(panel.rows) + 1
    assert "all\tdsc\t0.8" in lines

    target = tmp_path / "scores.csv"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), "CSV files (*.csv)"))
    panel.save_button.click()
    content = target.read_text().splitlines()
    assert content[0] == "label,metric,value" and "all,dsc,0.8" in content
    assert not list(tmp_path.glob(".*part*"))  # written atomically, nothing left behind
