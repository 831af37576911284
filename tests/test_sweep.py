"""Parameter sweeps: combinations, validation, and one result per setting."""
import numpy as np
import pytest

from napari_selfseg.methods import get_method
from napari_selfseg.params import make_params
from napari_selfseg.sweep import MAX_RUNS, parse_values, run_sweep, setting_name, sweep_settings

FC = get_method("feature-clustering")


def test_settings_are_every_combination_and_validated():
    base = make_params(FC.params, {})
    combos = sweep_settings(FC, base, {"mu": [0.5, 1.0, 2.0], "theta": [1.0, 2.0]})
    assert len(combos) == 6 and {"mu": 2.0, "theta": 1.0} in combos
    with pytest.raises(ValueError, match="at most"):
        sweep_settings(FC, base, {"mu": [0.1 * i for i in range(1, 5)], "theta": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="below its minimum"):
        sweep_settings(FC, base, {"mu": [-1.0]})
    with pytest.raises(ValueError, match="no parameter"):
        sweep_settings(FC, base, {"nope": [1]})
    assert MAX_RUNS == 9


def test_values_are_parsed_to_the_parameter_type():
    assert parse_values("0.5, 1,2", float) == [0.5, 1.0, 2.0]
    assert parse_values("true, off", bool) == [True, False]
    with pytest.raises(ValueError):
        parse_values("maybe", bool)
    assert setting_name({"mu": 0.5, "channels": 16}) == "mu=0.5 channels=16"


def test_each_setting_gives_its_own_labels(regions):
    image, _ = regions
    base = make_params(FC.params, {"channels": 8, "max_iterations": 10, "min_labels": 1, "start_steps": 0})
    combos = sweep_settings(FC, base, {"mu": [0.5, 5.0]})
    results = list(run_sweep(FC, image, base, combos, device="cpu"))
    assert [c for c, _ in results] == combos
    assert all(labels.shape == image.shape[:2] for _, labels in results)
    assert not np.array_equal(results[0][1], results[1][1])
