import numpy as np

from napari_selfseg.labelmaps import canonical_labels, match_labels, resize_labels, smallest_dtype


def test_canonical_orders_by_size_and_starts_at_one():
    labels = np.array([[7, 7, 7], [3, 3, 9]])
    assert canonical_labels(labels).tolist() == [[1, 1, 1], [2, 2, 3]]


def test_match_keeps_previous_ids_for_the_same_regions():
    before = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    after_raw = np.array([[5, 5, 0, 0], [5, 5, 0, 4]])  # same regions, new ids, plus one new cluster
    matched = match_labels(after_raw, before)
    assert matched[0, 0] == 1 and matched[0, 2] == 2
    assert matched[1, 3] not in (1, 2) and matched[1, 3] > 0


def test_resize_is_nearest_neighbour():
    small = np.array([[1, 2], [3, 4]])
    big = resize_labels(small, (4, 4))
    assert big.shape == (4, 4) and set(np.unique(big)) == {1, 2, 3, 4}
    assert big[0, 0] == 1 and big[3, 3] == 4


def test_smallest_dtype():
    assert smallest_dtype(255) == np.uint8 and smallest_dtype(256) == np.uint16
