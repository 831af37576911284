"""A small live plot of each loss term against the iteration (QPainter, no plotting dependency)."""
from __future__ import annotations

import math

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

_COLOURS = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176"]


class LossPlot(QWidget):
    """Loss terms (log scale) against iteration; :meth:`add` appends one snapshot's values."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Loss terms during training (log scale)")
        self.series: dict[str, list[tuple[int, float]]] = {}

    def clear(self) -> None:
        self.series = {}
        self.update()

    def add(self, iteration: int, losses: dict[str, float], redraw: bool = True) -> None:
        """Append one snapshot's loss terms; ``redraw=False`` keeps them for the next redraw."""
        for name, value in losses.items():
            if math.isfinite(value) and value > 0:
                self.series.setdefault(name, []).append((iteration, value))
        if redraw:
            self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), QColor("#262930"))
        points = [p for s in self.series.values() for p in s]
        if not points:
            painter.setPen(QColor("#888"))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "loss curve appears while training")
            return
        left, top, right, bottom = 8, 18, self.width() - 8, self.height() - 8
        x_max = max(p[0] for p in points) or 1
        logs = [math.log10(p[1]) for p in points]
        y_lo, y_hi = min(logs), max(logs)
        y_span = (y_hi - y_lo) or 1.0
        legend_x = left
        for i, (name, series) in enumerate(self.series.items()):
            colour = QColor(_COLOURS[i % len(_COLOURS)])
            painter.setPen(QPen(colour, 1.5))
            polygon = QPolygonF([
                QPointF(left + (right - left) * it / x_max,
                        bottom - (bottom - top) * (math.log10(v) - y_lo) / y_span)
                for it, v in series
            ])
            painter.drawPolyline(polygon)
            legend = f"{name} {series[-1][1]:.3g}"
            painter.drawText(legend_x, 13, legend)
            legend_x += painter.fontMetrics().horizontalAdvance(legend) + 12
