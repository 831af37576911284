"""Deep clustering 3D on ../shared/data: BRATS whole tumour (DSC, NMI) and nuclei img3d (ARI of connected
components) against k-means and Multi-Otsu on the same volumes, with time and peak RSS, plus the cost
of the paper setting measured on a subsample and extrapolated to its full schedule.

    python -m benchmarks deep-clustering-3d [--quick] [--write]

Each run is a separate process, so its peak RSS (``ru_maxrss``, data loading included) is its own.
BRATS: input (FLAIR, T1c), the brain mask as the object (the panel's mask layer), scored inside the brain:
DSC of the cluster overlapping the whole tumour most, NMI against the 5 classes (0 healthy, 1-4 tumour),
for the chosen label projection and, from the same run, the paper's block projection.
Baselines: k-means (K = 4) of (FLAIR, T1c) and Multi-Otsu (3 classes) of FLAIR inside the brain, the
settings whose scores the issue quotes (DSC about 0.47 / 0.53, NMI 0.17 / 0.23).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np

from . import datasets
from .report import machine, write_section

SECTION = "deep-clustering-3d"
METHOD = "deep-clustering-3d"


def _brats(index: int) -> datasets.Sample:
    return list(datasets.load("brats_mri_3d"))[index]


def _nuclei3d() -> datasets.Sample:
    return [s for s in datasets.load("nuclei") if s.name == "img3d"][0]


def _baseline(kind: str, image: np.ndarray, mask: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k-means of the channels or Multi-Otsu of channel 0, inside ``mask``; ids from 1, 0 outside."""
    x = image.reshape(mask.shape + (-1,))[mask].astype(np.float32)
    labels = np.zeros(mask.shape, np.int64)
    if kind == "kmeans":
        from sklearn.cluster import KMeans

        rng = np.random.default_rng(seed)
        fit = x if len(x) <= 50_000 else x[rng.choice(len(x), 50_000, replace=False)]
        labels[mask] = KMeans(k, n_init=4, random_state=seed).fit(fit).predict(x) + 1
    else:
        from skimage.filters import threshold_multiotsu

        labels[mask] = np.digitize(x[:, 0], threshold_multiotsu(x[:, 0], classes=k, nbins=128)) + 1
    return labels


def _component_ari(labels: np.ndarray, instances: np.ndarray) -> float:
    """ARI of the connected components of every cluster (0 = background stays one region) vs instances."""
    from scipy import ndimage as ndi

    from napari_selfseg.metrics import adjusted_rand

    components = np.zeros(labels.shape, np.int64)
    offset = 0
    for value in np.unique(labels[labels > 0]):
        comp, n = ndi.label(labels == value)
        components[comp > 0] = comp[comp > 0] + offset
        offset += n
    return adjusted_rand(components, instances)


def _deep(image, params: dict, labels=None, spacing=None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels of one run with the chosen projection, and the paper's block projection of the same run."""
    from napari_selfseg import training

    run = training(image, METHOD, labels=labels, spacing=spacing, seed=seed, threads=1, max_fps=0,
                   device="cpu", **params)
    return run.run().labels, run.trainer.final_labels("blocks")


def _one(job: dict) -> dict:
    """One measurement (run in its own process): scores, seconds and peak RSS in GB."""
    from napari_selfseg.metrics import binary_scores, nmi

    t0 = time.perf_counter()
    if job["data"] == "brats":
        s = _brats(job["index"])
        brain, classes = s.extra["brain_mask"], s.extra["tumour_labels"]
        t0, c0 = time.perf_counter(), time.process_time()
        blocks = None
        if job["method"] == METHOD:
            labels, blocks = _deep(s.image, job["params"], brain.astype(np.int64), s.spacing)
        else:
            image = s.image if job["method"] == "kmeans" else s.image[..., :1]
            labels = _baseline(job["method"], image, brain, job["params"]["k"])
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0

        def score(labels, suffix=""):
            labels = np.where(brain, labels, 0)
            return {f"dsc{suffix}": binary_scores(labels, s.gt)["dsc"],
                    f"nmi{suffix}": nmi(labels[brain], classes[brain])}

        scores = {**score(labels), **({} if blocks is None else score(blocks, "_blocks"))}
    else:
        from skimage.filters import threshold_otsu

        from napari_selfseg.imageprep import prepare_stack

        s = _nuclei3d()
        t0, c0 = time.perf_counter(), time.process_time()
        image = prepare_stack(s.image)
        blocks = None
        if job["method"] == METHOD:
            # the object: Otsu's threshold of the volume (a rule, not a value tuned on this one image)
            params = {**job["params"], "threshold": float(threshold_otsu(image[..., 0]))}
            labels, blocks = _deep(s.image, params)
        else:  # the baselines split all voxels into K classes
            labels = _baseline(job["method"], image, np.ones(image.shape[:-1], bool), job["params"]["k"])
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        scores = {"ari": _component_ari(labels, s.gt)}
        if blocks is not None:
            scores["ari_blocks"] = _component_ari(blocks, s.gt)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux -> GB
    return {**job, **scores, "seconds": seconds, "cpu_seconds": cpu, "rss_gb": peak, "name": s.name,
            "shape": list(s.image.shape)}


def _paper_cost(index: int, n_patches: int) -> dict:
    """Run phase 1 of the paper preset with ``n_patches`` patches and a few minibatches per period on
    one BRATS volume; time each kind of step (CPU time) and extrapolate to the paper's schedule (10,000
    patches, 2000 minibatches of 100 per period and in the final pass, one embedding per phase-2 block)."""
    import torch

    from napari_selfseg.api import resolve_params
    from napari_selfseg.engine import TrainContext, prepare_input
    from napari_selfseg.methods import deep_clustering_3d as dc
    from napari_selfseg.methods import get_method

    torch.set_num_threads(1)
    paper = resolve_params(METHOD, "paper")
    p = resolve_params(METHOD, "paper", {"n_patches": n_patches, "period_iterations": 3, "final_iterations": 3})
    s = _brats(index)
    brain = s.extra["brain_mask"]
    ctx = TrainContext(prepare_input(get_method(METHOD), s.image, p), p, torch.device("cpu"), 0,
                       labels=brain.astype(np.int64), spacing=s.spacing)
    clock = time.process_time  # CPU time: the shared machine's load inflates wall time
    t0 = clock()
    trainer = dc.DeepClustering3DTrainer(ctx)
    seconds, counts = {"init": clock() - t0}, {}
    initial = None
    while trainer.phase != "start_phase2":  # phase 2 costs one embedding per block: estimated below
        phase, start, cursor = trainer.phase, clock(), trainer.cursor
        trainer.step()
        seconds[phase] = seconds.get(phase, 0.0) + clock() - start
        if phase == "merge" and initial is None:
            initial = int(trainer.labels.max()) + 1
        done = (trainer.cursor or len(trainer.centres)) - cursor if phase == "embed" else 1
        counts[phase] = counts.get(phase, 0) + (done if phase == "embed" else 1)
    total = clock() - t0
    _, block_centres, _ = trainer.model.blocks(trainer.work, trainer.work_mask)
    counts["blocks"] = len(block_centres)
    # the paper's schedule: periods of ceil(eta * c) merges from ~n/3 initial clusters down to C
    clusters, periods = initial * paper.n_patches / n_patches, 0
    while clusters > paper.clusters:
        clusters -= dc.merges_per_period(math.ceil(clusters), paper.eta, paper.clusters)
        periods += 1
    minibatches = (periods + 1) * paper.period_iterations  # the first, clustering-free period included
    per_batch = seconds["train"] / counts["train"] * paper.batch_size / min(p.batch_size, n_patches)
    per_patch = seconds["embed"] / counts["embed"]
    seconds["blocks"] = counts["blocks"] * per_patch
    estimate = (minibatches * per_batch + (periods + 2) * paper.n_patches * per_patch + seconds["blocks"])
    return {"n_patches": n_patches, "seconds": total, "per_batch": per_batch, "per_patch": per_patch,
            "blocks_seconds": seconds["blocks"], "blocks": counts["blocks"], "periods": periods,
            "minibatches": minibatches, "estimate_hours": estimate / 3600, "dsc": float("nan"),
            "nmi": float("nan"), "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def _spawn(kind: str, job: dict, log, results: str | None = None) -> dict:
    """Run one job in a fresh process; with ``results`` (a JSON-lines file) reuse a stored result of the
    same job and store new ones, so an interrupted benchmark resumes where it stopped."""
    key = json.dumps({"kind": kind, **job}, sort_keys=True)
    if results and os.path.exists(results):
        for line in open(results):
            stored = json.loads(line)
            if stored.pop("_key") == key:
                log(f"  {kind} {json.dumps(job)} (stored)")
                return stored
    result = _run(kind, job, log)
    if results:
        with open(results, "a") as f:
            f.write(json.dumps({**result, "_key": key}) + "\n")
    return result


def _run(kind: str, job: dict, log) -> dict:
    log(f"  {kind} {json.dumps(job)}")
    out = subprocess.run([sys.executable, "-m", "benchmarks", "deep-clustering-3d", f"--{kind}", json.dumps(job)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} {job} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _jobs(quick: bool, params: dict) -> list[dict]:
    volumes = [0] if quick else [0, 1]
    jobs = []
    for i in volumes:
        jobs.append({"data": "brats", "index": i, "method": METHOD, "params": params})
        jobs.append({"data": "brats", "index": i, "method": "kmeans", "params": {"k": 4}})
        jobs.append({"data": "brats", "index": i, "method": "multi-otsu", "params": {"k": 3}})
    # nuclei against background: two clusters inside the object (nucleus cores vs their dim rims and
    # touching parts), stride 2 on this small volume; the baselines split all voxels into two classes
    jobs.append({"data": "nuclei", "method": METHOD, "params": {**params, "k": 2, "stride": 2}})
    jobs.append({"data": "nuclei", "method": "kmeans", "params": {"k": 2}})
    jobs.append({"data": "nuclei", "method": "multi-otsu", "params": {"k": 2}})
    return jobs


def _default(name: str):
    from napari_selfseg.api import resolve_params

    return getattr(resolve_params(METHOD, None), name)


def _table(results: list[dict], paper: dict | None) -> str:
    lines = ["| data | volume | method | score | wall s | CPU s | peak RSS GB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        score = (f"DSC {r['dsc']:.3f}, NMI {r['nmi']:.3f}" if r["data"] == "brats" else f"ARI {r['ari']:.3f}")
        if "dsc_blocks" in r:
            score += f" (block projection: DSC {r['dsc_blocks']:.3f}, NMI {r['nmi_blocks']:.3f})"
        elif "ari_blocks" in r:
            score += f" (block projection: ARI {r['ari_blocks']:.3f})"
        what = "K" if r["method"] == "kmeans" else "classes"
        projection = r["params"].get("projection", _default("projection"))
        setting = (f" ({projection} projection)" if r["method"] == METHOD else f" ({what} {r['params']['k']})")
        lines.append(f"| {r['data']} | {r['name']} {tuple(r['shape'])} | {r['method']}{setting} | {score} | "
                     f"{r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['rss_gb']:.2f} |")
    means = []
    for method in (METHOD, "kmeans", "multi-otsu"):
        rows = [r for r in results if r["data"] == "brats" and r["method"] == method]
        if rows:
            means.append(f"{method}: DSC {np.mean([r['dsc'] for r in rows]):.3f}, "
                         f"NMI {np.mean([r['nmi'] for r in rows]):.3f}")
        if rows and "dsc_blocks" in rows[0]:
            means.append(f"{method} with the paper's block projection: DSC "
                         f"{np.mean([r['dsc_blocks'] for r in rows]):.3f}, "
                         f"NMI {np.mean([r['nmi_blocks'] for r in rows]):.3f}")
    text = "\n".join(lines) + "\n\nBRATS means over the volumes: " + "; ".join(means) + "."
    if paper:
        text += (f"\n\nPaper setting (27^3 patches, 50 kernels 5^3, FC 1350/160, stride 9), phase 1 on the first "
                 f"volume with {paper['n_patches']} patches and 3 minibatches per period: "
                 f"{paper['seconds']:.0f} CPU s, peak RSS {paper['rss_gb']:.2f} GB. Measured costs: "
                 f"{paper['per_batch']:.2f} CPU s per minibatch of 100, {1000 * paper['per_patch']:.0f} CPU ms "
                 f"per patch embedding, so about "
                 f"{paper['blocks_seconds']:.0f} CPU s for phase 2 ({paper['blocks']} blocks). The full "
                 f"schedule ({paper['periods']} merge periods, {paper['minibatches']} minibatches, 10,000 patches "
                 f"re-embedded each period) extrapolates to about {paper['estimate_hours']:.1f} CPU hours (one "
                 f"thread of this CPU); its quality was not measured here (a GPU job).")
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks deep-clustering-3d", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the first BRATS volume only, no paper-cost run")
    ap.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    ap.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                    help="override a parameter of deep-clustering-3d")
    ap.add_argument("--paper-patches", type=int, default=200, help="patches of the paper-setting cost run")
    ap.add_argument("--results", default=None, metavar="FILE",
                    help="JSON-lines file of finished jobs: reused, and new ones added (resume a long run)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--paper", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(_one(json.loads(args.one))))
        return 0
    if args.paper:
        print(json.dumps(_paper_cost(**json.loads(args.paper))))
        return 0
    from napari_selfseg.params import parse_assignments

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if not datasets.available("brats_mri_3d"):
        log(f"skip: brats_mri_3d not found under {datasets.DATA_ROOT}")
        return 0
    params = parse_assignments(args.assignments)
    results = [_spawn("one", job, log, args.results) for job in _jobs(args.quick, params)
               if job["data"] == "brats" or datasets.available("nuclei")]
    paper = None if args.quick else _spawn("paper", {"index": 0, "n_patches": args.paper_patches}, log,
                                           args.results)
    command = "python -m benchmarks deep-clustering-3d " + " ".join(argv if argv is not None else sys.argv[1:])
    load = os.getloadavg()[0]
    busy = ", so wall times are inflated" if load > (os.cpu_count() or 1) else ""
    report = (f"Measured {machine()}; load average {load:.1f} on the shared machine during the run{busy}: CPU s "
              f"is the method's own CPU time (one torch thread).\n"
              f"Command: `{command.strip()}`\n\n{_table(results, paper)}")
    print(report)
    if args.write:
        write_section(SECTION, report)
    return 0
