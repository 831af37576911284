"""``napari-selfseg``: the same engine from the command line, for batches.

    napari-selfseg segment INPUT... -o OUTDIR [--method NAME] [--preset P] [--set key=value ...]
                           [--device D] [--seed N] [--max-seconds S] [--threads T] [--skip-existing]
    napari-selfseg train INPUT... --method NAME [--labels MASK...] -o MODEL [same options as segment]
    napari-selfseg apply --model MODEL INPUT... -o OUTDIR [--device D] [--skip-existing]
                         [--scheduler local|ADDRESS] [--workers N]
    napari-selfseg methods            # list methods and their parameters

INPUT may be files, folders or globs. Exit status: 0 all written (or skipped), 1 some input failed (the
others are still written), 2 bad arguments.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .api import as_training_input, provenance, resolve_params, train
from .batch import Outcome, apply_distributed, apply_file, label_file, segment_image
from .bundle import load_model, save_model
from .engine import default_threads, resolve_device
from .imageprep import InputError
from .io import expand_inputs, read_image
from .labelmaps import ground_truth
from .methods import get_method, list_methods
from .params import param_specs, parse_assignments


def _training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="feature-clustering", help="method id (see `napari-selfseg methods`)")
    p.add_argument("--preset", default=None, help="a named parameter preset of the method, e.g. paper")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter; repeatable")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=None, help="training time budget (per input for segment)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: a safe small number)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="napari-selfseg", description="Self-supervised segmentation, headless.")
    sub = ap.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment", help="train a method on each input and write its label map")
    seg.add_argument("inputs", nargs="+", help="image files, folders or globs (PNG/JPG/BMP/TIFF/NIfTI)")
    seg.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    seg.add_argument("--skip-existing", action="store_true", help="skip inputs whose label file exists (resume)")
    _training_options(seg)
    tr = sub.add_parser("train", help="train one model on the inputs (a set of planes or a volume) and save it")
    tr.add_argument("inputs", nargs="+", help="image files, folders or globs; stack methods train on all planes")
    tr.add_argument("--labels", nargs="+", default=None,
                    help="ground-truth masks paired with the inputs by order (mask > 0 is foreground for 0/255)")
    tr.add_argument("-o", "--output", required=True, type=Path, help="model file (.safetensors)")
    _training_options(tr)
    ap_ = sub.add_parser("apply", help="label inputs with a trained model (no training)")
    ap_.add_argument("inputs", nargs="+", help="image files, folders or globs")
    ap_.add_argument("--model", required=True, type=Path, help="a model file written by `train` or the panel")
    ap_.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    ap_.add_argument("--device", default="auto")
    ap_.add_argument("--threads", type=int, default=None)
    ap_.add_argument("--skip-existing", action="store_true", help="skip inputs whose label file exists (resume)")
    ap_.add_argument("--scheduler", default=None,
                     help="run on dask.distributed: 'local' (a LocalCluster) or a scheduler address")
    ap_.add_argument("--workers", type=int, default=2, help="worker processes of a local cluster")
    ap_.add_argument("--quiet", action="store_true")
    sub.add_parser("methods", help="list the methods and their parameters")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"methods": _list_methods, "segment": _segment, "train": _train, "apply": _apply}
    return commands[args.command](args)


def _list_methods(args=None) -> int:
    for method_id in list_methods():
        method = get_method(method_id)
        print(f"{method_id}: {method.title}. {method.description}")
        extras = [f"trains on: {method.inputs}"] + ([f"ground truth: {method.ground_truth}"]
                                                    if method.ground_truth != "none" else [])
        if method.presets:
            extras.append(f"presets: {', '.join(method.presets)}")
        print(f"  {'; '.join(extras)}")
        for spec in param_specs(method.params):
            bounds = f" [{spec.low:g}, {spec.high:g}]" if spec.low is not None else ""
            print(f"  {spec.name}={spec.default!r}{bounds}: {spec.help}")
    return 0


def _fail(message: str) -> int:
    print(f"napari-selfseg: {message}", file=sys.stderr)
    return 2


def _checked_options(args) -> dict | None:
    """Validate method, preset, parameters and device before any input is read."""
    get_method(args.method)
    overrides = parse_assignments(args.assignments)
    resolve_params(args.method, args.preset, overrides)
    resolve_device(args.device)
    return overrides


def _inputs(args) -> list[Path]:
    paths = expand_inputs(args.inputs)
    if not paths:
        raise InputError("no input files found")
    return paths


def _segment(args) -> int:
    try:
        overrides = _checked_options(args)
        paths = _inputs(args)
    except (ValueError, InputError) as err:
        return _fail(str(err))
    threads = args.threads or default_threads()
    options = dict(preset=args.preset, device=args.device, seed=args.seed, max_seconds=args.max_seconds,
                   **overrides)

    def labeller(image):
        return segment_image(image, args.method, threads=threads, **options)

    outcomes = (label_file(p, args.output, labeller, args.skip_existing) for p in paths)
    return _report(outcomes, len(paths), args.output, args.quiet, "segment")


def _train(args) -> int:
    try:
        overrides = _checked_options(args)
        paths = _inputs(args)
        mask_paths = expand_inputs(args.labels) if args.labels else None
        if mask_paths is not None and len(mask_paths) != len(paths):
            raise InputError(f"{len(mask_paths)} label files for {len(paths)} inputs: give one mask per input")
        spec = get_method(args.method)
        if spec.load is None:
            raise InputError(f"{args.method} has no network to save; use `segment`")
        images = [read_image(p) for p in paths]
        data = as_training_input([i.data for i in images], spec.inputs, images[0].rgb)
        labels = None
        if mask_paths is not None:
            labels = ground_truth(as_training_input([read_image(p).data for p in mask_paths], spec.inputs, False))
    except (ValueError, InputError) as err:
        return _fail(str(err))
    threads = args.threads or default_threads()
    print(f"training {args.method} on {len(paths)} input(s), data {tuple(data.shape)}"
          + (f", {int((labels >= 0).reshape(len(labels), -1).any(1).sum())} labelled plane(s)" if labels is not None
             and labels.ndim == 3 else ""), file=sys.stderr)
    try:
        run = train(data, args.method, labels=labels, preset=args.preset, device=args.device, seed=args.seed,
                    max_seconds=args.max_seconds, threads=threads, rgb=images[0].rgb, spacing=images[0].spacing,
                    **overrides)
        record = provenance(run, inputs=[str(p) for p in paths], labels=[str(p) for p in mask_paths or []],
                            threads=threads)
        out = save_model(run, args.output, **record)
    except (ValueError, InputError, RuntimeError, MemoryError) as err:
        return _fail(f"training failed: {err}")
    print(f"model written: {out} (stopped by {run.stop_reason})")
    return 0


def _apply(args) -> int:
    try:
        model = load_model(args.model, args.device)  # fail early on a bad model file
        paths = _inputs(args)
    except (ValueError, InputError) as err:
        return _fail(str(err))
    device = str(resolve_device(args.device))
    if args.scheduler:
        outcomes = apply_distributed(str(model.path), paths, args.output, args.scheduler, device,
                                     args.skip_existing, args.workers)
    else:
        threads = args.threads or default_threads()
        outcomes = (apply_file(str(model.path), str(p), str(args.output), device, args.skip_existing, threads)
                    for p in paths)
    return _report(outcomes, len(paths), args.output, args.quiet, "apply")


def _report(outcomes, total: int, outdir: Path, quiet: bool, desc: str) -> int:
    """Drain ``outcomes`` with a progress bar; print failures as they happen and a summary at the end."""
    bar = None if quiet else _progress_bar(total, desc)
    done: list[Outcome] = []
    for outcome in outcomes:
        done.append(outcome)
        if outcome.status == "failed":
            _print_above(bar, f"failed: {outcome.message}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    counts = {s: sum(o.status == s for o in done) for s in ("written", "skipped", "failed")}
    print(f"{counts['written']} written, {counts['skipped']} skipped (existing), {counts['failed']} failed -> {outdir}")
    for o in done:
        if o.status == "failed":
            print(f"  failed: {o.path}", file=sys.stderr)
    return 1 if counts["failed"] else 0


def _progress_bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="file", file=sys.stderr)


def _print_above(bar, message: str) -> None:
    if bar is not None:
        bar.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
