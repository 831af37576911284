"""Parameter sweeps: train one method with every combination of a few values of two parameters and
compare the label maps side by side. No Qt: the panel shows the results in napari's grid mode.

On a GPU the runs train concurrently (small networks leave the device mostly idle); on the CPU they run
one after another, since concurrent runs would only share the same cores.
"""
from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .engine import Method, Training, resolve_device
from .params import make_params, param_specs

MAX_RUNS = 9


def parse_values(text: str, spec_type: type) -> list[Any]:
    """``"0.5, 1, 2"`` -> ``[0.5, 1.0, 2.0]`` converted to the parameter's type (bools: true/false)."""
    values = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        if spec_type is bool:
            if item.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError(f"{item!r} is not true or false")
            values.append(item.lower() in ("true", "1", "yes", "on"))
        else:
            values.append(spec_type(item))
    if not values:
        raise ValueError("give at least one value")
    return values


def sweep_settings(method: Method, base: Any, grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of ``grid`` ({parameter: values}, one or two parameters), each validated
    against ``base`` (a parameter instance). Raises ValueError for unknown names, bad values or more
    than :data:`MAX_RUNS` runs."""
    specs = {s.name: s for s in param_specs(method.params)}
    for name in grid:
        if name not in specs:
            raise ValueError(f"{method.id} has no parameter {name!r}")
    if not 1 <= len(grid) <= 2:
        raise ValueError("sweep one or two parameters")
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    if len(combos) > MAX_RUNS:
        raise ValueError(f"{len(combos)} runs asked for; a sweep runs at most {MAX_RUNS}")
    for combo in combos:
        make_params(method.params, combo, base=base)  # ValueError names the bad value
    return combos


def setting_name(combo: Mapping[str, Any]) -> str:
    """``mu=0.5 theta=2`` for a layer name."""
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in combo.items())


def run_sweep(method: Method, image: np.ndarray, base: Any, combos: list[dict[str, Any]], *, device: str = "auto",
              seed: int = 0, rgb: bool | None = None, threads: int | None = 1, **training: Any
              ) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """Train ``method`` once per setting; yield ``(setting, final labels)`` as each run ends.

    The same ``seed`` for every run, so the differences come from the parameters. ``training`` passes
    further :class:`~napari_selfseg.engine.Training` arguments (labels, preview, spacing...).
    """
    parallel = resolve_device(device).type == "cuda" and len(combos) > 1

    def one(combo):
        params = make_params(method.params, combo, base=base)
        run = Training(method, image, params, rgb=rgb, device=device, seed=seed, max_fps=0,
                       threads=None if parallel else threads, stop_rules=method.stop_rules(params), **training)
        return combo, run.run().labels

    if parallel:
        with ThreadPoolExecutor(max_workers=min(len(combos), 4)) as pool:
            for future in as_completed([pool.submit(one, c) for c in combos]):
                yield future.result()
    else:
        for combo in combos:
            yield one(combo)
