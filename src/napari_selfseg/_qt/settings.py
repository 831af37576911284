"""Panel settings that persist between napari sessions: one JSON file, one entry per method.

The folder is ``$NAPARI_SELFSEG_CONFIG`` if set, else ``~/.config/napari-selfseg``. A damaged or
outdated file is ignored (the panel then starts from the defaults), never an error.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..io import atomic_path


def settings_file() -> Path:
    folder = os.environ.get("NAPARI_SELFSEG_CONFIG") or Path.home() / ".config" / "napari-selfseg"
    return Path(folder) / "panels.json"


def _read_all() -> dict[str, Any]:
    try:
        data = json.loads(settings_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_settings(method_id: str) -> dict[str, Any]:
    """The saved parameter values of one method's panel ({} when none)."""
    values = _read_all().get(method_id, {})
    return values if isinstance(values, dict) else {}


def save_settings(method_id: str, values: dict[str, Any] | None) -> None:
    """Remember (or, with None, forget) one panel's values; best effort: a read-only home is no error."""
    data = _read_all()
    if values is None:
        data.pop(method_id, None)
    else:
        data[method_id] = values
    try:
        with atomic_path(settings_file()) as tmp:
            tmp.write_text(json.dumps(data, indent=1, default=str))
    except OSError:
        pass
