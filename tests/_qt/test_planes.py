"""Which parts of a layer "Apply to" labels: planes for plane methods, whole stacks for stack/volume methods."""
import pytest

from napari_selfseg._qt.planes import apply_units

TZYX = (2, 3, 8, 8)
DISPLAYED = (1, 2)  # time point 1, slice 2


def test_plane_method_scopes_on_a_time_lapse_volume():
    assert apply_units(TZYX, DISPLAYED, "plane", "displayed") == [(1, 2)]
    assert apply_units(TZYX, DISPLAYED, "plane", "slices") == [(1, 0), (1, 1), (1, 2)]  # time point 1 only
    assert apply_units(TZYX, DISPLAYED, "plane", "all") == [(t, z) for t in range(2) for z in range(3)]


@pytest.mark.parametrize("inputs", ["stack", "volume"])
def test_stack_and_volume_methods_label_whole_stacks(inputs):
    assert apply_units(TZYX, DISPLAYED, inputs, "slices") == [(1,)]
    assert apply_units(TZYX, DISPLAYED, inputs, "all") == [(0,), (1,)]
    # a stack method can label the displayed slice alone; a volume method needs the whole volume
    assert apply_units(TZYX, DISPLAYED, inputs, "displayed") == ([(1, 2)] if inputs == "stack" else [(1,)])


@pytest.mark.parametrize("scope", ["displayed", "slices", "all"])
def test_a_2d_image_is_one_unit(scope):
    assert apply_units((8, 8), (), "plane", scope) == [()]
    assert apply_units((8, 8), (), "stack", scope) == [()]


def test_visible_region_of_a_multiscale_layer_is_in_full_resolution_pixels():
    from types import SimpleNamespace

    import numpy as np

    from napari_selfseg._qt.planes import visible_region

    level0 = np.zeros((2048, 2048))
    layer = SimpleNamespace(name="pyramid", multiscale=True, rgb=False, data=[level0, level0[::2, ::2]],
                            data_level=1, downsample_factors=[(1.0, 1.0), (2.0, 2.0)],
                            corner_pixels=np.array([[0, 0], [511, 1023]]))  # level-1 pixels
    assert visible_region(layer) == (slice(0, 1024), slice(0, 2048))
