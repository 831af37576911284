"""The only package that imports Qt or napari widgets: one generic panel, built for each method."""
from napari.viewer import Viewer

from ..methods import get_method
from .method_panel import MethodPanel
from .metrics_panel import MetricsPanel  # noqa: F401  (a napari widget)


def panel_class(method_id: str) -> type[MethodPanel]:
    """A :class:`MethodPanel` subclass for ``method_id`` that napari can instantiate with the viewer."""

    def __init__(self, napari_viewer: Viewer, parent=None):  # napari injects the viewer by this name
        MethodPanel.__init__(self, napari_viewer, get_method(method_id), parent)

    name = "".join(part.title() for part in method_id.split("-")) + "Panel"
    return type(name, (MethodPanel,), {"__init__": __init__, "__module__": __name__})


FeatureClusteringPanel = panel_class("feature-clustering")
SgscnPanel = panel_class("sgscn")
AcwePanel = panel_class("acwe")
DeepClustering3dPanel = panel_class("deep-clustering-3d")
UnetPanel = panel_class("unet")
LganPanel = panel_class("lgan")
CyclePanel = panel_class("cycle")
KmeansPanel = panel_class("kmeans")
MultiOtsuPanel = panel_class("multi-otsu")
ChanVesePanel = panel_class("chan-vese")
