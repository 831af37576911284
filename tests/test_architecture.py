"""Architecture contracts: compute code never imports Qt or napari; the manifest is valid and found."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_headless_api_does_not_import_qt():
    code = "import sys, napari_selfseg, napari_selfseg.cli; print(any(m.startswith(('qtpy','PyQt','napari.')) or m == 'napari' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_manifest_is_valid_and_names_every_method():
    from npe2 import PluginManifest

    from napari_selfseg.methods import get_method, list_methods

    manifest = PluginManifest.from_distribution("napari-selfseg")
    widget_names = {w.display_name for w in manifest.contributions.widgets}
    assert {get_method(m).title for m in list_methods()} <= widget_names
    assert manifest.contributions.sample_data
