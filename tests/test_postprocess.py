import numpy as np

from napari_selfseg import segment
from napari_selfseg.postprocess import split_border_components

from .conftest import regions_image


def test_border_components_get_their_own_labels():
    labels = np.array([
        [1, 1, 2, 2, 2],
        [1, 2, 2, 1, 2],
        [2, 2, 1, 1, 2],
        [2, 2, 2, 2, 2],
    ])
    out = split_border_components(labels)
    assert out[0, 0] != out[1, 3]  # top-left 1s touch the border; the inner 1s do not
    assert out[1, 3] == out[2, 2] == 1  # the interior component keeps its id
    assert len(np.unique(out[labels == 2])) == 1  # one connected 2-region: one new id
    assert out[0, 0] > 2  # new ids go above the current maximum


def test_switch_is_a_parameter_of_every_method():
    image, _ = regions_image(32)
    plain = segment(image, channels=8, scale=1.0, max_iterations=5)
    split = segment(image, channels=8, scale=1.0, max_iterations=5, border_components=True)
    assert len(np.unique(split)) >= len(np.unique(plain))


def test_border_step_leaves_the_background_of_a_class_map_alone():
    from napari_selfseg.postprocess import postprocess
    from types import SimpleNamespace

    mask = np.zeros((6, 6), int)
    mask[0, :] = 1  # foreground touching the border: its own id
    mask[3, 2:4] = 1  # interior foreground keeps 1
    out = postprocess(mask, SimpleNamespace(border_components=True), semantic=True)
    assert np.all(out[mask == 0] == 0) and np.all(out[3, 2:4] == 1) and len(np.unique(out[0])) == 1
    assert out[0, 0] not in (0, 1)
