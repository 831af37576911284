"""Shared fixtures: small synthetic images with known regions, and the evaluation data folder."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

# A plugin that touches a layer from a worker thread must fail the tests, not pass silently.
os.environ.setdefault("NAPARI_ENSURE_PLUGIN_MAIN_THREAD", "1")
# Panel settings persist between sessions: tests keep theirs out of the user's home (and each other's way).
os.environ["NAPARI_SELFSEG_CONFIG"] = tempfile.mkdtemp(prefix="napari-selfseg-config-")


@pytest.fixture(autouse=True)
def _own_panel_settings(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NAPARI_SELFSEG_CONFIG", str(tmp_path_factory.mktemp("config")))

DATA = Path(os.environ.get("SELFSEG_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def regions_image(size: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An RGB ``(size, size, 3)`` uint8 image of four flat colour regions plus noise, and its truth."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((size, size), dtype=np.int64)
    half = size // 2
    truth[:half, half:] = 1
    truth[half:, :half] = 2
    truth[half:, half:] = 3
    colours = np.array([[220, 40, 40], [40, 200, 60], [40, 60, 220], [230, 230, 40]], dtype=float)
    image = colours[truth] + rng.normal(0, 12, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8), truth


@pytest.fixture
def regions():
    return regions_image()


@pytest.fixture
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"evaluation data not found at {DATA}")
    return DATA
