"""The one dock panel every method gets: built from the method's parameter declaration.

The panel edits parameters, starts a :class:`~napari_selfseg.engine.Training` in a napari thread worker,
and draws the snapshots it yields: the worker computes, the GUI thread only copies finished label maps
into a Labels layer. Slider moves go to ``Training.update`` and act on the next step.
"""
from __future__ import annotations

import time
import warnings
from contextlib import contextmanager

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, SpinBox
from napari.layers import Image, Labels
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QCoreApplication, QEvent, Qt
from superqt import QCollapsible
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

from .. import api
from ..engine import Method, Snapshot, Training, resolve_device, start_warm_up
from ..imageprep import InputError, as_uint8
from ..labelmaps import ground_truth
from .frame_pacer import FramePacer
from .loss_plot import LossPlot
from .model_section import ModelSection
from .param_form import ParamForm
from .settings import load_settings, save_settings
from .sweep_section import SweepSection
from .planes import (displayed_index, image_plane, label_plane, spatial_shape, training_input, visible_region,
                     write_plane)
from .workers import panel_worker


# Frames drawn per second while training: several a second reads as live; more costs the worker
# throughput (each frame is a redraw, in software GL under Xvfb). The rate starts at FRAMES_PER_SECOND and
# then follows the measured drawing cost (FramePacer: drawing takes at most DRAWING_BUDGET of the time).
# A volume frame is a whole 3D label map to resize, match and upload: once a second.
FRAMES_PER_SECOND = 4.0
MIN_FRAMES_PER_SECOND, MAX_FRAMES_PER_SECOND = 2.0, 8.0
DRAWING_BUDGET = 0.08
VOLUME_FRAMES_PER_SECOND = 1.0
# posted behind a frame's repaint (both at low priority): its arrival ends the frame's drawing time
_FRAME_DRAWN = QEvent.Type(QEvent.registerEventType())
_LOW_PRIORITY = int(getattr(Qt.EventPriority.LowEventPriority, "value", Qt.EventPriority.LowEventPriority))
READOUT_SECONDS = 1.0  # status line, loss curve, thumbnail and activity bar


class MethodPanel(QWidget):
    """Dock panel for one method: layer choice, parameters, Train / Pause / Stop, live loss and labels."""

    def __init__(self, viewer, method: Method, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = viewer
        self.method = method
        self.training: Training | None = None
        self.worker = None
        self.labels_layer: Labels | None = None
        self.image_layer: Image | None = None  # the layer the current training reads
        self._index: tuple[int, ...] = ()
        self._region: tuple[slice, slice] | None = None  # the (Y, X) part of the plane trained on, if not all
        self._whole_plane_pending = False  # trained on a region: the whole plane is still to be labelled
        self._region_plane: np.ndarray | None = None  # the plane a region was cut from, as trained (uint8)
        self._progress = None
        self._pacer: FramePacer | None = None  # the running training's frame rate, from drawing costs
        self._frame_arrived = 0.0  # when the last frame reached the GUI thread (perf_counter seconds)
        self._window = None  # the main window, watched so closing the viewer ends a running training
        self._applying_preset = False
        self._labelling_slices = False  # the worker labels all slices (not a training)
        self._planes_left = 0  # of those
        self.model_section: ModelSection | None = None  # save / load / apply, for methods with a network
        self.sweep_section: SweepSection | None = None
        self._build()
        self._restore_settings()
        self._show_matching_preset()
        self._connect_viewer()
        self._set_running(False)
        start_warm_up()  # torch's one-time costs, paid while the user picks a layer rather than at Train

    # -- construction ---------------------------------------------------------------------------
    def _build(self) -> None:
        self.image_box = ComboBox(label="image", choices=self._image_layers, tooltip="Image layer to segment "
                                  "(for a stack, the displayed slice)")
        self.scribble_box = ComboBox(label="scribbles", choices=self._labels_layers, nullable=True,
                                     tooltip="Optional Labels layer of user scribbles: each scribble id is a class")
        self.truth_box = ComboBox(label="ground truth", choices=self._labels_layers,
                                  nullable=self.method.ground_truth != "required",
                                  tooltip="Labels layer of ground truth (0 = background). In a stack, only slices "
                                          "with painted labels count as annotated")
        self.preset_box = ComboBox(label="preset", choices=["(custom)", *self.method.presets],
                                   value="(custom)", tooltip="Fill the parameters from a named setting")
        self.device_box = ComboBox(label="device", choices=self._devices(), tooltip="auto = CUDA if present")
        self.seed_box = SpinBox(label="seed", value=0, min=0, max=2**31 - 1,
                                tooltip="Random seed: the same seed gives the same labels on CPU")
        self.region_box = CheckBox(text="train on the visible region", value=False,
                                   tooltip="For large images: zoom in on a typical part, train on what is in "
                                           "view (faster), then the network labels the whole plane")
        self.form = ParamForm(self.method.params, on_change=self._param_changed)
        self.preset_box.changed.connect(self._apply_preset)
        self.image_box.changed.connect(self._image_changed)

        self.train_button = QPushButton("Train")
        self.pause_button = QPushButton("Pause")
        self.stop_button = QPushButton("Stop")
        self.apply_button = QPushButton("Label all slices")
        self.defaults_button = QPushButton("Restore defaults")
        self.defaults_button.setToolTip("Reset every parameter to the method's default (settings are remembered "
                                        "between sessions otherwise)")
        self.defaults_button.clicked.connect(self.restore_defaults)
        self.train_button.setToolTip({"plane": "Train on the displayed plane of the chosen image",
                                      "stack": "Train on all slices of the chosen image (the displayed one streams)",
                                      "volume": "Train on the chosen 3D volume"}[self.method.inputs])
        self.stop_button.setToolTip("Stop training; the network's final full-resolution labels are kept")
        self.apply_button.setToolTip("Label every slice of the stack with the trained network (same ids)")
        self.train_button.clicked.connect(self.start)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button.clicked.connect(self.stop)
        self.apply_button.clicked.connect(self.label_all_slices)
        buttons = QHBoxLayout()
        for b in (self.train_button, self.pause_button, self.stop_button):
            buttons.addWidget(b)

        self.status = QLabel("Ready")
        self.status.setWordWrap(True)
        # a fixed size: new text each frame must not re-layout (and so repaint) the whole window
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.status.setFixedHeight(2 * self.status.fontMetrics().lineSpacing() + 4)
        self.plot = LossPlot()

        inner = QWidget()
        layout = QVBoxLayout(inner)
        title = QLabel(f"<b>{self.method.title}</b><br><small>{self.method.description}</small>")
        title.setWordWrap(True)
        layout.addWidget(title)
        for w in (self.image_box, self.scribble_box if self.method.uses_scribbles else None,
                  self.truth_box if self.method.ground_truth != "none" else None, self.preset_box,
                  self.device_box, self.seed_box, self.region_box if self.method.inputs == "plane" else None):
            if w is not None:
                layout.addWidget(_labelled(w))
        layout.addWidget(self.form.container.native)
        if self.form.advanced is not None:
            folded = QCollapsible("Advanced")
            folded.addWidget(self.form.advanced.native)
            layout.addWidget(folded)
        layout.addWidget(self.defaults_button)
        layout.addLayout(buttons)
        layout.addWidget(self.apply_button)
        self.model_section = ModelSection(self) if self.method.trains_network else None
        if self.model_section is not None:
            layout.addWidget(QLabel("<b>Model</b>"))
            layout.addWidget(self.model_section)
        self.sweep_section = SweepSection(self)
        sweep = QCollapsible("Parameter sweep")
        sweep.addWidget(self.sweep_section)
        layout.addWidget(sweep)
        layout.addWidget(self.status)
        layout.addWidget(self.plot)
        if not self.method.iterative:  # one step gives the answer: nothing to pause, no curve to watch
            self.pause_button.hide()
            self.plot.hide()
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(inner)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self.setMinimumWidth(340)

    def _connect_viewer(self) -> None:
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._refresh_choices)
        events.removing.connect(self._canvas_context_current)
        events.removed.connect(self._layer_removed)
        self.viewer.dims.events.current_step.connect(self._slice_changed)

    def _image_layers(self, *_):
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _labels_layers(self, *_):
        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Labels) and layer is not self.labels_layer]

    @staticmethod
    def _devices() -> list[str]:
        import torch

        return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    def _refresh_choices(self, *_):
        self.image_box.reset_choices()
        self.scribble_box.reset_choices()
        self.truth_box.reset_choices()

    def _slice_changed(self, *_) -> None:
        """Stack methods stream the slice the user looks at: follow the dims slider."""
        if self.worker is not None and self.training is not None and self.method.inputs == "stack":
            index = displayed_index(self.viewer, self.image_layer)
            if index[:-1] == self._index:
                self.training.set_preview(index[-1])

    def _image_changed(self, *_) -> None:
        if self.worker is None:
            self._set_running(False)  # "Label all slices" is offered for stacks only

    # -- parameters -----------------------------------------------------------------------------
    def _restore_settings(self) -> None:
        """Start from the values the user last trained with (invalid or outdated entries are skipped;
        parameters added since take the value those settings ran with, see Method.saved_values)."""
        for name, value in self.method.saved_values(load_settings(self.method.id)).items():
            if name in self.form.widgets:
                try:
                    self.form.set_values({name: value})
                except (ValueError, TypeError):
                    pass

    def restore_defaults(self) -> None:
        """Every parameter back to the method's default; the remembered settings are forgotten."""
        self.form.reset()
        self._show_matching_preset()
        save_settings(self.method.id, None)

    def _apply_preset(self, name: str) -> None:
        if name in self.method.presets:
            self._applying_preset = True
            try:
                self.form.reset()
                self.form.set_values(dict(self.method.presets[name]), notify=self.worker is not None)
            finally:
                self._applying_preset = False

    def set_params(self, values: dict) -> None:
        """Put parameter values into the form (a kept sweep result, a loaded model's record)."""
        self.form.set_values(values)
        self._show_matching_preset()

    def _show_matching_preset(self) -> None:
        """Name the preset the form now equals ("(custom)" if none) without applying it again."""
        try:
            name = self.method.preset_of(self.form.values()) or "(custom)"
        except ValueError:  # a value out of range while being typed
            name = "(custom)"
        if self.preset_box.value != name:
            self.preset_box.changed.disconnect(self._apply_preset)
            self.preset_box.value = name
            self.preset_box.changed.connect(self._apply_preset)

    def _param_changed(self, name: str, value) -> None:
        if not self._applying_preset:
            self._show_matching_preset()
        if self.worker is not None and self.training is not None and self.form.specs[name].live:
            try:
                self.training.update(**{name: value})
            except ValueError as err:
                show_error(str(err))

    # -- training -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start training on the displayed plane of the chosen image (no-op while one runs)."""
        if self.worker is not None:
            return
        try:
            self.training, self._index = self._new_training()
        except (InputError, ValueError) as err:
            show_error(f"{self.method.title}: {err}")
            self.status.setText(f"Cannot train: {err}")
            return
        save_settings(self.method.id, {n: w.value for n, w in self.form.widgets.items()})
        self.plot.clear()
        if self.model_section is not None:
            self.model_section.forget_loaded()  # Apply now uses this training
        self._readouts_shown = 0.0
        self._pacer = (None if self.method.inputs == "volume" else
                       FramePacer(FRAMES_PER_SECOND, DRAWING_BUDGET, MIN_FRAMES_PER_SECOND, MAX_FRAMES_PER_SECOND))
        self._progress = progress(total=self.training.stop_rules.max_iterations or 0,
                                  desc=f"{self.method.title} on {self.image_box.value.name}")
        still_activity_spinner(self.viewer)
        self.worker = panel_worker(self.training.snapshots, on_error=self._failed)
        self.worker.yielded.connect(self._show)
        self.worker.finished.connect(self._finished)
        self._set_running(True)
        self.status.setText("Training…")
        self.worker.start()

    def _new_training(self) -> tuple[Training, tuple[int, ...]]:
        image_layer = self.image_box.value
        if image_layer is None:
            raise InputError("open an image first (File > Open, or File > Open Sample > napari-selfseg)")
        self.image_layer = image_layer
        index = displayed_index(self.viewer, image_layer)
        data, index, preview = training_input(image_layer, index, self.method.inputs)
        scribbles = self._scribbles(image_layer, index)
        truth = self._ground_truth(image_layer, index)
        self._region = visible_region(image_layer) if self.method.inputs == "plane" and self.region_box.value \
            else None
        self._region_plane = None
        if self._region is not None:
            # the region and the whole plane must share one intensity scale: stretch the whole plane once
            data = self._region_plane = as_uint8(data)
            data, scribbles, truth = (None if a is None else a[self._region] for a in (data, scribbles, truth))
        params = self.form.values()
        threads = 1 if resolve_device(self.device_box.value).type == "cpu" else None
        run = Training(self.method, data, params, rgb=image_layer.rgb, scribbles=scribbles, labels=truth,
                       preview=preview, spacing=tuple(image_layer.scale[-3:]) if self.method.inputs == "volume"
                       else None, device=self.device_box.value, seed=int(self.seed_box.value),
                       stop_rules=self.method.stop_rules(params), threads=threads,
                       max_fps=VOLUME_FRAMES_PER_SECOND if self.method.inputs == "volume" else FRAMES_PER_SECOND)
        self._ensure_labels_layer(image_layer)
        if self._region is not None:  # no labels of an earlier run around the region while it trains
            write_plane(self.labels_layer, index, np.zeros(spatial_shape(image_layer)[-2:], np.uint16))
        return run, index

    def _scribbles(self, image_layer, index) -> np.ndarray | None:
        layer = self.scribble_box.value if self.method.uses_scribbles else None
        if layer is None:
            return None
        plane = label_plane(layer, index, spatial_shape(image_layer))
        if plane is None:
            raise InputError(f"scribble layer '{layer.name}' has shape {layer.data.shape}, "
                             f"the image {spatial_shape(image_layer)}")
        return plane if np.any(plane) else None

    def _ground_truth(self, image_layer, index) -> np.ndarray | None:
        """The chosen ground-truth layer's part under ``index``, -1 on slices nobody annotated."""
        layer = self.truth_box.value if self.method.ground_truth != "none" else None
        if layer is None:
            return None
        truth = label_plane(layer, index, spatial_shape(image_layer))
        if truth is None:
            raise InputError(f"ground-truth layer '{layer.name}' has shape {layer.data.shape}, "
                             f"the image {spatial_shape(image_layer)}")
        return ground_truth(truth, unannotated_slices=self.method.inputs != "plane")

    def _ensure_labels_layer(self, image_layer) -> None:
        """Reuse this panel's Labels layer if it still fits the image, else add a new one."""
        shape = spatial_shape(image_layer)
        layer = self.labels_layer
        if layer is None or layer not in self.viewer.layers or layer.data.shape != shape:
            data = np.zeros(shape, dtype=np.uint16)
            name = f"{image_layer.name} {self.method.title.lower()}"
            layer = self.viewer.add_labels(data, name=name, scale=image_layer.scale[-len(shape):],
                                           translate=image_layer.translate[-len(shape):], opacity=0.6)
            self.labels_layer = layer
            self._refresh_choices()

    def _show(self, snap: Snapshot) -> None:
        """GUI thread: copy a finished frame into the Labels layer, update readouts."""
        layer = self.labels_layer
        now = time.perf_counter()
        # With software OpenGL every repaint of a widget outside the canvas composites the whole window
        # once more (~10 ms per frame, taken from training): the readouts, the layer list and napari's
        # activity bar (which processes all pending events) change once a second, the canvas every frame.
        readouts = snap.final or now - self._readouts_shown >= READOUT_SECONDS
        if layer is not None and layer in self.viewer.layers:
            labels, where = snap.labels, self._index + snap.index
            if len(where) + labels.ndim > layer.data.ndim:  # a 2D image trained as a stack of one
                labels, where = labels.reshape(labels.shape[-2:]), ()
            write_plane(layer, where, labels, self._region, layer_list=None if readouts else self.viewer.layers)
        self.plot.add(snap.iteration, snap.losses, redraw=readouts)
        if snap.notice:
            show_warning(f"{self.method.title}: {snap.notice}")
        if self._pacer is not None and not snap.final:
            self._frame_arrived = now
            QCoreApplication.postEvent(self, QEvent(_FRAME_DRAWN), _LOW_PRIORITY)
        if readouts:
            self._show_readouts(snap)
            self._readouts_shown = now
        if snap.final and self._region is not None:
            self._whole_plane_pending = True
            self._label_whole_plane()
        if snap.final and layer is not None:
            layer.metadata["napari_selfseg"] = api.provenance(
                self.training, image=self.image_layer.name,
                plane_index=list(self._index), iterations=snap.iteration, final_losses=snap.losses,
                **({"trained_region": [[r.start, r.stop] for r in self._region]} if self._region else {}))

    def customEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        """A frame's repaint is done: pace the next frames to what drawing it cost."""
        if event.type() == _FRAME_DRAWN and self._pacer is not None and self.training is not None:
            self.training.max_fps = self._pacer.drawn(time.perf_counter() - self._frame_arrived)

    def _show_readouts(self, snap: Snapshot) -> None:
        """The status line and napari's activity bar for ``snap``."""
        if self._progress is not None:
            self._progress.update(snap.iteration - self._progress.n)
        rate = snap.iteration / snap.elapsed if snap.elapsed > 0 else 0.0
        state = f"done ({snap.stop_reason})" if snap.final else ("paused" if self.training.paused else "training")
        kind = "classes" if self.method.semantic else "clusters"
        self.status.setText(f"{state}: iteration {snap.iteration}, {snap.n_clusters} {kind}, "
                            f"{rate:.1f} it/s, {snap.elapsed:.1f} s")

    def _failed(self, err: Exception) -> None:
        show_error(f"{self.method.title} failed: {err}")
        self.status.setText(f"Failed: {err}")

    def _finished(self) -> None:
        self.worker = None
        if self._labelling_slices and self._planes_left == 0:
            self.status.setText(self.status.text().split(";")[0] + "; labelled with the trained network")
        self._labelling_slices = False
        self._set_running(False)
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._label_whole_plane()

    def _label_whole_plane(self) -> None:
        """After training on a visible region: once both the final frame and the worker's end have arrived
        (in either order), label the whole plane with the trained network."""
        if self._whole_plane_pending and self.worker is None:
            self._whole_plane_pending = False
            self.status.setText(self.status.text() + "; labelling the whole plane…")
            plane = self._region_plane
            self._label_planes([self._index], "Labelling the plane", read=lambda index: plane)

    def toggle_pause(self) -> None:
        if self.training is None or self.worker is None:
            return
        if self.training.paused:
            self.training.resume()
            self.pause_button.setText("Pause")
        else:
            self.training.pause()
            self.pause_button.setText("Resume")

    def stop(self) -> None:
        """Stop training; the final full-resolution frame is still computed and shown."""
        if self.worker is not None and self._labelling_slices:
            self.worker.quit()  # after the plane being labelled
            self.status.setText("Stopping after this plane…")
        elif self.training is not None and self.worker is not None:
            self.training.stop()
            self.status.setText("Stopping…")

    def cancel(self, wait: bool = False) -> None:
        """Abandon a running training without a final frame (closing the panel or viewer).

        ``wait`` blocks (up to 5 s) until the worker thread has ended, for teardown.
        """
        self._whole_plane_pending = False
        if self.training is not None:
            self.training.cancel()  # a training generator returns before its next step
        if self.worker is not None and self._labelling_slices:
            self.worker.quit()  # the slice-labelling generator stops after its current slice
        if self.worker is not None and wait:
            worker = self.worker
            # nothing of a cancelled run arrives later (napari's own slots, e.g. its progress bar, stay)
            try:
                worker.yielded.disconnect()
                worker.finished.disconnect(self._finished)
            except TypeError:  # not connected
                pass
            try:
                worker.await_workers(5000)
            except RuntimeError:  # a plane still being labelled: it ends on its own, its result unused
                pass
            self._finished()  # its "finished" signal will not arrive (disconnected, or the viewer is closing)
        if self.model_section is not None:
            self.model_section.cancel(wait)
        if self.sweep_section is not None:
            self.sweep_section.cancel(wait)

    def _set_running(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        self.pause_button.setEnabled(running and not self._labelling_slices)
        self.pause_button.setText("Pause")
        self.stop_button.setEnabled(running)
        self.form.set_training(running)
        for box in (self.image_box, self.scribble_box, self.truth_box, self.preset_box, self.device_box,
                    self.seed_box, self.region_box):
            box.enabled = not running
        self.defaults_button.setEnabled(not running)
        image = self.image_box.value
        # stack and volume methods label every slice themselves
        stack = image is not None and len(spatial_shape(image)) > 2 and self.method.inputs == "plane"
        trained = self.training is not None and self.training.trainer is not None
        self.apply_button.setVisible(stack)
        self.apply_button.setEnabled(stack and trained and not running)
        if self.model_section is not None:
            self.model_section.refresh(busy=running)
        if self.sweep_section is not None:
            self.sweep_section.refresh(busy=running)

    # -- after training -------------------------------------------------------------------------
    def label_all_slices(self) -> None:
        """Label every plane of the stack with the trained network, in a worker, streaming planes."""
        if self.image_layer is not None:
            self._label_planes(list(np.ndindex(*spatial_shape(self.image_layer)[:-2])), "Labelling slices")

    def _label_planes(self, planes: list[tuple[int, ...]], desc: str, read=None) -> None:
        """Label ``planes`` of the trained image with the trained network, in a worker, streaming planes;
        ``read(index)`` gives a plane (default: from the image layer)."""
        image_layer, run, layer = self.image_layer, self.training, self.labels_layer
        if image_layer is None or run is None or run.trainer is None or self.worker is not None \
                or layer is None or layer not in self.viewer.layers:
            return
        read = read or (lambda index: image_plane(image_layer, index))

        def label_planes():
            for index in planes:
                yield index, run.predict(read(index), rgb=image_layer.rgb)

        def write(item):
            index, labels = item
            if layer in self.viewer.layers:
                write_plane(layer, index, labels)
                self._planes_left -= 1

        self.worker = panel_worker(label_planes, on_error=self._failed,
                                   progress={"total": len(planes), "desc": desc})
        self.worker.yielded.connect(write)
        self.worker.finished.connect(self._finished)
        self._labelling_slices, self._planes_left = True, len(planes)
        self._set_running(True)
        self.worker.start()

    # -- lifecycle ------------------------------------------------------------------------------
    def _canvas_context_current(self, *_) -> None:
        """Before a layer goes: make the canvas's OpenGL context current (works around a napari 0.9.2 crash).

        napari's layer removal (``VispyCanvas._clean_and_update_scenegraph``) flushes the deletion of the
        layer's GL program, textures and buffers with ``context.finish()`` without making the canvas's
        context current: they are deleted in Qt's compositing context, which shares objects with it, and
        Mesa (llvmpipe/softpipe) then segfaults in glDrawArrays on one of the canvas's next draws.
        Private napari attributes: when they change this quietly does nothing.
        """
        with private_napari():
            self.viewer.window._qt_viewer.canvas._scene_canvas.set_current()

    def _layer_removed(self, event) -> None:
        removed = event.value
        if removed is self.labels_layer:
            self.labels_layer = None  # frames still arriving are dropped; the next Train adds a new one
        elif self.worker is not None and removed is self.image_layer:
            self.cancel()
            show_info(f"{self.method.title}: the image was removed, training cancelled")

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        window = self.window()
        if window is not self and window is not self._window:
            self._release_window()  # e.g. a floating dock first, then the main window
            window.installEventFilter(self)
            self._window = window
        super().showEvent(event)

    def _release_window(self) -> None:
        window, self._window = getattr(self, "_window", None), None
        if window is not None:
            window.removeEventFilter(self)

    def event(self, event) -> bool:  # noqa: N802 (Qt's name)
        # napari's dock close (x) un-parents the panel (remove_dock_widget) and sends no closeEvent
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self._release_window()
            self.cancel(wait=True)
        return super().event(event)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt's name)
        if obj is getattr(self, "_window", None) and event.type() == QEvent.Type.Close:
            self.cancel(wait=True)
            self._release_window()  # the filter holds the panel, and so the closed viewer, alive
        return False

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        self.cancel(wait=True)
        super().closeEvent(event)


def still_activity_spinner(viewer) -> None:
    """Stop the animated "in progress" gif of napari's activity button (the progress bar still updates).

    It repaints the window ~30 times a second; with software OpenGL (no GPU, remote desktops, Xvfb) each
    repaint composites the whole window while holding the GIL, which cost training a quarter of its speed
    (BENCHMARKS.md, speed). Private napari attributes: when they change this quietly does nothing.
    """
    with private_napari():
        viewer.window._qt_window._activity_dialog._toggleButton._inProgressIndicator.movie().setPaused(True)


@contextmanager
def private_napari():
    """Around a workaround that reaches into napari's private attributes: no deprecation warning, and no
    error once they change (the workaround then quietly does nothing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            yield
        except (AttributeError, RuntimeError):
            pass


def _labelled(widget) -> QWidget:
    """A magicgui widget with its label on the left, as a plain Qt row."""
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    label = QLabel(widget.label)
    label.setMinimumWidth(70)
    label.setToolTip(widget.tooltip or "")
    layout.addWidget(label)
    layout.addWidget(widget.native, 1)
    return row
