"""The "Sweep" part of a method panel: two parameters, a few values each, one run per combination in a
worker, the label maps side by side in napari's grid mode with their settings in the layer names; the
user keeps one (its values go back into the panel) and the others are removed."""
from __future__ import annotations

import numpy as np
from magicgui.widgets import ComboBox, LineEdit
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..imageprep import InputError
from ..params import param_specs
from ..sweep import MAX_RUNS, parse_values, run_sweep, setting_name, sweep_settings
from .planes import displayed_index, training_input
from .workers import panel_worker

NONE = "(none)"


class SweepSection(QWidget):
    """Sweep one or two parameters of the owning :class:`MethodPanel`'s method."""

    def __init__(self, panel, parent: QWidget | None = None):
        super().__init__(parent)
        self.panel = panel
        self.worker = None
        self.layers: dict[str, tuple[dict, object]] = {}  # layer name -> (setting, layer)
        self._specs = {s.name: s for s in param_specs(panel.method.params) if s.is_choice or s.type in (int, float, bool)}
        names = list(self._specs)
        self.first = ComboBox(label="parameter", choices=names, value=names[0] if names else None)
        self.first_values = LineEdit(label="values", value="", tooltip="Comma-separated, e.g. 0.5, 1, 2")
        self.second = ComboBox(label="and", choices=[NONE, *names], value=NONE)
        self.second_values = LineEdit(label="values", value="")
        self.run_button = QPushButton(f"Run sweep (at most {MAX_RUNS} runs)")
        self.keep_box = ComboBox(label="keep", choices=self._result_names, nullable=True,
                                 tooltip="The result to keep: its settings go back into the panel")
        self.keep_button = QPushButton("Keep this one, remove the others")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.run_button.clicked.connect(self.start)
        self.keep_button.clicked.connect(lambda: self.keep(self.keep_box.value))
        self.first.changed.connect(lambda *_: self._suggest(self.first, self.first_values))
        self.second.changed.connect(lambda *_: self._suggest(self.second, self.second_values))
        self._suggest(self.first, self.first_values)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for a, b in ((self.first, self.first_values), (self.second, self.second_values)):
            row = QHBoxLayout()
            row.addWidget(a.native, 1)
            row.addWidget(b.native, 1)
            layout.addLayout(row)
        layout.addWidget(self.run_button)
        layout.addWidget(self.keep_box.native)
        layout.addWidget(self.keep_button)
        layout.addWidget(self.status)
        self.refresh()

    def _result_names(self, *_):
        return [name for name, (_, layer) in self.layers.items() if layer in self.panel.viewer.layers]

    def _suggest(self, box, values) -> None:
        """Prefill values around the panel's current one (half, same, double; both for a switch)."""
        spec = self._specs.get(box.value)
        if spec is None:
            values.value = ""
            return
        current = self.panel.form.widgets[spec.name].value
        if spec.is_choice:
            values.value = ", ".join(str(c) for c in spec.choices[:3])
        elif spec.is_bool:
            values.value = "false, true"
        else:
            cands = [current / 2, current, current * 2] if current else [spec.low, spec.high]
            cands = [min(max(c, spec.low), spec.high) if spec.low is not None else c for c in cands]
            cands = [int(round(c)) for c in cands] if spec.type is int else cands
            values.value = ", ".join(f"{c:g}" for c in dict.fromkeys(cands))

    def refresh(self, busy: bool = False) -> None:
        busy = busy or self.worker is not None
        self.run_button.setEnabled(not busy and self.panel.worker is None)
        self.keep_button.setEnabled(not busy and bool(self._result_names()))

    def grid(self) -> dict:
        """{parameter: values} from the form (ValueError with the reason if a value is bad)."""
        grid = {}
        for box, values in ((self.first, self.first_values), (self.second, self.second_values)):
            if box.value in (None, NONE):
                continue
            spec = self._specs[box.value]
            convert = str if spec.is_choice else spec.type
            grid[box.value] = parse_values(values.value, convert)
        return grid

    def start(self):
        """Validate the sweep and run it in a worker; results appear as they finish."""
        panel = self.panel
        if self.worker is not None or panel.worker is not None:
            return None
        try:
            layer = panel.image_box.value
            if layer is None:
                raise InputError("open an image first")
            base = panel.form.values()
            combos = sweep_settings(panel.method, base, self.grid())
            data, index, preview = training_input(layer, displayed_index(panel.viewer, layer), panel.method.inputs)
            truth = panel._ground_truth(layer, index)
        except (InputError, ValueError) as err:
            show_error(f"Sweep: {err}")
            self.status.setText(f"Cannot sweep: {err}")
            return None
        extra = {"labels": truth} if panel.method.ground_truth != "none" else {}
        if panel.method.inputs == "stack":
            extra["preview"] = preview
        self._clear_results()

        def runs():
            yield from run_sweep(panel.method, data, base, combos, device=panel.device_box.value,
                                 seed=int(panel.seed_box.value), rgb=layer.rgb, **extra)

        self.worker = panel_worker(runs, on_error=lambda err: self._error(f"sweep failed: {err}"),
                                   progress={"total": len(combos), "desc": "Sweep"})
        self.worker.yielded.connect(lambda item: self._add_result(layer, index, *item))
        self.worker.finished.connect(self._finished)
        self.status.setText(f"Sweeping {len(combos)} settings…")
        panel.viewer.grid.enabled = True
        self.refresh(busy=True)
        self.worker.start()
        return self.worker

    def _add_result(self, image_layer, index, combo, labels) -> None:
        name = f"{image_layer.name} {setting_name(combo)}"
        shape = image_layer.data.shape[:-1] if image_layer.rgb else image_layer.data.shape
        data = np.zeros(shape, labels.dtype)
        view = data[index] if index else data
        view[...] = labels.reshape(view.shape)  # a 2D image trained as a stack of one comes back (1, Y, X)
        layer = self.panel.viewer.add_labels(data, name=name, scale=image_layer.scale[-len(shape):],
                                             translate=image_layer.translate[-len(shape):])
        layer.metadata["napari_selfseg_sweep"] = dict(combo)
        self.layers[name] = (combo, layer)
        self.keep_box.reset_choices()

    def keep(self, name: str | None) -> None:
        """Keep one result: its settings go into the panel, the other results are removed, grid off."""
        if name not in self.layers:
            return
        combo, kept = self.layers.pop(name)
        self._clear_results()
        self.panel.set_params(combo)
        self.panel.viewer.grid.enabled = False
        self.status.setText(f"Kept {name}; its settings are in the panel")
        self.layers = {}
        self.keep_box.reset_choices()
        self.refresh()
        return kept

    def _clear_results(self) -> None:
        for _, layer in self.layers.values():
            if layer in self.panel.viewer.layers:
                self.panel.viewer.layers.remove(layer)
        self.layers = {}

    def _error(self, message: str) -> None:
        show_error(message)
        self.status.setText(message)

    def _finished(self) -> None:
        self.worker = None
        self.status.setText(f"{len(self._result_names())} results side by side: pick one to keep")
        self.keep_box.reset_choices()
        self.refresh()

    def cancel(self, wait: bool = False) -> None:
        if self.worker is not None:
            self.worker.quit()
            if wait:
                self.worker.await_workers(10000)
