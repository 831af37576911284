"""Loaders for the evaluation data sets in ``../shared/data`` (no Qt, no napari).

The data live outside the repository (research-only terms); ``DATA_ROOT`` points there and can be
overridden with the environment variable ``SELFSEG_DATA``. ``load(name)`` yields :class:`Sample`
objects in a deterministic (natural name) order; ``PROTOCOL[name]`` is the
:func:`napari_selfseg.metrics.evaluate` rule to score each set with.

Axis order: 2D images are ``(Y, X)`` or ``(Y, X, C)``; volumes are ``(Z, Y, X)`` (``(Z, Y, X, C)``
with channels). NIfTI files store voxels as ``(X, Y, Z)`` (i, j, k); they are transposed to
``(Z, Y, X)`` here, and their voxel sizes reversed to match, so that every volume looks like a
TIFF stack to the rest of the project.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATA_ROOT = Path(
    os.environ.get("SELFSEG_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
).resolve()

# Metrics rule (napari_selfseg.metrics.evaluate) matching each set's published evaluation protocol.
PROTOCOL: dict[str, str] = {
    "bsds500": "bsds",
    "ph2": "best-overlap",
    "lung_ct_2d": "best-overlap",
    "isbi2012_em": "best-overlap",
    "brats_mri_3d": "best-overlap",
    "nuclei": "multiclass",
    "ct_abdomen_small": "multiclass",
}

NAMES = tuple(PROTOCOL)

# Development samples whose ground truth is visibly wrong, found while reading per-image errors. They stay
# in every main figure; the active-contour benchmark also reports its means without them.
DEFECTIVE: dict[str, dict[str, str]] = {
    "lung_ct_2d": {"ID_0052_Z_0108": "the lung mask also covers the air around the body inside the scanner's "
                                     "field of view"},
}


@dataclass
class Sample:
    """One evaluation item.

    name: file stem or patient id; image: the input array; gt: ground truth (bool mask, label map, or
    for BSDS500 a list of label maps); spacing: voxel size per spatial axis in mm, or None (pixels);
    extra: set-specific additions (e.g. ``brain_mask``, ``class_map``).
    """

    name: str
    image: np.ndarray
    gt: object
    spacing: tuple | None = None
    extra: dict = field(default_factory=dict)


def available(name: str) -> bool:
    """True when the folder of data set ``name`` exists under ``DATA_ROOT``."""
    _check_name(name)
    return (DATA_ROOT / name).is_dir()


def load(name: str, limit: int | None = None) -> Iterator[Sample]:
    """Yield the samples of data set ``name`` (one of :data:`NAMES`), the first ``limit`` only if given.

    Raises FileNotFoundError when the set is absent (check :func:`available` first).
    """
    _check_name(name)
    folder = DATA_ROOT / name
    if not folder.is_dir():
        raise FileNotFoundError(f"data set {name!r} not found at {folder} (set SELFSEG_DATA to its parent)")
    for i, sample in enumerate(_LOADERS[name](folder)):
        if limit is not None and i >= limit:
            return
        yield sample


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _check_name(name: str) -> None:
    if name not in PROTOCOL:
        raise ValueError(f"unknown data set {name!r}; expected one of {NAMES}")


def _natural_key(path: Path):
    # "2.png" before "10.png": numbered files keep their numeric order.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _sorted(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob(pattern), key=_natural_key)


def _read_image(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    import imageio.v3 as iio

    return iio.imread(path)


def _first_channel(mask: np.ndarray) -> np.ndarray:
    # Some masks are saved as RGB; the README says to take channel 0.
    return mask[..., 0] if mask.ndim == 3 else mask


def _read_nifti(path: Path) -> tuple[np.ndarray, tuple]:
    """NIfTI -> ``(array in (Z, Y, X) order, spacing (dz, dy, dx) in mm)``; values keep the file's scaling."""
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    # nibabel returns (X, Y, Z[, ...]); reverse the three spatial axes.
    data = np.ascontiguousarray(np.moveaxis(data, (0, 1, 2), (2, 1, 0)))
    spacing = tuple(float(s) for s in img.header.get_zooms()[:3][::-1])
    return data, spacing


# --------------------------------------------------------------------------------------------------
# one generator per set
# --------------------------------------------------------------------------------------------------
def _bsds500(folder: Path) -> Iterator[Sample]:
    """RGB ``(Y, X, 3)`` uint8; gt = list of uint16 region maps (regions from 1), one per annotator."""
    from scipy.io import loadmat

    for image_path in _sorted(folder / "images", "*.jpg"):
        annotations = loadmat(folder / "groundTruth" / f"{image_path.stem}.mat")["groundTruth"]
        gt = [annotations[0, k]["Segmentation"][0, 0] for k in range(annotations.shape[1])]
        yield Sample(image_path.stem, _read_image(image_path), gt)


def _ph2(folder: Path) -> Iterator[Sample]:
    """RGB ``(Y, X, 3)`` uint8 dermoscopy; gt = bool lesion mask ``(Y, X)``."""
    for image_path in _sorted(folder / "images", "*.png"):
        mask = _read_image(folder / "masks" / f"{image_path.stem}_lesion.bmp")
        yield Sample(image_path.stem, _read_image(image_path), _first_channel(mask) > 0)


def _lung_ct_2d(folder: Path) -> Iterator[Sample]:
    """int16 Hounsfield units ``(512, 512)``; gt = bool lung mask."""
    for image_path in _sorted(folder / "images", "*.tif"):
        mask = _read_image(folder / "masks" / image_path.name)
        yield Sample(image_path.stem, _read_image(image_path), _first_channel(mask) > 0)


def _isbi2012_em(folder: Path) -> Iterator[Sample]:
    """uint8 EM slice ``(512, 512)``; gt = bool cell interior (label 255; membranes are 0)."""
    for image_path in _sorted(folder / "image", "*.png"):
        label = _read_image(folder / "label" / image_path.name)
        yield Sample(image_path.stem, _read_image(image_path), _first_channel(label) > 0)


def _nuclei(folder: Path) -> Iterator[Sample]:
    """``img2d`` (512, 512) and ``img3d`` (Z, Y, X) = (31, 61, 57) uint16; gt = instance label maps."""
    for dim in ("2d", "3d"):
        image = _read_image(folder / f"img{dim}.tif")
        labels = _read_image(folder / f"mask{dim}.tif")
        yield Sample(f"img{dim}", image, labels, extra={"synthetic": dim == "3d"})


def _brats_mri_3d(folder: Path) -> Iterator[Sample]:
    """Per patient: image ``(Z, Y, X, 2)`` float32 = (FLAIR, T1c), z-scored within the brain;
    gt = whole tumour (OTMultiClass > 0) bool ``(Z, Y, X)``; extra: ``brain_mask`` bool and
    ``tumour_labels`` uint8 (1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing)."""
    for patient in sorted((p for p in folder.iterdir() if p.is_dir()), key=_natural_key):
        flair, spacing = _read_nifti(patient / "Flair_subtrMeanDivStd.nii.gz")
        t1c, _ = _read_nifti(patient / "T1c_subtrMeanDivStd.nii.gz")
        tumour, _ = _read_nifti(patient / "OTMultiClass.nii.gz")
        brain, _ = _read_nifti(patient / "brainmask.nii.gz")
        image = np.stack([flair, t1c], axis=-1).astype(np.float32)
        tumour = np.rint(tumour).astype(np.uint8)  # stored as float; values are exact 0..4
        # brainmask is stored with a tiny scale factor, so "1" reads back as 0.99999997: threshold at 0.5.
        extra = {"brain_mask": brain > 0.5, "tumour_labels": tumour, "channels": ("FLAIR", "T1c")}
        yield Sample(patient.name, image, tumour > 0, spacing, extra)


def _ct_abdomen_small(folder: Path) -> Iterator[Sample]:
    """int16 CT volume ``(Z, Y, X)`` = (30, 101, 122) at 3 mm; gt = organ label map (uint8, MODEL
    OUTPUT of TotalSegmentator, not human: smoke tests only); extra["class_map"] = {label: organ}."""
    volume, spacing = _read_nifti(folder / "example_ct_sm.nii.gz")
    labels, _ = _read_nifti(folder / "example_seg.nii.gz")
    class_map = {int(k): v for k, v in json.loads((folder / "class_map_total.json").read_text()).items()}
    yield Sample("example_ct_sm", volume.astype(np.int16), labels, spacing,
                 {"class_map": class_map, "model_ground_truth": True})


_LOADERS = {
    "bsds500": _bsds500,
    "ph2": _ph2,
    "lung_ct_2d": _lung_ct_2d,
    "isbi2012_em": _isbi2012_em,
    "nuclei": _nuclei,
    "brats_mri_3d": _brats_mri_3d,
    "ct_abdomen_small": _ct_abdomen_small,
}
