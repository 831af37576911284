"""Model bundles: one ``.safetensors`` file holding a trained network and everything needed to apply it.

The weights are safetensors tensors (loading never unpickles code); the method id, parameter values,
input normalisation, the cluster-id map (so every output of one model uses the same ids), package
version and training provenance are JSON in the file's metadata. A bundle trained on CUDA loads on
the CPU and the other way round. Writes are atomic: a crash mid-save leaves the previous file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .engine import IdMap, Method, Predictor, Training, apply_predictor, resolve_device
from .imageprep import InputError
from .io import atomic_path
from .methods import get_method
from .params import make_params

FORMAT = "napari-selfseg-model/1"
SUFFIX = ".safetensors"


@dataclass
class Model:
    """A trained model loaded from a bundle; :meth:`predict` labels new inputs."""

    method: Method
    params: Any
    predictor: Predictor
    id_map: IdMap
    record: dict[str, Any] = field(default_factory=dict)  # provenance of the training
    path: Path | None = None

    def predict(self, image: np.ndarray, rgb: bool | None = None) -> np.ndarray:
        """Labels of a raw plane / stack (plane and stack methods) or volume (volume methods), with the
        ids the model used when it was trained (uint8/uint16)."""
        with torch.inference_mode():
            return apply_predictor(self.method, self.predictor, self.params, self.id_map, image, rgb,
                                   channels=self.channels)

    @property
    def channels(self) -> int | None:
        """Channels of the prepared input the model was trained on (3 for RGB, 1 for gray)."""
        shape = self.record.get("data_shape")
        return int(shape[-1]) if shape else None


def model_path(path: str | Path) -> Path:
    """``path`` with the bundle suffix added when it has none."""
    path = Path(path)
    return path if path.suffix else path.with_suffix(SUFFIX)


def save_model(run: Training, path: str | Path, **provenance: Any) -> Path:
    """Write the finished ``run``'s model to ``path`` (``.safetensors`` added if no suffix); returns it."""
    from safetensors.torch import save_file

    state = run.state()
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in state.pop("tensors").items()}
    record = {
        "format": FORMAT,
        "method": run.method.id,
        "napari_selfseg_version": __version__,
        "torch_version": torch.__version__,
        "normalisation": "method" if run.method.prepare is not None else "engine: uint8 / 255, else 0.5-99.5 "
                                                                         "percentile stretch per channel",
        **state,
        "provenance": provenance,
    }
    target = model_path(path)
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata={"napari_selfseg": json.dumps(record, default=str)})
    return target


def read_record(path: str | Path) -> dict[str, Any]:
    """The JSON record of a bundle (method, params, provenance) without loading its weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        record = json.loads(meta["napari_selfseg"])
    except Exception as err:  # corrupt, truncated or someone else's file
        raise InputError(f"{path}: not a napari-selfseg model ({type(err).__name__}: {err})") from err
    if record.get("format") != FORMAT:
        raise InputError(f"{path}: unsupported model format {record.get('format')!r} (this version reads {FORMAT})")
    return record


def load_model(path: str | Path, device: str = "auto") -> Model:
    """Load a bundle written by :func:`save_model` onto ``device`` (auto = CUDA if present, else CPU)."""
    from safetensors.torch import load_file

    path = Path(path)
    record = read_record(path)
    try:
        method = get_method(record["method"])
    except ValueError as err:
        raise InputError(f"{path}: {err}") from None
    if method.load is None:
        raise InputError(f"{path}: method {method.id} has no network to load")
    try:
        params = make_params(method.params, method.saved_values(record["params"]))
    except ValueError as err:  # edited, or written by a version with other ranges
        raise InputError(f"{path}: its parameters do not fit {method.id} ({err})") from None
    dev = resolve_device(device)
    try:
        tensors = load_file(str(path), device="cpu")
        predictor = method.load(params, {k: v.to(dev) for k, v in tensors.items()}, dev)
    except Exception as err:
        raise InputError(f"{path}: the weights do not fit method {method.id} ({type(err).__name__}: {err})") from err
    return Model(method, params, predictor, IdMap.from_json(record.get("id_map", {})), record, path)
