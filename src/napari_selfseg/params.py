"""Parameter declarations: one dataclass per method, each field carrying what a slider needs.

A method's parameters are a plain dataclass whose fields are declared with :func:`param`. The metadata
(range, step, help text, whether it may change during training) is what the generic Qt panel, the CLI's
``--set key=value`` and validation read, so a new method never needs widget code.
"""
from __future__ import annotations

import dataclasses
import enum
import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, Mapping, get_type_hints

_META_KEY = "selfseg"


@dataclass(frozen=True)
class ParamSpec:
    """What the UI and validation know about one parameter."""

    name: str
    type: type
    default: Any
    label: str
    help: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    live: bool = True  # may change while training runs
    log: bool = False  # a log-scale slider (learning rates)
    choices: tuple[Any, ...] | None = None
    advanced: bool = False  # folded away in the panel
    group: str = ""  # a named group (e.g. "post-processing") is listed after the method's own fields

    @property
    def is_bool(self) -> bool:
        return self.type is bool

    @property
    def is_choice(self) -> bool:
        return self.choices is not None


def param(
    default: Any,
    *,
    help: str,
    low: float | None = None,
    high: float | None = None,
    step: float | None = None,
    live: bool = True,
    log: bool = False,
    choices: tuple[Any, ...] | None = None,
    label: str | None = None,
    advanced: bool = False,
    group: str = "",
) -> Any:
    """Declare a dataclass field with its range and help text (used like ``dataclasses.field``)."""
    meta = dict(help=help, low=low, high=high, step=step, live=live, log=log, choices=choices,
                label=label, advanced=advanced, group=group)
    return dataclasses.field(default=default, metadata={_META_KEY: meta})


def param_specs(params_cls: type) -> list[ParamSpec]:
    """The :class:`ParamSpec` of every declared field of a parameter dataclass, in declaration order."""
    hints = get_type_hints(params_cls)
    specs = []
    for f in fields(params_cls):
        meta = dict(f.metadata.get(_META_KEY, {}))
        label = meta.pop("label", None) or f.name.replace("_", " ")
        meta.setdefault("help", "")
        specs.append(ParamSpec(name=f.name, type=hints[f.name], default=f.default, label=label, **meta))
    return sorted(specs, key=lambda s: s.group != "")  # stable: declaration order within each part


def _coerce(spec: ParamSpec, value: Any) -> Any:
    """Convert a value (possibly a CLI string) to the field's type, or raise ValueError."""
    kind = spec.type
    if isinstance(value, str):
        text = value.strip()
        if kind is bool:
            lowered = text.lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(f"{spec.name}: expected true/false, got {value!r}")
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            return kind(text)
        if kind in (int, float):
            try:
                number = float(text)
            except ValueError:
                raise ValueError(f"{spec.name}: expected a number, got {value!r}") from None
            value = number
        elif kind is str:
            return text
    if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        # None, lists, complex numbers...: a ValueError that names the parameter, never a TypeError
        raise ValueError(f"{spec.name}: expected {'an integer' if kind is int else 'a number'}, got {value!r}")
    if kind is int:
        if not math.isfinite(float(value)) or float(value) != int(float(value)):
            raise ValueError(f"{spec.name}: expected an integer, got {value!r}")
        return int(float(value))
    if kind is float:
        return float(value)
    if kind is bool:
        is_flag = isinstance(value, (bool, numbers.Integral)) or type(value).__name__ in ("bool", "bool_")  # numpy too
        if not is_flag or value not in (0, 1):
            raise ValueError(f"{spec.name}: expected true/false, got {value!r}")
        return bool(value)
    return value


def check_value(spec: ParamSpec, value: Any) -> Any:
    """Coerce ``value`` to the field's type and check its range and choices; return it or raise ValueError."""
    value = _coerce(spec, value)
    if spec.choices is not None and value not in spec.choices:
        raise ValueError(f"{spec.name} must be one of {list(spec.choices)}, got {value!r}")
    if spec.type in (int, float):
        if value != value:  # NaN
            raise ValueError(f"{spec.name} must be a number, got NaN")
        if spec.low is not None and value < spec.low:
            raise ValueError(f"{spec.name}={value} is below its minimum {spec.low}")
        if spec.high is not None and value > spec.high:
            raise ValueError(f"{spec.name}={value} is above its maximum {spec.high}")
    return value


def make_params(params_cls: type, values: Mapping[str, Any] | None = None, base: Any = None) -> Any:
    """Build a validated parameter instance from ``values`` (unknown keys raise), starting from ``base``."""
    specs = {s.name: s for s in param_specs(params_cls)}
    current = dataclasses.asdict(base) if base is not None else {n: s.default for n, s in specs.items()}
    for key, value in (values or {}).items():
        name = key.replace("-", "_")
        if name not in specs:
            raise ValueError(f"unknown parameter {key!r}; known: {', '.join(specs)}")
        current[name] = check_value(specs[name], value)
    return params_cls(**current)


def parse_assignments(pairs: list[str]) -> dict[str, str]:
    """Parse CLI ``key=value`` strings into a dict (values stay strings; :func:`make_params` types them)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value, got {pair!r}")
        out[key.strip()] = value
    return out
