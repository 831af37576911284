"""Keep and reuse a trained network from any panel: save / load a model bundle, apply it to the displayed
slice, every slice, every time point, another layer or a folder of files. Work runs in a thread worker; the GUI thread only
writes finished planes into Labels layers."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
from magicgui.widgets import ComboBox
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..batch import label_file, model_labeller, model_record
from ..bundle import Model, load_model, save_model
from ..imageprep import InputError
from ..io import expand_inputs
from .planes import apply_units, displayed_index, image_plane, spatial_shape, write_plane
from .workers import panel_worker

# what "apply to" offers, and the part of a layer each labels (see planes.apply_units)
TARGETS = {"displayed slice": "displayed", "all slices": "slices", "all time points": "all",
           "another layer": "all", "a folder of files": None}


class ModelSection(QWidget):
    """The "Model" part of a method panel; ``panel`` is the owning :class:`MethodPanel`."""

    def __init__(self, panel, parent: QWidget | None = None):
        super().__init__(parent)
        self.panel = panel
        self.model: Model | None = None  # a loaded bundle; else the panel's finished training is used
        self.worker = None
        self.save_button = QPushButton("Save model…")
        self.load_button = QPushButton("Load model…")
        self.save_button.setToolTip("Write the trained network, its parameters and provenance to one file")
        self.load_button.setToolTip("Load a model saved from this panel or `napari-selfseg train`")
        self.target_box = ComboBox(label="apply to", choices=list(TARGETS), value="displayed slice",
                                   tooltip="Label other data with the trained network, without retraining: "
                                           "all slices = the displayed time point; all time points = the "
                                           "whole layer")
        self.layer_box = ComboBox(label="layer", choices=self._image_layers,
                                  tooltip="The image layer to label (a new Labels layer is added)")
        self.apply_button = QPushButton("Apply")
        self.status = QLabel("No model yet: train, or load one")
        self.status.setWordWrap(True)
        self.save_button.clicked.connect(lambda: self._ask_path(save=True))
        self.load_button.clicked.connect(lambda: self._ask_path(save=False))
        self.apply_button.clicked.connect(self._apply_clicked)
        self.target_box.changed.connect(self._target_changed)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(self.save_button)
        row.addWidget(self.load_button)
        layout.addLayout(row)
        for widget in (self.target_box, self.layer_box):
            layout.addWidget(widget.native)
        layout.addWidget(self.apply_button)
        layout.addWidget(self.status)
        for event in (panel.viewer.layers.events.inserted, panel.viewer.layers.events.removed):
            event.connect(lambda *_: self.layer_box.reset_choices())
        self._target_changed()
        self.refresh()

    def _image_layers(self, *_):
        return [(layer.name, layer) for layer in self.panel.viewer.layers if isinstance(layer, Image)]

    def _target_changed(self, *_) -> None:
        self.layer_box.visible = self.target_box.value == "another layer"

    # -- state ----------------------------------------------------------------------------------
    @property
    def trained(self) -> bool:
        run = self.panel.training
        return run is not None and run.trainer is not None

    def refresh(self, busy: bool = False) -> None:
        """Enable what makes sense now (called by the panel when training starts or ends)."""
        busy = busy or self.worker is not None
        self.save_button.setEnabled(self.trained and not busy)
        self.load_button.setEnabled(not busy)
        self.apply_button.setEnabled((self.trained or self.model is not None) and not busy)

    def predictor(self) -> Callable[[np.ndarray, bool | None], np.ndarray]:
        """``(raw image, rgb) -> labels`` of the loaded model, else of the panel's finished training."""
        if self.model is not None:
            return self.model.predict
        if self.trained:
            return self.panel.training.predict
        raise InputError("train first, or load a model")

    # -- save / load ----------------------------------------------------------------------------
    def _ask_path(self, save: bool) -> None:
        pattern = "napari-selfseg model (*.safetensors)"
        if save:
            path, _ = QFileDialog.getSaveFileName(self, "Save model", f"{self.panel.method.id}.safetensors", pattern)
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Load model", "", pattern)
        if path:
            self.save(path) if save else self.load(path)

    def save(self, path: str | Path) -> Path | None:
        """Save the panel's finished training as a model bundle; returns the file written."""
        from .. import api

        run = self.panel.training
        try:
            image = self.panel.image_layer.name if self.panel.image_layer is not None else None
            written = save_model(run, path, **api.provenance(run, image=image))
        except (RuntimeError, InputError, OSError) as err:
            return self._error(f"cannot save the model: {err}")
        self.status.setText(f"Saved {written.name}")
        return written

    def load(self, path: str | Path) -> Model | None:
        """Load a bundle of this panel's method; later applies use it until the next training."""
        try:
            model = load_model(path, self.panel.device_box.value)
        except (InputError, OSError) as err:
            return self._error(str(err))
        if model.method.id != self.panel.method.id:
            return self._error(f"{Path(path).name} is a {model.method.title} model; open that panel to use it")
        self.model = model
        # the parameters the model runs with (an older model's record may lack a newer one: Method.saved_values)
        params = dataclasses.asdict(model.params)
        self.panel.set_params({k: v for k, v in params.items() if k in self.panel.form.widgets})
        self.status.setText(f"Loaded {Path(path).name} (trained on data of shape {model.record.get('data_shape')})")
        self.refresh()
        return model

    def forget_loaded(self) -> None:
        """A new training replaces a loaded model as what Apply uses."""
        self.model = None

    def _error(self, message: str) -> None:
        show_error(f"{self.panel.method.title}: {message}")
        self.status.setText(message)
        return None

    # -- apply ----------------------------------------------------------------------------------
    def _apply_clicked(self) -> None:
        target = self.target_box.value
        if target == "a folder of files":
            folder = QFileDialog.getExistingDirectory(self, "Folder of images to label")
            if folder:
                out = QFileDialog.getExistingDirectory(self, "Folder for the label files", folder)
                if out:
                    self.apply_to_folder(folder, out)
            return
        layer = self.layer_box.value if target == "another layer" else self.panel.image_box.value
        self.apply_to_layer(layer, scope=TARGETS[target])

    def apply_to_layer(self, layer: Image | None, scope: str = "all"):
        """Label part of ``layer`` into a Labels layer, in a worker: the displayed plane, every slice of the
        displayed time point, or the whole layer (``scope`` "displayed" | "slices" | "all")."""
        if layer is None or self.worker is not None:
            return None
        try:
            predict = self.predictor()
        except InputError as err:
            return self._error(str(err))
        index = displayed_index(self.panel.viewer, layer)
        planes = apply_units(spatial_shape(layer), index, self.panel.method.inputs, scope)
        labels_layer = self._labels_layer_for(layer)
        # taken now: a training started meanwhile replaces the panel's network, not these labels' origin
        record = self._provenance(image=layer.name, scope=scope, planes=len(planes))

        def label():
            for where in planes:
                yield where, predict(image_plane(layer, where), layer.rgb)

        def write(item):
            where, labels = item
            if labels_layer in self.panel.viewer.layers:
                write_plane(labels_layer, where, labels)

        def done():
            # saved with the layer: which model labelled it (a reused layer's old record would mislead)
            labels_layer.metadata["napari_selfseg"] = record
            self.status.setText(f"Labelled {len(planes)} plane(s) of {layer.name}")

        return self._start(label, {"total": len(planes), "desc": "Applying model"}, write, done)

    def _provenance(self, **extra) -> dict:
        """What applied labels came from: the loaded model bundle, else the panel's finished training."""
        from .. import api

        if self.model is not None:
            return model_record(self.model, **extra)
        return api.provenance(self.panel.training, applied=True, **extra)

    def _labels_layer_for(self, layer: Image):
        shape = spatial_shape(layer)
        name = f"{layer.name} {self.panel.method.title.lower()}"
        if self.panel.labels_layer is not None and self.panel.labels_layer in self.panel.viewer.layers \
                and self.panel.image_layer is layer and self.panel.labels_layer.data.shape == shape:
            return self.panel.labels_layer
        earlier = self.panel.viewer.layers[name] if name in self.panel.viewer.layers else None
        if isinstance(earlier, Labels) and earlier.data.shape == shape:
            return earlier  # applied before: fill the same layer
        return self.panel.viewer.add_labels(np.zeros(shape, np.uint16), name=name, scale=layer.scale[-len(shape):],
                                            translate=layer.translate[-len(shape):], opacity=0.6)

    def apply_to_folder(self, folder: str | Path, outdir: str | Path):
        """Label every image file in ``folder`` into ``outdir`` (label TIFF / NIfTI + JSON sidecar each)."""
        if self.worker is not None:
            return None
        try:
            predict = self.predictor()
            paths = expand_inputs([str(folder)])
            if not paths:
                raise InputError(f"no image files in {folder}")
        except InputError as err:
            return self._error(str(err))
        labeller = model_labeller(self.model) if self.model is not None else _training_labeller(self.panel, predict)
        outcomes = []

        def label():
            for path in paths:
                yield label_file(path, Path(outdir), labeller)

        def done():
            failed = [o for o in outcomes if o.status == "failed"]
            message = f"{len(outcomes) - len(failed)} label files written to {outdir}"
            if failed:
                show_error(f"{message}; {len(failed)} failed: " + "; ".join(o.message for o in failed[:3]))
            else:
                show_info(message)
            self.status.setText(message + (f", {len(failed)} failed" if failed else ""))

        return self._start(label, {"total": len(paths), "desc": "Labelling files"}, outcomes.append, done)

    def _start(self, func, progress: dict, on_item, on_done: Callable[[], None]):
        failed = []

        def errored(err):
            failed.append(err)
            self._error(f"apply failed: {err}")

        self.worker = worker = panel_worker(func, on_error=errored, progress=progress)
        worker.yielded.connect(on_item)
        worker.finished.connect(self._finished)
        # an error keeps its message in the status line; a cancelled run is not reported as done
        worker.finished.connect(lambda: None if failed or worker.abort_requested else on_done())
        self.refresh(busy=True)
        self.status.setText("Applying…")
        worker.start()
        return worker

    def _finished(self) -> None:
        self.worker = None
        self.refresh()

    def cancel(self, wait: bool = False) -> None:
        if self.worker is not None:
            self.worker.quit()
            if wait:
                self.worker.await_workers(5000)


def _training_labeller(panel, predict):
    """A file labeller for the panel's own (unsaved) training."""
    from .. import api

    def label(image):
        return predict(image.data, image.rgb), api.provenance(panel.training, input=str(image.path), applied=True)

    return label
