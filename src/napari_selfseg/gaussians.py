"""Gaussian models of pixel colours (or channel intensities), shared by the final-map refinements that
regroup pixels or regions by how well they fit each cluster's colours."""
from __future__ import annotations

import numpy as np


def log_likelihood(x: np.ndarray, mean: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """Log density of the points ``x`` ``(N, C)`` under a Gaussian with ``mean`` ``(C,)`` and
    ``covariance`` ``(C, C)``, without the constant ``-C/2 log(2 pi)`` (the same for every model, so
    comparisons between models are unchanged). Returns ``(N,)``."""
    offsets = x - mean
    mahalanobis = np.einsum("nc,cd,nd->n", offsets, np.linalg.inv(covariance), offsets)
    return -0.5 * (mahalanobis + np.linalg.slogdet(covariance)[1])
