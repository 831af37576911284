"""Readers and writers: what the plugin writes opens unchanged in napari and scikit-image."""
import json

import numpy as np
import pytest
import tifffile

from napari_selfseg.io import napari_get_reader, napari_write_labels, read_layers


def test_nifti_reader_gives_the_voxel_size_as_scale(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    volume = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # (X, Y, Z) on disk
    nibabel.save(nibabel.Nifti1Image(volume, np.diag([0.7, 0.8, 2.5, 1.0])), str(tmp_path / "v.nii.gz"))
    reader = napari_get_reader(str(tmp_path / "v.nii.gz"))
    (data, meta, kind), = reader(str(tmp_path / "v.nii.gz"))
    assert kind == "image" and data.shape == (6, 5, 4)  # (Z, Y, X)
    assert np.allclose(meta["scale"], (2.5, 0.8, 0.7)) and "affine" in meta["metadata"]
    assert np.array_equal(data, volume.T)


def test_viewer_opens_nifti_through_the_plugin_by_name(tmp_path):
    """napari's own reader also claims ``.nii.gz`` (and fails on it), so scripts name the plugin (README)."""
    nibabel = pytest.importorskip("nibabel")
    import npe2
    from napari.components import ViewerModel

    npe2.PluginManager.instance().discover()
    nibabel.save(nibabel.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.diag([0.7, 0.8, 2.5, 1.0])),
                 str(tmp_path / "v.nii.gz"))
    layer, = ViewerModel().open(str(tmp_path / "v.nii.gz"), plugin="napari-selfseg")
    assert layer.data.shape == (6, 5, 4) and np.allclose(layer.scale, (2.5, 0.8, 0.7))


def test_multipage_tiff_reads_as_a_stack(tmp_path):
    stack = np.random.default_rng(0).integers(0, 4000, (3, 8, 9)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", stack)
    (data, meta, kind), = read_layers(str(tmp_path / "s.tif"))
    assert kind == "image" and np.array_equal(data, stack)
    assert napari_get_reader(str(tmp_path / "s.png")) is None  # napari's own readers take the rest


def test_written_label_file_opens_unchanged_with_its_provenance(tmp_path):
    from skimage import io as skio

    labels = np.array([[0, 1, 1], [2, 2, 300]], dtype=np.int64)
    record = {"method": "feature-clustering", "seed": 3}
    written = napari_write_labels(str(tmp_path / "lab.tif"), labels, {"metadata": {"napari_selfseg": record}})
    assert written == [str(tmp_path / "lab.tif"), str(tmp_path / "lab.json")]
    on_disk = skio.imread(tmp_path / "lab.tif")
    assert on_disk.dtype == np.uint16 and np.array_equal(on_disk, labels)
    (data, meta, kind), = read_layers(str(tmp_path / "lab.tif"))
    assert kind == "labels" and np.array_equal(data, labels)
    assert meta["name"] == "lab feature-clustering"  # not the name of the image it labels
    assert meta["metadata"]["napari_selfseg"] == json.loads((tmp_path / "lab.json").read_text()) == record
