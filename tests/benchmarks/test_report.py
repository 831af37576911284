"""The machine line every benchmark table starts with."""
import numpy as np
import scipy

from benchmarks.report import machine


def test_machine_line_names_the_numeric_library_versions():
    """A figure that moves between two runs of the same code must be traceable to a library change."""
    line = machine()
    assert f"numpy {np.__version__}" in line and f"scipy {scipy.__version__}" in line
    assert "scikit-image " in line and "scikit-learn " in line and "torch " in line
