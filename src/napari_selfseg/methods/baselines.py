"""Classical baselines on the same engine: k-means, Multi-Otsu and Chan-Vese.

They get the generic panel, the CLI and the API like any learnt method, so a learnt segmentation can be
compared with what a few lines of scikit-learn / scikit-image give on the same image. k-means and
Multi-Otsu answer in one step; Chan-Vese evolves a level set and streams it as it moves.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from ..engine import Method, StopRules, TrainContext
from ..imageprep import InputError
from ..params import param
from ..postprocess import PostprocessParams

# rgb2gray's weights (ITU-R BT.709): the luminance of a colour image is its intensity
_LUMINANCE = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)


def intensity(image: np.ndarray) -> np.ndarray:
    """``(Y, X)`` float32 intensity of a prepared ``(Y, X, C)`` image: the grey channel or the luminance."""
    if image.shape[-1] == 1:
        return image[..., 0]
    if image.shape[-1] == 3:
        return image @ _LUMINANCE
    return image.mean(-1)


def _one_step(params) -> StopRules:
    return StopRules(max_iterations=1)


# -- k-means -----------------------------------------------------------------------------------------
@dataclass
class KMeansParams(PostprocessParams):
    k: int = param(3, low=2, high=20, step=1, live=False, help="Number of clusters")
    n_init: int = param(4, low=1, high=20, step=1, live=False, advanced=True, label="restarts",
                        help="k-means runs from different random centres; the one with the lowest inertia is kept")
    sample: int = param(50_000, low=1_000, high=1_000_000, step=1_000, live=False, advanced=True,
                        label="sample pixels",
                        help="Fit the centres on at most this many random pixels, then give every pixel "
                             "its nearest centre")


class KMeansTrainer:
    """Clusters the pixels' colour (or grey value) with scikit-learn's k-means, in one step."""

    done = False

    def __init__(self, ctx: TrainContext):
        self.ctx = ctx
        self.model = None
        self.labels: np.ndarray | None = None

    def step(self) -> dict[str, float]:
        from sklearn.cluster import KMeans

        p = self.ctx.params
        features = self.ctx.image.reshape(-1, self.ctx.image.shape[-1])
        if len(features) < p.k:
            raise InputError(f"k={p.k} is more than the image's {len(features)} pixels")
        rng = np.random.default_rng(self.ctx.seed)
        sample = features if len(features) <= p.sample else features[rng.choice(len(features), p.sample,
                                                                                  replace=False)]
        with warnings.catch_warnings():  # fewer distinct colours than k: fewer clusters, not an error
            warnings.simplefilter("ignore")
            self.model = KMeans(n_clusters=p.k, n_init=p.n_init, random_state=self.ctx.seed % 2**32).fit(sample)
        self.labels = self.predict(self.ctx.image)
        self.done = True
        return {"inertia": float(self.model.inertia_) / len(sample)}

    def current(self) -> np.ndarray:
        return self.labels if self.labels is not None else np.zeros(self.ctx.image.shape[:2], np.int64)

    def finish(self) -> np.ndarray:
        return self.current()

    def predict(self, image: np.ndarray) -> np.ndarray:
        """The nearest fitted centre of every pixel of a prepared ``(Y, X, C)`` image."""
        if image.shape[-1] != self.ctx.image.shape[-1]:
            raise InputError(f"k-means was fitted on {self.ctx.image.shape[-1]} channels, "
                             f"this image has {image.shape[-1]}")
        return self.model.predict(image.reshape(-1, image.shape[-1])).reshape(image.shape[:2])


# -- Multi-Otsu --------------------------------------------------------------------------------------
@dataclass
class MultiOtsuParams(PostprocessParams):
    classes: int = param(3, low=2, high=5, step=1, live=False,
                         help="Number of intensity classes (classes - 1 thresholds); colour images use "
                              "their luminance")
    bins: int = param(128, low=16, high=256, step=16, live=False, advanced=True,
                      help="Histogram bins; 5 classes with 256 bins takes seconds, 128 bins a fraction of one")


class MultiOtsuTrainer:
    """Thresholds the intensity at the Multi-Otsu thresholds (scikit-image), in one step."""

    done = False

    def __init__(self, ctx: TrainContext):
        self.ctx = ctx
        self.thresholds: np.ndarray | None = None

    def step(self) -> dict[str, float]:
        from skimage.filters import threshold_multiotsu

        p = self.ctx.params
        try:
            self.thresholds = threshold_multiotsu(intensity(self.ctx.image), classes=p.classes, nbins=p.bins)
        except ValueError as err:  # too few distinct grey values for this many classes
            raise InputError(f"Multi-Otsu with {p.classes} classes: {err}") from None
        self.done = True
        return {}

    def current(self) -> np.ndarray:
        if self.thresholds is None:
            return np.zeros(self.ctx.image.shape[:2], np.int64)
        return self.predict(self.ctx.image)

    def finish(self) -> np.ndarray:
        return self.current()

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Class of every pixel of a prepared image by the thresholds found on the training image."""
        return np.digitize(intensity(image), self.thresholds)


# -- Chan-Vese ---------------------------------------------------------------------------------------
STEP_ITERATIONS = 10  # level-set iterations per engine step, i.e. between two frames at most
PATIENCE = 5  # stop once the regions have not changed for this many checks (steps on CPU)


@dataclass
class ChanVeseParams(PostprocessParams):
    mu: float = param(0.25, low=0.0, high=2.0, step=0.01,
                      help="Weight of the contour length: higher gives smoother regions (typically 0 to 1)")
    lambda1: float = param(1.0, low=0.0, high=10.0, step=0.1, label="lambda 1",
                           help="Weight of the intensity spread inside the contour")
    lambda2: float = param(1.0, low=0.0, high=10.0, step=0.1, label="lambda 2",
                           help="Weight of the intensity spread outside the contour")
    iterations: int = param(200, low=10, high=5000, step=10, live=False,
                            help=f"Stop after this many level-set iterations ({STEP_ITERATIONS} per step), or "
                                 f"earlier once the regions stay the same for {PATIENCE} steps")
    dt: float = param(0.5, low=0.01, high=2.0, step=0.01, help="Time step of the level-set evolution")
    init: str = param("checkerboard", choices=("checkerboard", "disk", "small disk"), live=False, advanced=True,
                      label="initial level set", help="Starting contour")


def _chan_vese_rules(params: ChanVeseParams) -> StopRules:
    return StopRules(max_iterations=math.ceil(params.iterations / STEP_ITERATIONS), patience=PATIENCE)


class ChanVeseTrainer:
    """Evolves a Chan-Vese level set (scikit-image) a few iterations per step, continuing where it was."""

    done = False

    def __init__(self, ctx: TrainContext):
        self.ctx = ctx
        self.gray = intensity(ctx.image)
        self.phi: np.ndarray | str = ctx.params.init
        self.iterations = 0

    def _evolve(self, gray: np.ndarray, phi, iterations: int):
        from skimage.segmentation import chan_vese

        p = self.ctx.params
        _, phi, energies = chan_vese(gray, mu=p.mu, lambda1=p.lambda1, lambda2=p.lambda2, dt=p.dt,
                                     max_num_iter=iterations, init_level_set=phi, extended_output=True)
        return phi, energies

    def step(self) -> dict[str, float]:
        todo = min(STEP_ITERATIONS, self.ctx.params.iterations - self.iterations)
        self.phi, energies = self._evolve(self.gray, self.phi, todo)
        self.iterations += len(energies)
        # chan_vese returns early once the level set stops changing (its tolerance)
        self.done = len(energies) < todo or self.iterations >= self.ctx.params.iterations
        return {"energy": float(energies[-1])} if energies else {}

    def current(self) -> np.ndarray:
        if isinstance(self.phi, str):
            return np.zeros(self.gray.shape, np.int64)
        return (self.phi > 0) + 0

    def finish(self) -> np.ndarray:
        return self.current()

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Evolve from the final level set on another prepared image (a neighbouring slice): 1 = inside."""
        start = self.phi if not isinstance(self.phi, str) and self.phi.shape == image.shape[:2] else \
            self.ctx.params.init
        phi, _ = self._evolve(intensity(image), start, self.ctx.params.iterations)
        return (phi > 0) + 0


KMEANS = Method(
    id="kmeans",
    title="k-means",
    params=KMeansParams,
    build=KMeansTrainer,
    description="k-means clustering of the pixels' colour or grey value (scikit-learn).",
    iterative=False,
    stop_rules=_one_step,
)

MULTI_OTSU = Method(
    id="multi-otsu",
    title="Multi-Otsu",
    params=MultiOtsuParams,
    build=MultiOtsuTrainer,
    description="Intensity classes split at the Multi-Otsu thresholds of the histogram (scikit-image).",
    iterative=False,
    stop_rules=_one_step,
)

CHAN_VESE = Method(
    id="chan-vese",
    title="Chan-Vese",
    params=ChanVeseParams,
    build=ChanVeseTrainer,
    description="Chan-Vese active contour without edges: a level set splits the intensity into two regions.",
    stop_rules=_chan_vese_rules,
)

METHODS = (KMEANS, MULTI_OTSU, CHAN_VESE)
