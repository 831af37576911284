import numpy as np
from scipy.stats import multivariate_normal

from napari_selfseg.gaussians import log_likelihood


def test_log_likelihood_is_the_gaussian_log_density_up_to_its_constant():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    mean = np.array([0.5, -1.0, 2.0])
    a = rng.normal(size=(3, 3))
    covariance = a @ a.T + 0.5 * np.eye(3)
    expected = multivariate_normal(mean, covariance).logpdf(x) + 1.5 * np.log(2 * np.pi)
    assert np.allclose(log_likelihood(x, mean, covariance), expected)


def test_a_broad_model_wins_far_from_both_means_and_a_narrow_one_near_its_mean():
    narrow, broad = (np.zeros(1), np.eye(1)), (np.full(1, 3.0), 25 * np.eye(1))
    near, far = np.array([[0.2]]), np.array([[-6.0]])
    assert log_likelihood(near, *narrow) > log_likelihood(near, *broad)
    assert log_likelihood(far, *broad) > log_likelihood(far, *narrow)  # nearer the narrow mean, yet broad fits
