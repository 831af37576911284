"""Sample images for File > Open Sample > napari-selfseg (bundled with scikit-image, no download)."""
from __future__ import annotations

from skimage import data


def coffee():
    """A 400x600 RGB photo of a coffee cup: a few clear regions, a good first run for feature clustering."""
    return [(data.coffee(), {"name": "coffee", "rgb": True})]


def immunohistochemistry():
    """A 512x512 RGB immunohistochemistry (IHC) stain: nuclei and stained tissue."""
    return [(data.immunohistochemistry(), {"name": "immunohistochemistry", "rgb": True})]
