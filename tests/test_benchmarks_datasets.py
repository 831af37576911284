"""Loaders in benchmarks/datasets.py: one sample of each set, shapes and dtypes (skipped without data)."""

import sys
from pathlib import Path

import numpy as np
import pytest

# benchmarks/ sits beside src/, not inside the installed package: make the repo root importable even
# when pytest is started as `pytest` (which, unlike `python -m pytest`, does not put the cwd on sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import datasets  # noqa: E402

pytestmark = pytest.mark.data


def first_sample(name):
    if not datasets.available(name):
        pytest.skip(f"{name} not found under {datasets.DATA_ROOT}")
    return next(datasets.load(name, limit=1))


def test_bsds500():
    s = first_sample("bsds500")
    assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.image.shape[2] == 3
    assert sorted(s.image.shape[:2]) == [321, 481]
    assert isinstance(s.gt, list) and len(s.gt) >= 4
    for seg in s.gt:
        assert seg.shape == s.image.shape[:2] and seg.dtype == np.uint16 and seg.min() == 1


@pytest.mark.parametrize(
    ("name", "image_dtype", "image_ndim"),
    [("ph2", np.uint8, 3), ("lung_ct_2d", np.int16, 2), ("isbi2012_em", np.uint8, 2)],
)
def test_binary_2d_sets(name, image_dtype, image_ndim):
    s = first_sample(name)
    assert s.image.dtype == image_dtype and s.image.ndim == image_ndim
    assert s.gt.dtype == bool and s.gt.shape == s.image.shape[:2]
    assert 0 < s.gt.mean() < 1  # both foreground and background present
    assert datasets.PROTOCOL[name] == "best-overlap"


def test_nuclei_2d_and_3d():
    if not datasets.available("nuclei"):
        pytest.skip("nuclei not found")
    s2, s3 = datasets.load("nuclei")
    assert s2.image.shape == s2.gt.shape == (512, 512)
    assert s3.image.shape == s3.gt.shape == (31, 61, 57)
    assert len(np.unique(s2.gt)) - 1 == 125  # instance count given in the data README


def test_limit_and_deterministic_order():
    if not datasets.available("isbi2012_em"):
        pytest.skip("isbi2012_em not found")
    names = [s.name for s in datasets.load("isbi2012_em")]
    assert names == sorted(names, key=int)
    assert [s.name for s in datasets.load("isbi2012_em", limit=2)] == names[:2]


def test_unknown_name_raises():
    with pytest.raises(ValueError, match="unknown data set"):
        datasets.available("imagenet")
    assert set(datasets.PROTOCOL) == set(datasets.NAMES)


@pytest.mark.parametrize("name", sorted(datasets.DEFECTIVE))
def test_known_defective_samples_exist(name):
    # a renamed or removed file would silently drop its exclusion from the benchmarks' side figures
    if not datasets.available(name):
        pytest.skip(f"{name} not found under {datasets.DATA_ROOT}")
    names = {s.name for s in datasets.load(name)}
    assert set(datasets.DEFECTIVE[name]) <= names
