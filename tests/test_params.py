from dataclasses import dataclass

import pytest

from napari_selfseg.params import make_params, param, param_specs, parse_assignments


@dataclass
class Demo:
    weight: float = param(1.0, low=0.0, high=5.0, help="a weight")
    count: int = param(3, low=1, high=10, live=False, help="a count")
    flag: bool = param(False, help="a switch")
    mode: str = param("a", choices=("a", "b"), help="a mode")


def test_specs_carry_ranges_help_and_liveness():
    specs = {s.name: s for s in param_specs(Demo)}
    assert specs["weight"].low == 0.0 and specs["weight"].high == 5.0 and specs["weight"].help == "a weight"
    assert specs["count"].type is int and not specs["count"].live
    assert specs["mode"].choices == ("a", "b")


def test_make_params_coerces_cli_strings():
    p = make_params(Demo, {"weight": "2.5", "count": "4", "flag": "yes", "mode": "b"})
    assert (p.weight, p.count, p.flag, p.mode) == (2.5, 4, True, "b")


@pytest.mark.parametrize("values, message", [
    ({"weight": 6}, "above its maximum"),
    ({"count": 0}, "below its minimum"),
    ({"count": 2.5}, "integer"),
    ({"mode": "c"}, "one of"),
    ({"weight": "abc"}, "number"),
    ({"nope": 1}, "unknown parameter"),
    ({"weight": float("nan")}, "NaN"),
])
def test_bad_values_raise_clear_errors(values, message):
    with pytest.raises(ValueError, match=message):
        make_params(Demo, values)


def test_overrides_start_from_base():
    base = make_params(Demo, {"weight": 4.0})
    assert make_params(Demo, {"count": 5}, base=base).weight == 4.0


def test_parse_assignments():
    assert parse_assignments(["mu=2", "theta = 1"]) == {"mu": "2", "theta": " 1"}
    assert parse_assignments(["mu=2"]) == {"mu": "2"}
    with pytest.raises(ValueError, match="key=value"):
        parse_assignments(["mu"])
