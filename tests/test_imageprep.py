

def test_as_uint8_lets_a_crop_share_the_whole_image_scale():
    """Training on part of a uint16 plane and labelling the whole: one intensity scale for both."""
    import numpy as np

    from napari_selfseg.imageprep import as_uint8, normalise

    rng = np.random.default_rng(0)
    plane = (rng.random((64, 64)) * 4000).astype(np.uint16)
    plane[:, 32:] += 30000  # a bright half outside the crop
    whole = as_uint8(plane)
    assert whole.dtype == np.uint8
    crop = normalise(whole[:20, :20, None])[..., 0]
    assert np.allclose(crop, normalise(plane[..., None])[:20, :20, 0], atol=1 / 255)
