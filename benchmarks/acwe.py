"""Benchmark of the active-contour network (``acwe``): the four modes on the lung CT slices stacked as a
volume (cross-validated: labelled slices are never scored), mode 1 on PH2 and ISBI EM, and time.

    python -m benchmarks acwe [--quick] [--write] [--folds 3] [--sets lung_ct_2d ph2 isbi2012_em]

Protocol (lung CT, 67 slices): mode 1 trains on all slices without labels and is scored on all of them.
For the labelled modes the slices are shuffled once (seed); in fold f the "few labels" set is 10 slices
(the paper's mode 2 and 4 count) and the "more labels" set those 10 plus 20 more (30; the paper's 80 of a
larger set). Every mode of a fold is scored on the same slices: those outside the 30, so modes 1-4
are compared on identical, never-labelled slices. Modes 2-3 fine-tune the fold's copy of the mode-1
network (exactly what a mode 2/3 run does after its unsupervised steps); mode 4 trains from scratch, once
with the few labels and once with the more (the paper's mode 4 learns jointly from its labelled set).
Each number is given without and with the border step, under the best-overlap rule, and with the step
without the slices whose ground truth is known to be wrong (``datasets.DEFECTIVE``).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from napari_selfseg.api import resolve_params, training
from napari_selfseg.engine import TrainContext, resolve_device
from napari_selfseg.methods.acwe import ACWETrainer, prepare
from napari_selfseg.metrics import evaluate
from napari_selfseg.postprocess import split_border_components

from . import datasets
from .report import machine, write_section

LUNG = {"intensity": "ct-window", "window_low": -600.0, "window_high": 200.0}
# EM membranes are a few pixels wide at 512 px: they need a finer training grid than lungs or lesions
OTHER = {"ph2": {}, "isbi2012_em": {"train_size": 128, "batch_size": 2}}
SETS = ("lung_ct_2d", "ph2", "isbi2012_em")
FEW, MORE = 10, 30


def _scores(labels: np.ndarray, gts, rule: str = "best-overlap", valid=None) -> dict[str, float]:
    """Mean DSC over slices without / with the border step; ``dsc_valid``: with the border step over the
    slices where ``valid`` (bool per slice: ground truth not known to be defective) only."""
    plain = [evaluate(lab, gt, rule)["dsc"] for lab, gt in zip(labels, gts)]
    border = [evaluate(split_border_components(lab), gt, rule)["dsc"] for lab, gt in zip(labels, gts)]
    valid = np.ones(len(border), bool) if valid is None else np.asarray(valid, bool)
    kept = np.asarray(border)[valid]
    return {"dsc": float(np.mean(plain)), "dsc_border": float(np.mean(border)),
            "std": float(np.std(plain)), "std_border": float(np.std(border)),
            "dsc_valid": float(kept.mean()) if len(kept) else float("nan"), "n_valid": int(valid.sum())}


def _train(image, labels, params, seed, threads, device):
    """A finished engine run on a stack (labels: ground truth or None)."""
    run = training(image, "acwe", labels=labels, seed=seed, threads=threads, device=device, max_fps=0, **params)
    started = time.perf_counter()
    final = run.run()
    return run, final.labels, time.perf_counter() - started


def _finetune(image01, labels, state, params, seed, threads, device) -> np.ndarray:
    """Mode 2/3 from a stored mode-1 network: the fine-tuning steps only, then the whole stack."""
    p = resolve_params("acwe", None, {**params, "mode": 2})
    ctx = TrainContext(image01, p, resolve_device(device), seed, labels=labels)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        trainer = ACWETrainer(ctx)
        trainer.net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
        trainer.iteration = p.iterations  # the unsupervised phase is the stored network
        for _ in range(p.finetune_iterations):
            trainer.step()
        return trainer.finish()
    finally:
        torch.set_num_threads(before)


def _with_labels(gt: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    labels = np.full(gt.shape, -1, np.int64)
    labels[labelled] = gt[labelled].astype(np.int64)
    return labels


def lung(folds: int, params: dict, seed: int, threads: int, device: str, log) -> tuple[list[str], dict]:
    samples = list(datasets.load("lung_ct_2d"))
    volume = np.stack([s.image for s in samples])
    gt = np.stack([s.gt for s in samples])
    valid = np.array([s.name not in datasets.DEFECTIVE["lung_ct_2d"] for s in samples])
    n = len(volume)
    rows, info = [], {}
    started = time.perf_counter()
    run1, labels1, seconds1 = _train(volume, None, {**params, "mode": 1}, seed, threads, device)
    info["mode1_seconds"] = time.perf_counter() - started
    info["first_frame"] = _first_frame(volume, params, seed, threads, device)
    all1 = _scores(labels1, gt, valid=valid)
    log(f"lung mode 1 (all {n}): {all1} in {seconds1:.0f} s")
    rows.append(("mode 1, all slices", "0", n, all1))
    state = run1.trainer.state_dict()
    image01 = prepare(volume, run1.params)
    order = np.random.default_rng(seed).permutation(n)
    per_mode = {m: [] for m in ("1", "2", "3", "4", "4+")}
    for f in range(folds):
        shifted = np.roll(order, -f * FEW)
        few, more = np.sort(shifted[:FEW]), np.sort(shifted[:MORE])
        few, more = few[valid[few]], more[valid[more]]  # a defective mask would teach the wrong thing
        scored = np.setdiff1d(np.arange(n), more)
        per_mode["1"].append(_scores(labels1[scored], gt[scored], valid=valid[scored]))
        for mode, labelled in (("2", few), ("3", more)):
            out = _finetune(image01, _with_labels(gt, labelled), state, params, seed, threads, device)
            per_mode[mode].append(_scores(out[scored], gt[scored], valid=valid[scored]))
        for mode, labelled in (("4", few), ("4+", more)):  # the paper's mode 4 learns from its labelled set
            _, labels4, seconds4 = _train(volume, _with_labels(gt, labelled), {**params, "mode": 4}, seed, threads,
                                          device)
            per_mode[mode].append(_scores(labels4[scored], gt[scored], valid=valid[scored]))
        figures = ", ".join(f"mode {m} " + "/".join(f"{v[-1][k]:.3f}" for k in ("dsc", "dsc_border", "dsc_valid"))
                            for m, v in per_mode.items())
        log(f"lung fold {f}: {figures} (mode 4 with {MORE} labels {seconds4:.0f} s)")
    for mode, label_count in (("1", "0"), ("2", str(FEW)), ("3", str(MORE)), ("4", str(FEW)), ("4+", str(MORE))):
        values = per_mode[mode]
        mean = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
        rows.append((f"mode {mode[0]}, {folds}-fold", label_count, len(scored), mean))
    info["n"] = n
    return _table("lung_ct_2d (stacked, CT window -600..200 HU)", rows), info


def _first_frame(volume, params, seed, threads, device) -> float:
    """Seconds from the raw stack to the first displayed frame (prepare, build, one step, the preview)."""
    run = training(volume, "acwe", seed=seed, threads=threads, device=device, max_fps=1000, **params)
    started = time.perf_counter()
    frames = run.snapshots()
    next(frames)
    seconds = time.perf_counter() - started
    run.cancel()
    for _ in frames:
        pass
    return seconds


def _resized_stack(images: list[np.ndarray]) -> np.ndarray:
    """Images of different sizes -> one stack at the most common size (bilinear, values kept)."""
    from skimage.transform import resize

    shapes = [im.shape for im in images]
    target = max(set(shapes), key=shapes.count)
    return np.stack([im if im.shape == target else
                     resize(im, target, order=1, preserve_range=True, anti_aliasing=True).astype(im.dtype)
                     for im in images])


def other_set(name: str, params: dict, seed: int, threads: int, device: str, limit, log) -> list[str]:
    """Mode 1 trained on the whole set as one stack, each image then labelled at its own size."""
    samples = list(datasets.load(name, limit))
    images = [s.image for s in samples]
    rgb = images[0].ndim == 3
    stack = _resized_stack(images)
    run, _, seconds = _train(stack, None, {**params, "mode": 1}, seed, threads, device)
    labels = [run.predict(im, rgb=rgb) for im in images]
    rows = [("mode 1", "0", len(images), _scores(labels, [s.gt for s in samples]))]
    log(f"{name}: {rows[0][3]} in {seconds:.0f} s")
    return _table(f"{name} (mode 1, one network on the {len(images)} images)", rows)


def _table(title: str, rows) -> list[str]:
    lines = [f"**{title}**", "", "| mode | labelled slices | scored | DSC | DSC with border step | "
             "with border step, without defective ground truth |", "| --- | --- | --- | --- | --- | --- |"]
    for mode, count, scored, s in rows:
        lines.append(f"| {mode} | {count} | {scored} | {s['dsc']:.3f} ± {s['std']:.3f} | "
                     f"{s['dsc_border']:.3f} ± {s['std_border']:.3f} | "
                     f"{s['dsc_valid']:.3f} (n = {s['n_valid']:.3g}) |")
    return lines + [""]


def _args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks acwe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 fold, fewer steps, 5 images of the other sets")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS,
                    help="lung_ct_2d: the four modes; the others: mode 1 (a BENCHMARKS.md section per choice)")
    ap.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--write", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    from napari_selfseg.params import parse_assignments

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    params = parse_assignments(args.assignments)
    folds, limit = (1, 5) if args.quick else (args.folds, None)
    if args.quick:
        params = {"iterations": 60, "finetune_iterations": 30, **params}
    lines = []
    if "lung_ct_2d" in args.sets and datasets.available("lung_ct_2d"):
        lung_lines, info = lung(folds, {**LUNG, **params}, args.seed, args.threads, args.device, log)
        p = resolve_params("acwe", None, {**LUNG, **params})
        timing = (f"Time on the lung stack ({info['n']} slices of 512x512, trained at {p.train_size} px, "
                  f"{p.iterations} steps of {p.batch_size} slices, {args.threads} threads, {args.device}): "
                  f"{info['mode1_seconds']:.0f} s from the raw stack to the final mode-1 segmentation of all "
                  f"slices at full resolution; first frame {info['first_frame']:.2f} s.")
        labelled = (f"Labelled modes: label loss on the output upsampled to {p.label_size} px ({p.label_heaviside} "
                    f"Heaviside, eps {p.label_epsilon}), modes 2-3 {p.finetune_iterations} fine-tuning steps, mode 4 "
                    f"{p.iterations + p.finetune_iterations} joint steps with alpha {p.alpha}, Adam at "
                    f"{p.finetune_learning_rate}" + (" decaying linearly to 0." if p.decay else "."))
        settings = ", ".join(f"{k}={v}" for k, v in {**LUNG, **params}.items())
        lines += [*lung_lines, timing, "", labelled, "", f"Lung settings: {settings}.", ""]
    for name in args.sets:
        if name != "lung_ct_2d" and datasets.available(name):
            settings = {**OTHER[name], **params}
            lines += other_set(name, settings, args.seed, args.threads, args.device, limit, log)
            lines += [f"{name} settings: " + (", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults")
                      + ".", ""]
    if not lines:
        log(f"skip: none of {args.sets} found under {datasets.DATA_ROOT}")
        return 0
    body = "\n".join(lines)
    command = "python -m benchmarks acwe " + " ".join(argv)
    report = f"Measured {machine()}.\nCommand: `{command}`\n\n{body}"
    print(report)
    if args.write:
        write_section("acwe" if args.sets == ["lung_ct_2d"] else "acwe " + " ".join(args.sets), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
