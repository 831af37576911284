"""Reading images and writing label maps with provenance (no Qt). Every write is atomic."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .imageprep import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz")


@dataclass
class ImageFile:
    """An image read from disk. ``data`` is ``(Y, X)``, ``(Y, X, C)`` or ``(Z, Y, X)``.

    NIfTI volumes are stored (X, Y, Z) on disk; ``data`` is transposed to (Z, Y, X) and ``affine`` kept,
    so labels written back line up with the input.
    """

    path: Path
    data: np.ndarray
    rgb: bool = False
    affine: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_nifti(self) -> bool:
        return self.affine is not None


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def stem_of(path: Path) -> str:
    return path.name[: -len(suffix_of(path))] if suffix_of(path) else path.name


def read_image(path: str | os.PathLike) -> ImageFile:
    """Read a PNG/JPG/BMP/TIFF/NIfTI file; raise :class:`InputError` with the reason if it cannot."""
    path = Path(path)
    suffix = suffix_of(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{path}: unsupported file type {suffix!r} (supported: {', '.join(IMAGE_SUFFIXES)})")
    try:
        if suffix in (".nii", ".nii.gz"):
            import nibabel

            img = nibabel.load(str(path))
            data = np.asarray(img.dataobj)
            if data.ndim == 4 and data.shape[-1] == 1:
                data = data[..., 0]
            data = np.transpose(data, tuple(range(data.ndim))[::-1]) if data.ndim == 3 else data.T
            zooms = tuple(float(z) for z in img.header.get_zooms()[: data.ndim])[::-1]
            return ImageFile(path, data, affine=img.affine, spacing=zooms)
        if suffix in (".tif", ".tiff"):
            import tifffile

            data = tifffile.imread(str(path))
        else:
            import imageio.v3 as iio

            data = iio.imread(path)
    except InputError:
        raise
    except Exception as err:  # a corrupt or truncated file: say which and why
        raise InputError(f"{path}: cannot read ({type(err).__name__}: {err})") from err
    rgb = data.ndim == 3 and data.shape[-1] in (3, 4) and suffix not in (".tif", ".tiff") or (
        data.ndim == 3 and data.shape[-1] in (3, 4) and data.dtype == np.uint8)
    return ImageFile(path, data, rgb=bool(rgb))


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part" + suffix_of(target), dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a label file should read like any other
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def label_path(image: ImageFile, outdir: Path) -> Path:
    """``<stem>.tif`` in ``outdir``, or ``<stem>.nii.gz`` for a NIfTI input."""
    return Path(outdir) / (stem_of(image.path) + (".nii.gz" if image.is_nifti else ".tif"))


def write_labels(path: Path, labels: np.ndarray, image: ImageFile | None = None) -> Path:
    """Write a label map atomically: TIFF (zlib), or NIfTI with the input's affine (``labels`` in (Z, Y, X))."""
    path = Path(path)
    labels = np.asarray(labels)
    with atomic_path(path) as tmp:
        if suffix_of(path) in (".nii", ".nii.gz"):
            import nibabel

            affine = image.affine if image is not None and image.affine is not None else np.eye(4)
            data = np.transpose(labels, tuple(range(labels.ndim))[::-1])
            nibabel.save(nibabel.Nifti1Image(data, affine), str(tmp))
        else:
            import tifffile

            tifffile.imwrite(str(tmp), labels, compression="zlib")
    return path


def write_json(path: Path, record: dict[str, Any]) -> Path:
    """Write a JSON sidecar atomically (numpy values converted)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=_jsonable))
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their image files, sorted) and globs -> a list of image paths, in order."""
    import glob

    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(f for f in p.iterdir() if f.is_file() and suffix_of(f) in IMAGE_SUFFIXES)
        elif any(ch in item for ch in "*?["):
            paths += sorted(Path(m) for m in glob.glob(item))
        else:
            paths.append(p)
    return paths


def napari_write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """napari writer for Labels layers: TIFF in the smallest unsigned type that holds the ids (napari's
    own writer widens to 32 bits), plus a JSON sidecar with the layer's napari-selfseg provenance."""
    labels = np.asarray(data)
    if labels.size and labels.min() < 0:
        raise ValueError("labels with negative ids cannot be written as unsigned TIFF")
    from .labelmaps import smallest_dtype

    target = Path(path)
    if suffix_of(target) not in (".tif", ".tiff"):
        target = target.with_suffix(".tif")
    written = [str(write_labels(target, labels.astype(smallest_dtype(int(labels.max(initial=0))))))]
    record = (meta.get("metadata") or {}).get("napari_selfseg")
    if record:
        written.append(str(write_json(target.with_suffix(".json"), record)))
    return written


def napari_get_reader(path: str | list[str]):
    """npe2 reader: NIfTI volumes (voxel size -> layer scale, affine kept in metadata), multi-page TIFF
    stacks, and label files written by this plugin (a TIFF / NIfTI with its JSON sidecar opens as a
    Labels layer carrying its provenance). None for anything else."""
    if isinstance(path, list):
        return None if len(path) != 1 else napari_get_reader(path[0])
    if suffix_of(Path(path)) not in (".nii", ".nii.gz", ".tif", ".tiff"):
        return None
    return read_layers


def read_layers(path: str | list[str]) -> list[tuple]:
    """napari layer data tuples for one file (see :func:`napari_get_reader`)."""
    path = Path(path[0] if isinstance(path, list) else path)
    image = read_image(path)
    sidecar = path.with_name(stem_of(path) + ".json")
    meta: dict[str, Any] = {"name": stem_of(path)}
    if image.spacing is not None:
        meta["scale"] = image.spacing
    if image.affine is not None:
        meta["metadata"] = {"affine": image.affine.tolist()}
    if sidecar.is_file() and np.issubdtype(image.data.dtype, np.integer):
        try:
            record = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict) and "method" in record:
            meta.setdefault("metadata", {})["napari_selfseg"] = record
            # label files share their image's stem: say which method made them, next to the image layer
            meta["name"] = f"{stem_of(path)} {record['method']}"
            return [(image.data, meta, "labels")]
    if image.rgb:
        meta["rgb"] = True
    return [(image.data, meta, "image")]
