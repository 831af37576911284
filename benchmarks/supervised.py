"""Supervised and adversarial segmentation (U-Net, LGAN, cycle GAN) on lung CT and ISBI EM.

    python -m benchmarks supervised [--quick] [--write] [--device cpu|cuda] [--folds 5] [--methods unet lgan]

- Lung CT (67 slices): k-fold cross-validation; each fold trains on the other folds' slices (a validation
  split of them picks the best weights) and is scored on its own slices, never trained on. DSC / IoU /
  HD95 (pixels) of the lung mask, mean +- std over all held-out slices.
- Cycle GAN vs U-Net with 10 labelled slices: per fold, 10 of the training slices keep their masks, the
  rest of the training slices are unlabelled (-1); both methods get the same stack; the held-out fold is
  scored.
- ISBI 2012 EM (10 slices): k-fold as above; membrane DSC (class 0 = membrane) and cell-interior DSC.
- Speed: seconds of U-Net training until the validation Dice (on labelled slices held out of training)
  first reaches 0.95 on lung CT, fold 1.

On CPU slices are resized to the method's ``max_side`` (stated in the table); with ``--device cuda`` the
methods train at full resolution (``full_resolution_on_gpu``). Everything else is identical.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import datasets
from .report import machine, write_section

SECTION = "supervised"


def _args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks supervised", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 folds, few iterations: a smoke test")
    ap.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--methods", nargs="+", default=["unet", "lgan"], choices=["unet", "lgan"],
                    help="methods of the full-label cross-validation")
    ap.add_argument("--parts", nargs="+", default=["lung", "cycle", "em", "speed"],
                    choices=["lung", "cycle", "em", "speed"])
    ap.add_argument("--iterations", type=int, default=None, help="override max_iterations of every run")
    ap.add_argument("--max-folds", type=int, default=None, help="run only the first N of the k folds")
    ap.add_argument("--max-side", type=int, default=None, help="override the training size of every run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                    help="override a parameter of every run (e.g. dice_classes=all)")
    return ap.parse_args(argv)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _stack(name: str) -> tuple[np.ndarray, np.ndarray]:
    samples = list(datasets.load(name))
    return np.stack([s.image for s in samples]), np.stack([np.asarray(s.gt) for s in samples]).astype(np.int64)


def folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    """``k`` disjoint sorted index arrays covering ``range(n)`` (a seeded shuffle)."""
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, k)]


def train(method: str, images, labels, params: dict, args):
    """A finished :class:`~napari_selfseg.engine.Training` on a raw stack with ground truth (-1 = none)."""
    from napari_selfseg.engine import Training
    from napari_selfseg.methods import get_method

    run = Training(get_method(method), images, params, labels=labels, device=args.device, seed=args.seed,
                   threads=args.threads, max_fps=0)
    t0 = time.perf_counter()
    final = run.run()
    return run, time.perf_counter() - t0, final


def score(pred: np.ndarray, truth: np.ndarray, foreground: int = 1) -> dict[str, list[float]]:
    """Per-slice DSC, IoU and HD95 of ``pred == foreground`` against ``truth == foreground`` ``(N, Y, X)``."""
    from napari_selfseg import metrics

    out = {"dsc": [], "iou": [], "hd95": []}
    for p, t in zip(pred, truth):
        p, t = p == foreground, t == foreground
        out["dsc"].append(metrics.dice(p, t))
        out["iou"].append(metrics.iou(p, t))
        out["hd95"].append(metrics.hausdorff(p, t, percentile=95))
    return out


def _merge(acc: dict, new: dict) -> None:
    for key, values in new.items():
        acc.setdefault(key, []).extend(values)


def _fmt(values) -> str:
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    text = f"{finite.mean():.3f} ± {finite.std():.3f}" if len(finite) else "n/a"
    return text + (f" ({len(values) - len(finite)} inf)" if len(finite) < len(values) else "")


def _params(args, base: dict) -> dict:
    from napari_selfseg.params import parse_assignments

    params = {**base, **parse_assignments(args.assignments)}
    if args.max_side is not None:
        params["max_side"] = args.max_side
    if args.iterations is not None:
        params["max_iterations"] = args.iterations
    elif args.quick:
        params["max_iterations"] = 60
    return params


def _folds_label(args) -> str:
    run = args.max_folds if args.max_folds is not None and args.max_folds < args.folds else None
    return f"{args.folds}-fold" + (f" (first {run} fold{'s' if run > 1 else ''})" if run else "")


def cross_validate(method, images, truth, params, args, foreground=1, labelled=None, log_name=""):
    """k-fold scores of ``method``; ``labelled`` (int) keeps ground truth on that many training slices."""
    scores, seconds, iterations = {}, [], []
    parts = folds(len(images), args.folds, args.seed)
    for i, test in enumerate(parts[:args.max_folds]):
        train_idx = np.setdiff1d(np.arange(len(images)), test)
        labels = truth[train_idx].copy()
        if labelled is not None:
            keep = np.random.default_rng(args.seed + i).permutation(len(train_idx))[:labelled]
            labels[np.setdiff1d(np.arange(len(train_idx)), keep)] = -1
        run, secs, final = train(method, images[train_idx], labels, params, args)
        pred = run.predict(images[test])
        fold = score(pred, truth[test], foreground)
        if foreground == 0:  # EM: report the cell interior too
            fold["interior"] = score(pred, truth[test], 1)["dsc"]
        _merge(scores, fold)
        seconds.append(secs)
        iterations.append(final.iteration)
        _log(f"{log_name} {method} fold {i + 1}: DSC {np.mean(fold['dsc']):.3f} in {secs:.0f} s, "
             f"{final.iteration} it ({final.stop_reason}), best val Dice {run.trainer.best_dice:.3f}")
    return scores, seconds, iterations


def _row(label, method, params, scores, seconds, iterations, target, size, extra=None) -> str:
    dsc = np.mean(scores["dsc"])
    met = "met" if dsc >= target else "not met"
    cells = [label, method, size, _fmt(scores["dsc"]), _fmt(scores["iou"]), _fmt(scores["hd95"])]
    if extra is not None:
        cells.append(extra)
    cells += [f"{np.mean(seconds):.0f}", f"{np.mean(iterations):.0f}", f"≥ {target} ({met})"]
    return "| " + " | ".join(cells) + " |"


def _size(params: dict, args, shape) -> str:
    side = params.get("max_side", 128)
    size = f"{shape[0]}x{shape[1]} (full)" if args.device.startswith("cuda") or not side else f"{side}x{side}"
    patch = params.get("patch", 0)
    return size + (f", {patch}² patches" if patch else "")


# Defaults sized for the GPU run (full resolution, ~15 ms a step); on a CPU pass --iterations and --max-folds.
LUNG = {"intensity": "hounsfield", "max_iterations": 1000}
# EM membranes are class 0 of the data set: the Dice term averages over both classes so that it scores them
EM = {"max_side": 0, "patch": 128, "max_iterations": 3000, "dice_classes": "all"}


def lung_rows(args) -> list[str]:
    images, truth = _stack("lung_ct_2d")
    rows = []
    targets = {"unet": 0.98, "lgan": 0.98}
    for method in args.methods:
        params = _params(args, LUNG)
        s, sec, it = cross_validate(method, images, truth, params, args, log_name="lung")
        rows.append(_row(f"lung CT, {_folds_label(args)}, all labels", method, params, s, sec, it, targets[method],
                         _size(params, args, images.shape[1:])))
    return rows


def cycle_rows(args) -> list[str]:
    images, truth = _stack("lung_ct_2d")
    rows = []
    for method in ("unet", "cycle"):
        params = _params(args, LUNG)
        s, sec, it = cross_validate(method, images, truth, params, args, labelled=10, log_name="lung-10")
        rows.append(_row(f"lung CT, {_folds_label(args)}, 10 labelled + rest unlabelled", method, params, s, sec, it,
                         0.68, _size(params, args, images.shape[1:])))
    return rows


def em_rows(args) -> list[str]:
    images, interior = _stack("isbi2012_em")
    params = _params(args, EM)
    s, sec, it = cross_validate("unet", images, interior, params, args, foreground=0, log_name="em")
    extra = _fmt(s["interior"])
    row = _row(f"ISBI EM membranes, {_folds_label(args)}", "unet", params, s, sec, it, 0.88,
               _size(params, args, images.shape[1:]), extra)
    return [row]


def speed_row(args) -> str:
    """Seconds of U-Net training until the validation Dice first reaches 0.95 (lung CT, fold 1)."""
    from napari_selfseg.engine import Training
    from napari_selfseg.methods import get_method

    images, truth = _stack("lung_ct_2d")
    test = folds(len(images), args.folds, args.seed)[0]
    train_idx = np.setdiff1d(np.arange(len(images)), test)
    params = _params(args, LUNG)
    run = Training(get_method("unet"), images[train_idx], params, labels=truth[train_idx], device=args.device,
                   seed=args.seed, threads=args.threads, max_fps=1000)
    reached = None
    cpu0 = time.process_time()
    for snap in run.snapshots():
        if reached is None and snap.losses.get("val_dice", 0) >= 0.95:
            # CPU seconds too: on a shared machine wall time measures the neighbours as much as the method
            reached = (snap.elapsed, snap.iteration, time.process_time() - cpu0)
            run.stop()
    test_dsc = np.mean(score(run.predict(images[test]), truth[test])["dsc"])
    when = (f"{reached[0]:.0f} s wall, {reached[2]:.0f} s CPU ({reached[1]} iterations)" if reached
            else "not reached")
    return (f"U-Net on lung CT ({_size(params, args, images.shape[1:])}, {args.device}, {args.threads} thread(s)): "
            f"validation DSC ≥ 0.95 after **{when}** of training; the held-out fold then scores DSC {test_dsc:.3f} "
            f"(target: within 600 s of training on CPU: {'met' if reached and reached[0] <= 600 else 'not met'}"
            f"{' by CPU time' if reached and reached[2] <= 600 < reached[0] else ''}).")


HEADER = ("| data | method | training size | DSC | IoU | HD95 (px) | train s / fold | iterations | target |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
EM_HEADER = ("| data | method | training size | membrane DSC | IoU | HD95 (px) | interior DSC | train s / fold | "
             "iterations | target |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def main(argv=None) -> int:
    args = _args(list(sys.argv[1:] if argv is None else argv))
    for name in ("lung_ct_2d", "isbi2012_em"):
        if not datasets.available(name):
            _log(f"data set {name} not found under {datasets.DATA_ROOT}: nothing to measure")
            return 0
    parts = []
    rows = []
    if args.quick and args.max_folds is None:
        args.max_folds = 2
    if "lung" in args.parts:
        rows += lung_rows(args)
    if "cycle" in args.parts:
        rows += cycle_rows(args)
    if rows:
        parts.append(HEADER + "\n" + "\n".join(rows))
    if "em" in args.parts:
        parts.append(EM_HEADER + "\n" + "\n".join(em_rows(args)))
    if "speed" in args.parts:
        parts.append(speed_row(args))
    command = "python -m benchmarks supervised " + " ".join(argv if argv is not None else sys.argv[1:])
    report = f"Measured {machine()}.\nCommand: `{command.strip()}`\n\n" + "\n\n".join(parts)
    print(report)
    if args.write:
        name = " ".join([SECTION, *args.parts, *(args.methods if "lung" in args.parts else [])])
        write_section(name + (" (quick)" if args.quick else "") + (f" {args.device}" if args.device != "cpu" else ""),
                      report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
