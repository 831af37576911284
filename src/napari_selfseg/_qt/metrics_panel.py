"""A dock panel that scores a prediction layer against a ground truth, live while a training streams.

The numbers are those of :func:`napari_selfseg.metrics.evaluate`; evaluation runs on the GUI thread,
throttled (at most one every 0.5 s, longer when one evaluation is slow) so painting and training stay fluid.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox
from napari.layers import Labels, Shapes
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (QApplication, QFileDialog, QHBoxLayout, QHeaderView, QLabel, QPushButton,
                            QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from .. import metrics
from ..io import atomic_path
from .method_panel import _labelled

RULES = ("best-overlap", "foreground", "multiclass")
SCOPES = ("displayed plane", "whole array")
COLUMNS = ("label", "metric", "value")
MIN_GAP_MS = 500  # at most two evaluations per second


class MetricsPanel(QWidget):
    """Pick a prediction and a ground truth, a matching rule and a scope; read the scores in a table."""

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.rows: list[tuple[str, str, float]] = []  # (label, metric, value) of the last evaluation
        self._watched: list = []  # event emitters connected to self.schedule
        self._last_error = ""
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(MIN_GAP_MS)
        self._timer.timeout.connect(self.evaluate)

        self.pred_box = ComboBox(label="prediction", choices=self._pred_layers,
                                 tooltip="Labels layer to score (e.g. the one a training streams into)")
        self.gt_box = ComboBox(label="ground truth", choices=self._gt_layers,
                               tooltip="Labels layer, or a Shapes layer (drawn shapes become labels)")
        self.rule_box = ComboBox(label="rule", choices=list(RULES), tooltip=(
            "best-overlap: the predicted cluster overlapping the GT foreground most is the foreground; "
            "foreground: prediction > 0 is the foreground; multiclass: NMI, ARI and each GT label's best match"))
        self.scope_box = ComboBox(label="scope", choices=list(SCOPES),
                                  tooltip="For a stack: score the displayed 2D plane or the whole array")
        for box in (self.pred_box, self.gt_box):
            box.changed.connect(self._rewire)
        for box in (self.rule_box, self.scope_box):
            box.changed.connect(self.schedule)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the table as tab-separated text")
        self.save_button = QPushButton("Save CSV…")
        self.copy_button.clicked.connect(self.copy)
        self.save_button.clicked.connect(lambda: self.save_csv())
        self.status = QLabel("Pick a prediction and a ground truth layer")
        self.status.setWordWrap(True)

        layout = QVBoxLayout(self)
        for box in (self.pred_box, self.gt_box, self.rule_box, self.scope_box):
            layout.addWidget(_labelled(box))
        layout.addWidget(self.table, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.copy_button)
        buttons.addWidget(self.save_button)
        layout.addLayout(buttons)
        layout.addWidget(self.status)

        events = self.viewer.layers.events
        events.inserted.connect(self._layer_inserted)
        for event in (events.removed, events.reordered):
            event.connect(self._reset_choices)
        self.viewer.dims.events.current_step.connect(self._dims_changed)
        self._pick_distinct()
        self._rewire()

    # -- layer choice ---------------------------------------------------------------------------
    def _pred_layers(self, *_):  # topmost first: a new training's layer is usually on top
        return [(layer.name, layer) for layer in reversed(self.viewer.layers) if isinstance(layer, Labels)]

    def _gt_layers(self, *_):
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, (Labels, Shapes))]

    def _reset_choices(self, *_):
        self.pred_box.reset_choices()
        self.gt_box.reset_choices()

    def _layer_inserted(self, event) -> None:
        self._reset_choices()
        if isinstance(event.value, Labels) and self.pred_box.value in (None, self.gt_box.value):
            self.pred_box.value = event.value  # a new Labels layer (a training's) is the likely prediction
        self._pick_distinct()

    def _pick_distinct(self) -> None:
        """Avoid scoring a layer against itself when another choice exists."""
        if self.gt_box.value is not None and self.gt_box.value is self.pred_box.value:
            others = [layer for _, layer in self._gt_layers() if layer is not self.pred_box.value]
            if others:
                self.gt_box.value = others[0]

    def _rewire(self, *_) -> None:
        """Watch the chosen layers' data: in-place writes + refresh(), assignments, painting, shape edits."""
        for emitter in self._watched:
            emitter.disconnect(self.schedule)
        layers = [layer for layer in (self.pred_box.value, self.gt_box.value) if layer is not None]
        self._watched = [getattr(layer.events, name) for layer in dict.fromkeys(layers)
                         for name in ("set_data", "labels_update", "data") if hasattr(layer.events, name)]
        for emitter in self._watched:
            emitter.connect(self.schedule)
        self.schedule()

    def _dims_changed(self, *_) -> None:
        if self.scope_box.value == SCOPES[0] and self.pred_box.value is not None and self.pred_box.value.ndim > 2:
            self.schedule()

    # -- evaluation -----------------------------------------------------------------------------
    def schedule(self, *_) -> None:
        """Ask for an evaluation; it runs once the throttle interval has passed since this first request."""
        if not self._timer.isActive():
            self._timer.start()

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, tuple[float, ...], str]:
        """Prediction and ground truth as same-shaped arrays (the displayed plane, or all), spacing, scope."""
        pred_layer, gt_layer = self.pred_box.value, self.gt_box.value
        if pred_layer is None or gt_layer is None:
            raise _NotChosen("pick a prediction (Labels) and a ground truth (Labels or Shapes) layer")
        if pred_layer is gt_layer:
            raise _NotChosen("the prediction and the ground truth are the same layer; pick two")
        pred = np.asarray(pred_layer.data[0] if pred_layer.multiscale else pred_layer.data)
        if isinstance(gt_layer, Shapes):
            shape = pred.shape if gt_layer.ndim == pred.ndim else pred.shape[-gt_layer.ndim:]
            gt = gt_layer.to_labels(labels_shape=shape)
        else:
            gt = np.asarray(gt_layer.data[0] if gt_layer.multiscale else gt_layer.data)
        where = "whole array"
        if pred.ndim > 2 and (self.scope_box.value == SCOPES[0] or gt.ndim == 2):
            index = self._displayed_index(pred_layer, pred.shape)
            pred, where = pred[index], f"plane {index}"
            gt = gt[index] if gt.ndim > 2 else gt
        if pred.shape != gt.shape:
            raise ValueError(f"'{pred_layer.name}' has shape {pred.shape}, '{gt_layer.name}' {gt.shape}: "
                             "they must match to be compared")
        return pred, gt, tuple(float(s) for s in pred_layer.scale[-pred.ndim:]), where

    def _displayed_index(self, layer, shape) -> tuple[int, ...]:
        lead = len(shape) - 2
        point = np.asarray(layer.world_to_data(np.asarray(self.viewer.dims.point)[-layer.ndim:]))
        return tuple(int(i) for i in np.clip(np.round(point[:lead]), 0, np.asarray(shape[:lead]) - 1))

    def evaluate(self) -> None:
        """Score now and fill the table (the timer calls this; tests and scripts may too)."""
        started = time.perf_counter()
        rule = self.rule_box.value
        try:
            pred, gt, spacing, where = self._arrays()
            overall = metrics.evaluate(pred, gt, rule, spacing=spacing)
            per_label = metrics.per_label_scores(pred, gt) if rule == "multiclass" else []
        except ValueError as err:
            self._fail(str(err), notify=not isinstance(err, _NotChosen))
            return
        rows = [("all", name, value) for name, value in overall.items()]
        for r in per_label:
            label = str(r["gt_label"])
            rows += [(label, "iou", r["iou"]), (label, "dice", r["dice"]),
                     (label, "matched label", r["pred_label"]), (label, "pixels", r["gt_pixels"])]
        self._show(rows)
        seconds = time.perf_counter() - started
        # a slow evaluation (a large volume) waits longer before the next, so the GUI keeps up
        self._timer.setInterval(max(MIN_GAP_MS, int(4000 * seconds)))
        self._last_error = ""
        self.status.setText(f"'{self.pred_box.value.name}' vs '{self.gt_box.value.name}', {rule}, {where} "
                            f"{pred.shape} ({1000 * seconds:.0f} ms)")

    def _fail(self, message: str, notify: bool) -> None:
        self.rows = []
        self.table.setRowCount(0)
        self.status.setText(message)
        if notify and message != self._last_error:  # once, not at every frame of a running training
            show_error(f"Metrics: {message}")
            self._last_error = message

    def _show(self, rows: list[tuple[str, str, float]]) -> None:
        self.rows = rows
        self.table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for j, text in enumerate(_texts(row, digits=4)):
                self.table.setItem(i, j, QTableWidgetItem(text))

    # -- export ---------------------------------------------------------------------------------
    def table_text(self, delimiter: str = "\t") -> str:
        """The table with a header row, values at full (6 significant digit) precision."""
        out = io.StringIO()
        writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(_texts(row, digits=6) for row in self.rows)
        return out.getvalue()

    def copy(self) -> None:
        QApplication.clipboard().setText(self.table_text("\t"))
        self.status.setText(f"Copied {len(self.rows)} rows")

    def save_csv(self, path: str | Path | None = None) -> Path | None:
        """Write the table to ``path`` (asked for with a file dialog when None), atomically."""
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save metrics", "metrics.csv", "CSV files (*.csv)")
            if not path:
                return None
        path = Path(path)
        try:
            with atomic_path(path) as tmp:
                tmp.write_text(self.table_text(","))
        except OSError as err:
            show_error(f"Metrics: could not write {path}: {err}")
            return None
        self.status.setText(f"Saved {len(self.rows)} rows to {path}")
        return path


class _NotChosen(ValueError):
    """No layer (or the same layer twice) is chosen: said in the status line, not as an error."""


def _texts(row: tuple[str, str, float], digits: int) -> tuple[str, str, str]:
    label, name, value = row
    number = f"{value:.{digits}g}" if isinstance(value, float) else str(value)
    return label, name, number
