"""``python -m benchmarks``: quality on ../shared/data and speed, printed as tables, optionally written
into BENCHMARKS.md (each run replaces its own section).

    python -m benchmarks quality --methods feature-clustering kmeans --data bsds500 ph2 [--limit N] [--write]
    python -m benchmarks quality --quick          # a few images per set: the CI smoke test
    python -m benchmarks speed [--write]
    python -m benchmarks NAME ...                 # a method's own benchmark: benchmarks/NAME.py's main()
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

from . import datasets
from .report import BENCHMARKS_MD, machine, write_section  # noqa: F401

# What each method is compared with by default, and its parameters in the quality runs.
DEFAULT_METHODS = ["feature-clustering", "kmeans"]
METHOD_PARAMS = {"kmeans": {"k": 3}}


def _args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quality", help="scores on the evaluation data with each set's protocol")
    q.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    q.add_argument("--data", nargs="+", default=list(datasets.NAMES), choices=datasets.NAMES)
    q.add_argument("--limit", type=int, default=None, help="first N images of each set")
    q.add_argument("--quick", action="store_true", help="2 images per set, no border variants")
    q.add_argument("--set", dest="assignments", action="append", default=[], metavar="METHOD:KEY=VALUE")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--threads", type=int, default=1)
    q.add_argument("--device", default="cpu")
    q.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    q.add_argument("--section", default=None, help="BENCHMARKS.md section name (default from the methods)")
    s = sub.add_parser("speed", help="first frame, final segmentation, headless vs streamed throughput")
    s.add_argument("--method", default="feature-clustering")
    s.add_argument("--iterations", type=int, default=250, help="training steps of each timed run")
    s.add_argument("--repeats", type=int, default=3, help="headless and streamed runs compared pairwise")
    s.add_argument("--paper-budget", type=float, default=60.0, help="seconds the paper setting may run")
    s.add_argument("--device", default="cpu")
    s.add_argument("--write", action="store_true")
    return ap.parse_args(argv)


def _method_params(methods, assignments):
    from napari_selfseg.params import parse_assignments

    params = {m: dict(METHOD_PARAMS.get(m, {})) for m in methods}
    for item in assignments:
        method, _, pair = item.partition(":")
        if method not in params:
            raise SystemExit(f"--set {item}: method {method!r} is not among --methods")
        params[method].update(parse_assignments([pair]))
    return params


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "NAPARI_SELFSEG_CONFIG" in os.environ:
        return _run(argv)
    # panels start from the methods' defaults, not from what the user last trained with, and leave that alone
    with tempfile.TemporaryDirectory(prefix="selfseg-benchmark-settings-") as config:
        os.environ["NAPARI_SELFSEG_CONFIG"] = config
        try:
            return _run(argv)
        finally:
            del os.environ["NAPARI_SELFSEG_CONFIG"]


def _run(argv: list[str]) -> int:
    if argv and argv[0] not in ("quality", "speed", "-h", "--help"):
        import importlib

        # methods that train on sets or volumes (cross-validation, 3D) have their own benchmark module
        module = importlib.import_module(f"benchmarks.{argv[0].replace('-', '_')}")
        return module.main(argv[1:])
    args = _args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.command == "quality":
        from . import quality

        limit = 2 if args.quick and args.limit is None else args.limit
        methods = _method_params(args.methods, args.assignments)
        results = quality.run(methods, args.data, limit, seed=args.seed, threads=args.threads,
                              device=args.device, border=not args.quick, log=log)
        body = quality.table(results, args.device)
        section = args.section or "quality " + " ".join(args.methods)
        command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    else:
        from . import speed

        body = speed.run(args.method, args.iterations, args.paper_budget, args.device, args.repeats, log=log)
        section = f"speed {args.method}"
        command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    report = f"Measured {machine()}.\nCommand: `{command}`\n\n{body}"
    print(report)
    if getattr(args, "write", False):
        write_section(section, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
