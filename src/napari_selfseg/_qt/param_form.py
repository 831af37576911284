"""A form of magicgui widgets built from a method's parameter declaration (no per-method widget code)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSlider, FloatSpinBox, Slider, Widget

from ..params import ParamSpec, make_params, param_specs


def widget_for(spec: ParamSpec) -> Widget:
    """The magicgui widget for one parameter: slider with readout, spin box, check box or combo box."""
    common = dict(name=spec.name, label=spec.label, tooltip=_tooltip(spec))
    if spec.is_choice:
        return ComboBox(value=spec.default, choices=list(spec.choices), **common)
    if spec.is_bool:
        return CheckBox(value=spec.default, text="", **common)
    if spec.type is int:
        return Slider(value=spec.default, min=int(spec.low), max=int(spec.high), step=int(spec.step or 1),
                      **common)
    if spec.log:  # magicgui's LogSlider shows its linear position, not the value: a spin box reads better
        return FloatSpinBox(value=spec.default, min=spec.low, max=spec.high, step=spec.low, **common)
    return FloatSlider(value=spec.default, min=spec.low, max=spec.high, step=spec.step or 0.01, **common)


def _tooltip(spec: ParamSpec) -> str:
    bounds = f" Range {spec.low:g} to {spec.high:g}." if spec.low is not None and spec.high is not None else ""
    live = "" if spec.live else " Fixed once training starts."
    return f"{spec.help}.{bounds}{live}".replace("..", ".")


class ParamForm:
    """The parameter widgets of one method, with values read back as a validated parameter instance.

    ``on_change(name, value)`` is called when the user edits a field.
    """

    def __init__(self, params_cls: type, on_change: Callable[[str, Any], None] | None = None):
        self.params_cls = params_cls
        self.specs = {s.name: s for s in param_specs(params_cls)}
        self.widgets = {name: widget_for(spec) for name, spec in self.specs.items()}
        basic = [w for n, w in self.widgets.items() if not self.specs[n].advanced]
        advanced = [w for n, w in self.widgets.items() if self.specs[n].advanced]
        self.container = Container(widgets=basic, labels=True)
        self.advanced = Container(widgets=advanced, labels=True) if advanced else None
        self._on_change = on_change
        self._quiet = False
        for name, widget in self.widgets.items():
            widget.changed.connect(lambda value, name=name: self._changed(name, value))

    def _changed(self, name: str, value: Any) -> None:
        if not self._quiet and self._on_change is not None:
            self._on_change(name, value)

    def values(self) -> Any:
        """The form's values as a validated parameter instance (ValueError if one is out of range)."""
        return make_params(self.params_cls, {n: w.value for n, w in self.widgets.items()})

    def set_values(self, values: dict[str, Any], notify: bool = False) -> None:
        """Set several fields at once (e.g. a preset); ``notify`` passes the edits to ``on_change``."""
        self._quiet = not notify
        try:
            for name, value in values.items():
                self.widgets[name].value = value
        finally:
            self._quiet = False

    def reset(self) -> None:
        defaults = dataclasses.asdict(make_params(self.params_cls, {}))
        self.set_values(defaults)

    def set_training(self, running: bool) -> None:
        """While training, only the fields that may change live stay editable."""
        for name, widget in self.widgets.items():
            widget.enabled = not running or self.specs[name].live
