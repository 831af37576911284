"""``napari-selfseg``: the same engine from the command line, for batches.

    napari-selfseg segment INPUT... --method NAME [--preset P] [--set key=value ...] [--device D]
                           [--seed N] [--max-seconds S] [--threads T] -o OUTDIR
    napari-selfseg methods            # list methods and their parameters
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .api import is_volume, provenance, training
from .engine import default_threads
from .imageprep import InputError
from .io import expand_inputs, label_path, read_image, write_json, write_labels
from .methods import get_method, list_methods
from .params import param_specs, parse_assignments


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="napari-selfseg", description="Self-supervised segmentation, headless.")
    sub = ap.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment", help="train a method on each input and write its label map")
    seg.add_argument("inputs", nargs="+", help="image files, folders or globs (PNG/JPG/BMP/TIFF/NIfTI)")
    seg.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    seg.add_argument("--method", default="feature-clustering", help="method id (see `napari-selfseg methods`)")
    seg.add_argument("--preset", default=None, help="a named parameter preset of the method, e.g. paper")
    seg.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                     help="override a parameter; repeatable")
    seg.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    seg.add_argument("--seed", type=int, default=0)
    seg.add_argument("--max-seconds", type=float, default=None, help="time budget per input")
    seg.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: a safe small number)")
    seg.add_argument("--skip-existing", action="store_true", help="skip inputs whose label file exists")
    seg.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.add_parser("methods", help="list the methods and their parameters")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "methods":
        return _list_methods()
    return _segment(args)


def _list_methods() -> int:
    for method_id in list_methods():
        method = get_method(method_id)
        print(f"{method_id}: {method.title}. {method.description}")
        if method.presets:
            print(f"  presets: {', '.join(method.presets)}")
        for spec in param_specs(method.params):
            bounds = f" [{spec.low:g}, {spec.high:g}]" if spec.low is not None else ""
            print(f"  {spec.name}={spec.default!r}{bounds}: {spec.help}")
    return 0


def _segment(args) -> int:
    try:
        get_method(args.method)
        overrides = parse_assignments(args.assignments)
        # validate the parameters once, before any input is read
        training(np.zeros((4, 4), np.uint8), args.method, preset=args.preset, device=args.device, **overrides)
    except (ValueError, InputError) as err:
        print(f"napari-selfseg: {err}", file=sys.stderr)
        return 2
    paths = expand_inputs(args.inputs)
    if not paths:
        print("napari-selfseg: no input files found", file=sys.stderr)
        return 2
    threads = args.threads or default_threads()
    written, skipped, failed = [], [], []
    bar = _progress(paths, args.quiet)
    for path in bar:
        try:
            image = read_image(path)
            out = label_path(image, args.output)
            if args.skip_existing and out.exists():
                skipped.append(path)
                continue
            labels, record = _segment_one(image, args, overrides, threads)
            write_labels(out, labels, image)
            write_json(out.with_name(out.name.split(".")[0] + ".json"), record)
            written.append(out)
        except (InputError, ValueError, RuntimeError, MemoryError) as err:
            failed.append(path)  # reported, and the other inputs still run
            _print_above(bar, f"failed: {err}")
    print(f"{len(written)} written, {len(skipped)} skipped (existing), {len(failed)} failed -> {args.output}")
    for path in failed:
        print(f"  failed: {path}", file=sys.stderr)
    return 1 if failed else 0


def _segment_one(image, args, overrides, threads):
    """Train on one image (a volume: on its middle slice, then label every slice); labels + provenance."""
    data = image.data
    volume = is_volume(data, image.rgb)
    plane = data[data.shape[0] // 2] if volume else data
    run = training(plane, args.method, preset=args.preset, device=args.device, seed=args.seed,
                   max_seconds=args.max_seconds, threads=threads, max_fps=0, rgb=image.rgb, **overrides)
    started = time.perf_counter()
    final = run.run()
    labels = np.stack([run.predict(s, rgb=image.rgb) for s in data]) if volume else final.labels
    record = provenance(run, input=str(image.path), input_shape=list(data.shape), iterations=final.iteration,
                        final_losses=final.losses, seconds=round(time.perf_counter() - started, 3),
                        trained_on="middle slice" if volume else "image", threads=threads)
    return labels, record


def _progress(paths, quiet):
    if quiet:
        return paths
    from tqdm import tqdm

    return tqdm(paths, desc="segment", unit="image", file=sys.stderr)


def _print_above(bar, message: str) -> None:
    if hasattr(bar, "write"):
        bar.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
