"""napari-selfseg: exploratory segmentation without (or with very few) labels, live in napari.

Headless use::

    from napari_selfseg import segment, list_methods
    labels = segment(image, method="feature-clustering", mu=2.0)

    from napari_selfseg import train, save_model, load_model
    run = train(volume, method="acwe", labels=masks)      # methods that learn a network
    save_model(run, "lungs.safetensors")
    labels = load_model("lungs.safetensors").predict(other_volume)
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-selfseg")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

from .api import apply, iter_segment, load_model, save_model, segment, train, training  # noqa: E402
from .engine import Snapshot, StopRules, Training  # noqa: E402
from .imageprep import InputError  # noqa: E402
from .methods import get_method, list_methods  # noqa: E402

__all__ = ["segment", "iter_segment", "training", "train", "save_model", "load_model", "apply", "list_methods", "get_method", "Training", "Snapshot",
           "StopRules", "InputError", "__version__"]
