"""`python -m benchmarks quality --quick` completes and gives scores in range (skips without data)."""
import os

import numpy as np
import pytest

from benchmarks import datasets, quality
from benchmarks.__main__ import main, write_section


@pytest.mark.data
@pytest.mark.parametrize("name", ["bsds500", "ph2", "lung_ct_2d"])
def test_quick_quality_run_scores_are_in_range(name):
    if not datasets.available(name):
        pytest.skip(f"{name} not found under {datasets.DATA_ROOT}")
    results = quality.run({"feature-clustering": {"max_iterations": 5, "channels": 8}}, [name], limit=1,
                          log=lambda m: None)
    assert {r.border for r in results} == {False, True}
    for r in results:
        headline = quality.METRICS[datasets.PROTOCOL[name]][0]
        assert len(r.scores[headline]) == 1 and 0.0 <= r.scores[headline][0] <= 1.0
    assert "| " + name in quality.table(results)


def test_command_skips_absent_data_cleanly(monkeypatch, capsys):
    monkeypatch.setattr(datasets, "available", lambda name: False)
    assert main(["quality", "--quick", "--data", "ph2"]) == 0
    assert "skip ph2" in capsys.readouterr().err


def test_command_uses_a_throwaway_settings_folder_and_removes_it(monkeypatch, tmp_path):
    """Panels in a benchmark start from the defaults, without touching (or littering) the user's settings."""
    import tempfile

    monkeypatch.delenv("NAPARI_SELFSEG_CONFIG", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = []
    monkeypatch.setattr(datasets, "available", lambda name: seen.append(os.environ["NAPARI_SELFSEG_CONFIG"]))
    assert main(["quality", "--quick", "--data", "ph2"]) == 0
    assert seen and seen[0].startswith(str(tmp_path))
    assert "NAPARI_SELFSEG_CONFIG" not in os.environ and not list(tmp_path.iterdir())


def test_write_section_replaces_only_its_block(tmp_path):
    path = tmp_path / "B.md"
    path.write_text("# Benchmarks\n\nintro\n")
    write_section("a", "first", path)
    write_section("b", "other", path)
    write_section("a", "second", path)
    text = path.read_text()
    assert "intro" in text and "second" in text and "first" not in text and "other" in text
    assert np.char.count(text, "BEGIN a") == 1


@pytest.mark.data
def test_quick_command_runs_every_baseline(capsys):
    if not datasets.available("lung_ct_2d"):
        pytest.skip("lung_ct_2d not found")
    assert main(["quality", "--quick", "--methods", "kmeans", "multi-otsu", "chan-vese",
                 "--data", "lung_ct_2d"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| lung_ct_2d")]
    assert len(rows) == 3
    for row in rows:
        dsc = float(row.split("dsc ")[1].split(" ")[0])
        assert 0.0 <= dsc <= 1.0
