"""Fuzzing the engine and the API with hypothesis: shapes, dtypes, values and parameter values.

Every drawn case must end in labels of the input's spatial shape (unsigned ids) or in an explained
refusal: ``InputError`` for data, ``ValueError`` for parameters. Anything else is a bug. CI draws a few
cases per test; ``SELFSEG_FUZZ_EXAMPLES=1000 pytest tests/test_fuzz.py`` (or ``python -m benchmarks soak
--fuzz 1000``) runs the full count.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_selfseg import api
from napari_selfseg.imageprep import InputError
from napari_selfseg.methods import get_method, list_methods
from napari_selfseg.params import check_value, make_params, param_specs

from .test_bad_inputs import fast

EXAMPLES = int(os.environ.get("SELFSEG_FUZZ_EXAMPLES", "8"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES < 100,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = ["uint8", "uint16", "int16", "int64", "float16", "float32", "float64", "bool"]


# Sides are drawn from 1 px for every method: an input too small for a method must be refused with an
# InputError (under 2x2 pixels: imageprep; slices under 16x16 for U-Net / LGAN / cycle GAN:
# methods/supervised/data.MIN_SIDE), never crash it. About two cases in three have both sides of 16 px or
# more, so that the supervised methods also train (CI's 8 cases per test: 5 small, 3 of 16 px or more).
SIDES = {"any": st.integers(1, 20), "16 px or more": st.integers(16, 20)}


@st.composite
def images(draw, method: str):
    """(raw input of ``method``'s kind, colour?): shape, dtype and values (constant, extreme, any) drawn."""
    inputs = get_method(method).inputs
    lead = {"plane": (), "stack": (draw(st.integers(1, 3)),), "volume": (draw(st.integers(12, 16)),)}[inputs]
    sides = SIDES[draw(st.sampled_from(["any", "16 px or more", "16 px or more"]))]
    shape = lead + (draw(sides), draw(sides))
    colour = draw(st.sampled_from([None, None, 3, 4]))
    if colour:
        shape = shape + (colour,)
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    kind = draw(st.sampled_from(["noise", "constant", "two values", "extreme"]))
    if dtype == bool:
        data = rng.random(shape) > (0.5 if kind != "constant" else 2.0)
    else:
        info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
        lo, hi = float(info.min), float(info.max)
        if kind == "extreme":
            data = rng.choice([lo, hi, 0.0], size=shape)
        elif kind == "constant":
            data = np.full(shape, rng.uniform(max(lo, -1e3), min(hi, 1e3)))
        elif kind == "two values":
            data = np.where(rng.random(shape) > 0.5, min(hi, 100.0), max(lo, 0.0))
        else:
            data = rng.uniform(max(lo, -1e4), min(hi, 1e4), shape)
        data = data.astype(dtype)
    return data, bool(colour)


@st.composite
def params_of(draw, method: str):
    """Values for every declared parameter (inside its range or choices), then the method's FAST settings
    on top so a case stays cheap; the fuzzed ones are the weights, switches and choices."""
    values = {}
    for spec in param_specs(get_method(method).params):
        if spec.choices is not None:
            values[spec.name] = draw(st.sampled_from(list(spec.choices)))
        elif spec.type is bool:
            values[spec.name] = draw(st.booleans())
        elif spec.type is int and spec.low is not None:
            values[spec.name] = draw(st.integers(int(spec.low), int(spec.high)))
        elif spec.type is float and spec.low is not None:
            values[spec.name] = draw(st.floats(spec.low, spec.high, allow_nan=False))
    return {**values, **fast(method)}


def check_outcome(method: str, data: np.ndarray, colour: bool = False, **kwargs) -> None:
    """Segment ``data``; labels must have its spatial shape, else the refusal must be an InputError."""
    shape = data.shape[:-1] if colour else data.shape
    if get_method(method).ground_truth == "required":
        kwargs["labels"] = np.random.default_rng(0).integers(-1, 2, shape)
    try:
        labels = api.segment(data, method, device="cpu", threads=1, rgb=colour, **kwargs)
    except InputError:
        return
    assert labels.shape == shape, (labels.shape, shape)
    assert labels.dtype.kind == "u"


@pytest.mark.parametrize("method", list_methods())
def test_fuzz_images(method):
    @FUZZ
    @given(drawn=images(method))
    def case(drawn):
        data, colour = drawn
        check_outcome(method, data, colour, **fast(method))

    case()


@pytest.mark.parametrize("method", list_methods())
def test_fuzz_parameters_on_a_small_image(method):
    inputs = get_method(method).inputs
    rng = np.random.default_rng(0)
    lead = {"plane": (), "stack": (2,), "volume": (14,)}[inputs]
    image = rng.random(lead + (16, 16)).astype(np.float32)
    image[..., 4:12, 4:12] += 1.0

    @FUZZ
    @given(values=params_of(method))
    def case(values):
        check_outcome(method, image, **values)

    case()


@pytest.mark.parametrize("method", list_methods())
@FUZZ
@given(value=st.one_of(st.integers(-10**9, 10**9), st.floats(allow_nan=True, allow_infinity=True),
                       st.text(max_size=8), st.booleans(), st.none()))
def test_fuzz_any_value_for_any_parameter_is_validated(method, value):
    """Any value typed for any parameter is accepted within its declaration or refused with ValueError."""
    for spec in param_specs(get_method(method).params):
        try:
            accepted = check_value(spec, value)
        except (ValueError, TypeError) as err:
            assert not isinstance(err, TypeError), f"{spec.name}={value!r}: TypeError {err}"
            continue
        params = make_params(get_method(method).params, {spec.name: accepted})
        if spec.low is not None and spec.type in (int, float):
            assert spec.low <= getattr(params, spec.name) <= spec.high
