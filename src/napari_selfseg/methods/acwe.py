"""Active-contour network: a recurrent CNN trained with the Chan-Vese energy on a set of images.

After Chen and Frey (MIDL 2020): a recurrent CNN (Liang and Hu, CVPR 2015) outputs a level set per
pixel, foreground where it is > 0, and learns from a whole stack (the slices of a volume, several layers, a folder) by minimising the
Chan-Vese "active contours without edges" energy of its output, relaxed with a regularised Heaviside.
Four modes: 1 unsupervised; 2 and 3 mode 1 then fine-tuned on the labelled slices with the active-contour
label loss of Chen et al. (CVPR 2019) (the paper's 10 and 80 labelled slices: the count is what the user
labels); 4 joint ACWE + alpha x label loss from the start.

Speed: the network trains on the stack resized to ``train_size`` pixels on its longer side; the final
map of every slice is the network's output at that scale, upsampled (bilinear) to full resolution and
thresholded at 0, so boundaries are smooth at any size. The label loss (modes 2-4) compares that same
upsampled output, at ``label_size`` pixels, with the labels, so the contour is placed below a training pixel.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..engine import Method, StopRules, TrainContext
from ..imageprep import InputError, prepare_stack
from ..losses import active_contour_label_loss, acwe_loss, heaviside
from ..nn import ActiveContourNet
from ..params import param
from ..postprocess import PostprocessParams

MODES = (1, 2, 3, 4)
INTENSITY = ("percentile", "ct-window", "min-max")
PREVIEW_SECONDS = 0.2  # the displayed slice's labels are recomputed at most this often (they cost a forward)


@dataclass
class ACWEParams(PostprocessParams):
    """Parameters of the active-contour network; the defaults are the fast interactive setting."""

    mode: int = param(1, choices=MODES, live=False,
                      help="1 unsupervised (ACWE loss); 2 and 3: mode 1, then fine-tuned on the labelled slices "
                           "(the paper's 10 and 80 labelled slices; the count is what you label); 4: ACWE + alpha "
                           "x label loss jointly from the start. Modes 2-4 need a Labels layer with painted slices")
    nu: float = param(0.0005, low=1e-6, high=0.1, log=True,
                      help="Weight of the inside area: higher shrinks the foreground (paper 0.004, reference code "
                           "0.0005; per pixel, intensities in [0, 1])")
    mu: float = param(0.0, low=0.0, high=1.0, step=0.01,
                      help="Weight of the contour length: higher gives smoother, fewer regions (paper 0)")
    lambda1: float = param(1.0, low=0.0, high=10.0, step=0.1, label="lambda 1",
                           help="Weight of the intensity spread inside the contour")
    lambda2: float = param(1.0, low=0.0, high=10.0, step=0.1, label="lambda 2",
                           help="Weight of the intensity spread outside the contour")
    alpha: float = param(5.0, low=0.0, high=20.0, step=0.05,
                         help="Weight of the label loss on the labelled slices (mode 4; modes 2-3 fine-tune on it). "
                              "Paper 0.4 with its label loss; 5 chosen on the lung slices for this one")
    label_length: float = param(0.1, low=0.0, high=10.0, step=0.05, advanced=True, label="label length weight",
                                help="Weight of the contour length inside the label loss (Chen et al. 2019)")
    iterations: int = param(200, low=1, high=20000, step=10, live=False,
                            help="Optimisation steps of the unsupervised training (modes 1-3)")
    finetune_iterations: int = param(400, low=0, high=20000, step=10, live=False,
                                     help="Modes 2-3: further steps on the labelled slices after the unsupervised "
                                          "ones; mode 4 trains jointly for iterations + this many steps")
    learning_rate: float = param(0.003, low=1e-5, high=0.1, log=True,
                                 help="Adam learning rate of the unsupervised steps (mode 1, and modes 2-3 before "
                                      "fine-tuning)")
    finetune_learning_rate: float = param(0.01, low=1e-5, high=0.1, log=True, label="labelled learning rate",
                                          help="Adam learning rate of the steps with labels: the fine-tuning of "
                                               "modes 2-3 and the joint training of mode 4")
    decay: bool = param(True, live=False, advanced=True, label="decay the learning rate",
                        help="Modes 2-4: the learning rate of the labelled phase (fine-tuning, or the joint "
                             "training) falls linearly to 0 over its steps, so training ends at a settled network "
                             "rather than at one noisy minibatch step")
    batch_size: int = param(4, low=1, high=64, step=1, help="Slices per optimisation step")
    train_size: int = param(64, low=16, high=2048, step=16, live=False,
                            help="Train on the slices resized to this many pixels on their longer side (the final "
                                 "map is upsampled to full resolution)")
    label_size: int = param(256, low=0, high=2048, step=16, live=False, advanced=True,
                            help="Modes 2-4: the label loss compares the output upsampled (bilinear, as in the final "
                                 "map) to this many pixels on the longer side with the labels at that size, so the "
                                 "contour is placed to sub-pixel accuracy of the training grid (0 = the training grid)")
    label_heaviside: str = param("sigmoid", choices=("atan", "sigmoid"), advanced=True,
                                 help="Modes 2-4: the relaxed inside u of the label loss (Chen et al. 2019: a "
                                      "sigmoid)")
    label_epsilon: float = param(0.3, low=0.01, high=10.0, step=0.01, advanced=True,
                                 help="Width eps of the label loss's relaxed Heaviside (output units)")
    channels: int = param(16, low=4, high=128, step=4, live=False, advanced=True,
                          help="Filters per convolution (paper 16)")
    recurrent_layers: int = param(3, low=0, high=6, step=1, live=False, advanced=True,
                                  help="Recurrent convolutional layers (paper 3)")
    time_steps: int = param(3, low=0, high=6, step=1, live=False, advanced=True,
                            help="Time steps T of each recurrent layer (paper 3: a feed-forward depth of 4)")
    heaviside: str = param("atan", choices=("atan", "sigmoid"), advanced=True,
                           help="Differentiable 'inside' of the output: Chan-Vese's 1/2 + arctan(z/eps)/pi, or "
                                "sigmoid(z/eps)")
    epsilon: float = param(1.0, low=0.01, high=10.0, step=0.01, advanced=True,
                           help="Width eps of the relaxed Heaviside (output units)")
    foreground: str = param("darker", choices=("darker", "brighter", "as learnt"),
                            help="Mode 1: which of the two Chan-Vese regions is labelled 1 (the energy itself does "
                                 "not say); modes 2-4 follow the labels")
    intensity: str = param("percentile", choices=INTENSITY, live=False,
                           help="Intensity handling: 0.5-99.5 percentile stretch of the stack (MRI, microscopy), a "
                                "CT window in Hounsfield units (below), or the stack's min-max; 8-bit photos are /255 "
                                "with percentile")
    window_low: float = param(-1000.0, low=-3000.0, high=3000.0, step=10.0, live=False, label="window low (HU)",
                              help="CT window: this value and below map to 0")
    window_high: float = param(400.0, low=-3000.0, high=5000.0, step=10.0, live=False, label="window high (HU)",
                               help="CT window: this value and above map to 1")


PRESETS = {
    "interactive": {},
    # Chen and Frey's settings: 16 3x3 filters, 3 RCLs of T = 3, mu = 0, lambda1 = lambda2 = 1, nu = 0.004
    # (their code trains with 0.0005), alpha = 0.4; trained at full resolution (512 for the lung slices).
    "paper": {"nu": 0.004, "mu": 0.0, "lambda1": 1.0, "lambda2": 1.0, "alpha": 0.4, "channels": 16,
              "recurrent_layers": 3, "time_steps": 3, "train_size": 512, "iterations": 3000},
    # CT lungs: the window chosen on the lung development slices as a whole (docs/methods/acwe.md) and the
    # border step, which separates the lungs from the air around the body
    "lung-ct": {"intensity": "ct-window", "window_low": -600.0, "window_high": 200.0, "border_components": True},
}


# -- intensity handling --------------------------------------------------------------------------------
def prepare(image: np.ndarray, params: ACWEParams, rgb: bool | None = None) -> np.ndarray:
    """Raw ``(N, Y, X[, C])`` stack (or one ``(Y, X[, C])`` plane) -> ``(N, Y, X, C)`` float32 in [0, 1],
    by ``params.intensity``; one normalisation for the whole stack, so c1 / c2 mean the same in every
    slice."""
    image = np.asarray(image)
    colour = image.ndim >= 3 and (rgb if rgb is not None else image.shape[-1] in (3, 4))
    if image.ndim - int(colour) == 2:  # a single plane
        image = image[None]
    if params.intensity == "percentile":
        return prepare_stack(image, rgb)
    stack = image[..., None] if image.ndim == 3 else image[..., :3]
    if not np.issubdtype(stack.dtype, np.number) and stack.dtype != bool:
        raise InputError(f"cannot segment an image of dtype {stack.dtype}")
    data = stack.astype(np.float32)
    if params.intensity == "ct-window":
        if params.window_high <= params.window_low:
            raise InputError(f"CT window: high ({params.window_high}) must be above low ({params.window_low})")
        return np.clip((data - params.window_low) / (params.window_high - params.window_low), 0, 1)
    lo = data.min(axis=(0, 1, 2), keepdims=True)
    span = data.max(axis=(0, 1, 2), keepdims=True) - lo
    return ((data - lo) / np.where(span > 0, span, 1)).astype(np.float32)


# -- the trained model, shared by the trainer and Method.load ------------------------------------------
def _build_net(in_channels: int, p: ACWEParams) -> ActiveContourNet:
    return ActiveContourNet(in_channels, p.channels, p.recurrent_layers, p.time_steps)


def _grid_size(shape: tuple[int, ...], scale: float) -> list[int]:
    """The ``(y, x)`` size of a plane of ``shape`` resized by ``scale`` (<= 1)."""
    return [max(8, round(s * scale)) for s in shape] if scale < 1.0 else list(shape)


def _to_grid(image: np.ndarray, scale: float, device: torch.device) -> torch.Tensor:
    """``(N, Y, X, C)`` float -> ``(N, C, y, x)`` tensor, area-downsampled by ``scale`` (<= 1)."""
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 1, 2))).to(device)
    if scale < 1.0:
        x = F.interpolate(x, size=_grid_size(image.shape[1:3], scale), mode="area")
    return x


class ActiveContourModel:
    """A trained network and its training scale: labels prepared planes at full resolution."""

    def __init__(self, net: ActiveContourNet, scale: float, device: torch.device):
        self.net, self.scale, self.device = net, float(scale), device

    @torch.no_grad()
    def level_set(self, planes: np.ndarray, batch: int = 8) -> np.ndarray:
        """``(N, Y, X, C)`` prepared planes -> ``(N, Y, X)`` float32 output upsampled from the training scale."""
        self.net.eval()
        out = []
        for i in range(0, len(planes), batch):
            x = _to_grid(planes[i:i + batch], self.scale, self.device)
            phi = self.net(x).float()
            out.append(F.interpolate(phi, size=planes.shape[1:3], mode="bilinear", align_corners=False)[:, 0].cpu())
        return torch.cat(out).numpy()

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Foreground (1) where the output is > 0, else 0: ``(Y, X)`` uint8 of a prepared ``(Y, X, C)`` plane."""
        return (self.level_set(np.asarray(image, np.float32)[None])[0] > 0).astype(np.uint8)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"net.{k}": v.detach().cpu() for k, v in self.net.state_dict().items()}
        state["scale"] = torch.tensor(self.scale, dtype=torch.float64)
        return state


def load(params: ACWEParams, state: dict[str, torch.Tensor], device: torch.device) -> ActiveContourModel:
    """Rebuild a trained model from :meth:`ACWETrainer.state_dict` (for ``apply``)."""
    weights = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
    net = _build_net(int(weights["stem.0.weight"].shape[1]), params).to(device)
    net.load_state_dict(weights)
    return ActiveContourModel(net, float(state["scale"]), device)


# -- training -------------------------------------------------------------------------------------------
def _stop_rules(params: ACWEParams) -> StopRules:
    extra = params.finetune_iterations if params.mode != 1 else 0  # mode 4: the same budget as 2-3, joint
    return StopRules(max_iterations=params.iterations + extra)


def labelled_slices(labels: np.ndarray | None) -> np.ndarray:
    """Indices of the slices of ``(N, Y, X)`` ground truth with any annotated pixel (label >= 0)."""
    if labels is None:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero((np.asarray(labels) >= 0).reshape(len(labels), -1).any(1))


class ACWETrainer:
    """Trains :class:`~napari_selfseg.nn.ActiveContourNet` on a stack; see the module docstring."""

    done = False

    def __init__(self, ctx: TrainContext):
        self.ctx = ctx
        p = ctx.params
        image = ctx.image if ctx.image.ndim == 4 else ctx.image[None]  # a plane is a stack of one
        self.image = image
        self.scale = min(1.0, p.train_size / max(image.shape[1:3]))
        self.label_scale = max(self.scale, min(1.0, p.label_size / max(image.shape[1:3])))
        self.x = _to_grid(image, self.scale, ctx.device)  # (N, C, y, x), all slices at the training scale
        self.labelled = labelled_slices(ctx.labels if ctx.labels is None or ctx.labels.ndim == 3
                                        else ctx.labels[None])
        if p.mode != 1 and len(self.labelled) == 0:
            raise InputError(f"mode {p.mode} learns from labelled slices: choose a Labels layer in which some "
                             "slices are painted (1 = foreground, 0 = background), or use mode 1")
        self.target, self.valid = self._label_grid() if len(self.labelled) else (None, None)
        self.net = _build_net(self.x.shape[1], p).to(ctx.device)
        self.model = ActiveContourModel(self.net, self.scale, ctx.device)
        self.optimiser = torch.optim.Adam(self.net.parameters(), lr=p.learning_rate)
        self.rng = torch.Generator().manual_seed(ctx.seed)
        self.iteration = 0
        self._preview: tuple[int, float, np.ndarray] | None = None

    def _label_grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Foreground fraction ``(L, 1, y, x)`` and annotated mask (bool) of the labelled slices at the
        training scale (area averages, so a boundary pixel gets a fractional target)."""
        labels = self.ctx.labels if self.ctx.labels.ndim == 3 else self.ctx.labels[None]
        lab = torch.from_numpy(labels[self.labelled])[:, None]
        size = _grid_size(labels.shape[1:3], self.label_scale)
        fg = F.interpolate((lab > 0).float(), size=size, mode="area")
        annotated = F.interpolate((lab >= 0).float(), size=size, mode="area")
        target = fg / annotated.clamp(min=1e-6)
        return target.clamp(0, 1).to(self.ctx.device), (annotated >= 0.5).to(self.ctx.device)

    def _phase(self) -> str:
        p = self.ctx.params
        if p.mode == 4:
            return "joint"
        if p.mode in (2, 3) and self.iteration >= p.iterations:
            return "finetune"
        return "acwe"

    def _batch(self, pool: np.ndarray, k: int) -> torch.Tensor:
        k = max(1, min(k, len(pool)))
        return torch.as_tensor(pool)[torch.randperm(len(pool), generator=self.rng)[:k]]

    def step(self) -> dict[str, torch.Tensor]:
        p = self.ctx.params
        phase = self._phase()
        lr = p.learning_rate if phase == "acwe" else p.finetune_learning_rate
        if p.decay and phase != "acwe":
            first, steps = (p.iterations, p.finetune_iterations) if phase == "finetune" else \
                (0, p.iterations + p.finetune_iterations)
            lr *= max(0.0, 1.0 - (self.iteration - first) / max(1, steps))
        for group in self.optimiser.param_groups:
            group["lr"] = lr
        if phase == "finetune" and self.iteration == p.iterations:
            self.start_finetuning()
        self.iteration += 1
        if phase == "finetune":
            rows = self._batch(np.arange(len(self.labelled)), p.batch_size)
            slices, lab_rows = torch.as_tensor(self.labelled)[rows], rows
        elif phase == "joint":
            half = max(1, p.batch_size // 2)
            lab_rows = self._batch(np.arange(len(self.labelled)), half)
            others = self._batch(np.arange(len(self.x)), p.batch_size - len(lab_rows)) if p.batch_size > half \
                else torch.zeros(0, dtype=torch.long)
            slices = torch.cat([torch.as_tensor(self.labelled)[lab_rows], others])
        else:
            slices, lab_rows = self._batch(np.arange(len(self.x)), p.batch_size), None
        self.net.train()
        x = self.x[slices.to(self.x.device)]
        with self.ctx.autocast():
            phi = self.net(x)
        u = heaviside(phi.float(), p.epsilon, p.heaviside)
        loss, losses = u.new_zeros(()), {}
        if phase != "finetune":
            loss, losses = acwe_loss(u, x, p.nu, p.lambda1, p.lambda2, p.mu)
            losses = {"acwe": loss.detach(), **losses}
        if lab_rows is not None:
            rows = lab_rows.to(self.x.device)
            label = active_contour_label_loss(self._label_u(phi[:len(rows)]), self.target[rows], self.valid[rows],
                                              p.label_length)
            loss = loss + (p.alpha if phase == "joint" else 1.0) * label
            losses["label"] = label.detach()
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        return losses

    def _label_u(self, phi: torch.Tensor) -> torch.Tensor:
        """The relaxed inside ``H(phi)`` on the label grid: ``phi`` upsampled bilinearly (as the final map
        is) when the label grid is finer than the training grid."""
        p = self.ctx.params
        phi = phi.float()
        if phi.shape[-2:] != self.target.shape[-2:]:
            phi = F.interpolate(phi, size=self.target.shape[-2:], mode="bilinear", align_corners=False)
        return heaviside(phi, p.label_epsilon, p.label_heaviside)

    def start_finetuning(self) -> None:
        """Modes 2-3, after the unsupervised steps: align the polarity and restart Adam (a new loss: the
        moment estimates of the ACWE steps would only delay it). Also called by benchmarks that fine-tune
        a stored mode-1 network (set ``iteration`` to ``params.iterations`` first)."""
        self._align_polarity()
        self.optimiser = torch.optim.Adam(self.net.parameters(), lr=self.ctx.params.finetune_learning_rate)

    @torch.no_grad()
    def _align_polarity(self) -> None:
        """Before fine-tuning: if the unsupervised "inside" covers the labelled background more than the
        labelled foreground (Chan-Vese has no notion of which region is the object), flip the output's
        sign, so the label loss refines the contour instead of first inverting it."""
        self.net.eval()
        phi = self.net(self.x[torch.as_tensor(self.labelled).to(self.x.device)]).float()
        inside = (self._label_u(phi) > 0.5).float()
        valid = self.valid.float()
        fg = (self.target * valid).sum()
        bg = ((1 - self.target) * valid).sum()
        agree = ((inside * self.target * valid).sum() / fg.clamp(min=1)
                 + ((1 - inside) * (1 - self.target) * valid).sum() / bg.clamp(min=1))
        if agree < 1.0:  # worse than chance: the other side is the object
            self.net.sign.mul_(-1)

    def _orientation(self, phi: torch.Tensor, x: torch.Tensor) -> float:
        """Mode 1: -1 if the output ``phi`` ``(n, 1, y, x)`` must flip so that label 1 is the darker (or
        brighter) region of the slices ``x`` ``(n, C, y, x)`` (mean intensity inside vs outside), else 1."""
        p = self.ctx.params
        if p.mode != 1 or p.foreground == "as learnt":
            return 1.0
        inside = (phi.float() > 0).float()
        if inside.sum() == 0 or inside.sum() == inside.numel():
            return 1.0
        g = x.float().mean(1, keepdim=True)
        darker = (g * inside).sum() / inside.sum() < (g * (1 - inside)).sum() / (1 - inside).sum()
        return 1.0 if bool(darker) == (p.foreground == "darker") else -1.0

    def current(self) -> np.ndarray:
        """Labels ``(Y, X)`` of the displayed slice: the output at the training scale upsampled
        (bilinear) to full size as in :meth:`finish`, so the preview is not blocky (recomputed every
        PREVIEW_SECONDS at most, or when the displayed slice changes)."""
        index = min(max(int(getattr(self.ctx, "preview", 0)), 0), len(self.x) - 1)
        now = time.perf_counter()
        if self._preview is None or self._preview[0] != index or now - self._preview[1] > PREVIEW_SECONDS:
            with torch.no_grad():
                self.net.eval()
                x = self.x[index:index + 1]
                phi = self.net(x).float()
                phi = phi * self._orientation(phi, x)  # display only: training must not depend on frames
                phi = F.interpolate(phi, size=self.image.shape[1:3], mode="bilinear", align_corners=False)
            self._preview = (index, now, (phi[0, 0] > 0).to(torch.uint8).cpu().numpy())
        return self._preview[2]

    @torch.no_grad()
    def _recalibrate_batch_norm(self) -> None:
        """Re-estimate BatchNorm statistics on every slice with the final weights (the running averages
        mix in earlier weights), so full-stack predictions use the statistics of the trained network."""
        norms = [m for m in self.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        saved = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the passes below
        self.net.train()
        batch = max(1, self.ctx.params.batch_size)
        for i in range(0, len(self.x), batch):
            self.net(self.x[i:i + batch])
        for m, momentum in zip(norms, saved):
            m.momentum = momentum

    def finish(self) -> np.ndarray:
        """Labels ``(N, Y, X)`` of every slice (``(Y, X)`` for a single plane), 1 = inside."""
        self._recalibrate_batch_norm()
        with torch.no_grad():
            self.net.eval()
            batch = max(1, self.ctx.params.batch_size)
            phi = torch.cat([self.net(self.x[i:i + batch]) for i in range(0, len(self.x), batch)])
            self.net.sign.mul_(self._orientation(phi, self.x))
        labels = (self.model.level_set(self.image) > 0).astype(np.uint8)
        return labels if self.ctx.image.ndim == 4 else labels[0]

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self.model.predict(image)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()


METHOD = Method(
    id="acwe",
    title="Active-contour network (ACWE)",
    params=ACWEParams,
    build=ACWETrainer,
    description=__doc__.split("\n\n")[0],
    stop_rules=_stop_rules,
    presets=PRESETS,
    inputs="stack",
    ground_truth="optional",
    semantic=True,
    prepare=prepare,
    load=load,
)

METHODS = [METHOD]
