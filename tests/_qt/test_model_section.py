"""Keep and reuse from the panel: save a trained model, load it, apply it to a layer and to a folder."""
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_selfseg._qt import FeatureClusteringPanel

from ..conftest import regions_image

pytestmark = pytest.mark.gui
FAST = {"channels": 8, "max_iterations": 15, "min_labels": 1}


@pytest.fixture
def trained(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(regions_image(48)[0], name="regions", rgb=True)
    panel = FeatureClusteringPanel(viewer)
    viewer.window.add_dock_widget(panel)
    panel.form.set_values(FAST)
    assert not panel.model_section.save_button.isEnabled()  # nothing trained yet
    panel.train_button.click()
    qtbot.waitUntil(lambda: panel.worker is None, timeout=60000)
    yield panel
    panel.cancel(wait=True)


def wait_section(qtbot, section):
    qtbot.waitUntil(lambda: section.worker is None, timeout=60000)


def test_saved_model_applies_to_another_layer_with_the_same_ids(trained, qtbot, tmp_path):
    section = trained.model_section
    assert section.save_button.isEnabled()
    path = section.save(tmp_path / "fc")
    assert path.exists() and "Saved" in section.status.text()
    other = trained.viewer.add_image(regions_image(48, seed=3)[0], name="other", rgb=True)
    section.load(path)
    assert section.model is not None and trained.form.values().channels == 8
    section.apply_to_layer(other)
    wait_section(qtbot, section)
    layer = trained.viewer.layers["other feature clustering"]
    assert np.array_equal(layer.data, trained.training.predict(other.data, rgb=True))
    record = layer.metadata["napari_selfseg"]  # saved with the layer: which model labelled which image
    assert record["model"] == str(path) and record["image"] == "other" and record["applied"]
    assert record["scope"] == "all"
    section.apply_to_layer(trained.viewer.layers["regions"])  # the training image: the ids of its layer
    wait_section(qtbot, section)
    assert np.array_equal(trained.labels_layer.data, trained.training.predict(trained.image_layer.data, rgb=True))


def test_apply_to_folder_writes_label_files_and_reports_failures(trained, qtbot, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for seed in range(2):
        iio.imwrite(folder / f"im{seed}.png", regions_image(40, seed=seed)[0])
    (folder / "broken.png").write_bytes(b"no image")
    trained.model_section.apply_to_folder(folder, out)
    wait_section(qtbot, trained.model_section)
    assert sorted(p.name for p in out.iterdir()) == ["im0.json", "im0.tif", "im1.json", "im1.tif"]
    assert tifffile.imread(out / "im0.tif").shape == (40, 40)
    assert "1 failed" in trained.model_section.status.text()


def test_loading_a_foreign_file_says_so_and_keeps_the_panel_usable(trained, tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"junk")
    assert trained.model_section.load(bad) is None
    assert "not a napari-selfseg model" in trained.model_section.status.text()
    assert trained.train_button.isEnabled() and trained.model_section.apply_button.isEnabled()


def test_all_slices_labels_the_displayed_time_point_and_all_time_points_the_layer(trained, qtbot):
    rgb = regions_image(48)[0]
    movie = trained.viewer.add_image(np.stack([np.stack([rgb] * 3)] * 2), name="movie", rgb=True)  # (T, Z, Y, X, C)
    trained.viewer.dims.set_point(0, 1)  # time point 1
    trained.model_section.model = None
    trained.model_section.layer_box.reset_choices()
    section = trained.model_section
    section.apply_to_layer(movie, scope="slices")
    wait_section(qtbot, section)
    labels = trained.viewer.layers["movie feature clustering"].data
    assert not labels[0].any() and all(labels[1, z].any() for z in range(3))
    section.apply_to_layer(movie, scope="all")
    wait_section(qtbot, section)
    assert all(labels[t, z].any() for t in range(2) for z in range(3))


def test_a_gray_layer_for_an_rgb_model_gets_a_message_not_a_traceback(trained, qtbot):
    from napari.utils.notifications import ErrorNotification, notification_manager

    gray = trained.viewer.add_image(regions_image(48)[0].mean(-1), name="gray")
    seen = len(notification_manager.records)
    trained.model_section.apply_to_layer(gray)
    wait_section(qtbot, trained.model_section)
    new = notification_manager.records[seen:]
    assert any("trained on RGB images" in str(n.message) for n in new)
    assert not any(isinstance(n, ErrorNotification) for n in new)  # the kind with a traceback button
    assert "trained on RGB images" in trained.model_section.status.text()


def test_lazy_and_multiscale_layers_are_read_plane_by_plane(trained, qtbot):
    import dask
    import dask.array as da

    rgb = regions_image(48)[0]
    read = []

    def plane(i):
        read.append(i)
        return rgb

    lazy = da.stack([da.from_delayed(dask.delayed(plane)(i), rgb.shape, rgb.dtype) for i in range(4)])
    layer = trained.viewer.add_image(lazy, name="lazy", rgb=True)
    trained.viewer.dims.set_point(0, 2)
    read.clear()  # napari itself reads the displayed plane to draw it
    trained.model_section.apply_to_layer(layer, scope="displayed")
    wait_section(qtbot, trained.model_section)
    assert set(read) == {2}  # only the displayed plane was loaded
    assert trained.viewer.layers["lazy feature clustering"].data[2].any()

    pyramid = trained.viewer.add_image([rgb, rgb[::2, ::2]], name="pyramid", rgb=True, multiscale=True)
    trained.model_section.apply_to_layer(pyramid)
    wait_section(qtbot, trained.model_section)
    labels = trained.viewer.layers["pyramid feature clustering"].data
    assert labels.shape == (48, 48)  # the full-resolution level
    assert np.array_equal(labels, trained.training.predict(rgb, rgb=True))


def test_loading_an_older_model_shows_the_settings_it_runs_with(trained, tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    from napari_selfseg.bundle import read_record

    path = trained.model_section.save(tmp_path / "old")
    record = read_record(path)
    del record["params"]["refine_method"]  # as a version before that parameter wrote it
    save_file(load_file(str(path)), str(path), metadata={"napari_selfseg": json.dumps(record)})
    assert trained.form.values().refine_method == "watershed"
    trained.model_section.load(path)
    assert trained.form.values().refine_method == "slic" == trained.model_section.model.params.refine_method
