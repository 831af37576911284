"""Large and lazy data: apply a trained feature-clustering model to a 4096x4096 image and to a 512^3
volume read lazily from disk, and the time per megapixel at 0.25 / 1 / 4 MP, each case in a fresh
process so its peak resident memory (RSS) is its own.

    python -m benchmarks large [--write]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .report import machine, write_section

CHILD = """
import json, resource, sys, time
import numpy as np
from napari_selfseg import load_model
model = load_model(sys.argv[1], "cpu")
kind, arg = sys.argv[2], sys.argv[3]
if kind == "volume":
    data = np.load(arg, mmap_mode="r")  # lazy: planes are read as they are labelled
else:
    from skimage import data as skdata
    side = int(arg)
    base = skdata.astronaut()
    data = np.repeat(np.repeat(base, -(-side // 512), 0), -(-side // 512), 1)[:side, :side]
started = time.perf_counter()
labels = model.predict(data, rgb=kind == "image")
seconds = time.perf_counter() - started
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB -> GiB
print(json.dumps({"seconds": seconds, "rss_gib": rss, "shape": list(labels.shape),
                  "labels": int(len(np.unique(labels[::7, ::7] if labels.ndim == 2 else labels[::9, ::9, ::9])))}))
"""


def _train(folder: Path, gray: bool) -> Path:
    from skimage import data as skdata

    from napari_selfseg import save_model, train

    image = skdata.astronaut()
    image = image.mean(-1).astype(np.uint8) if gray else image
    run = train(image, "feature-clustering", threads=1)
    return save_model(run, folder / ("gray" if gray else "rgb"))


def _volume(folder: Path, side: int = 512) -> Path:
    """A ``side``^3 uint8 volume of bright blobs on a dark background, saved for memory-mapping."""
    rng = np.random.default_rng(0)
    path = folder / "volume.npy"
    volume = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(side,) * 3)
    yy, xx = np.mgrid[:side, :side]
    centres = rng.integers(0, side, (40, 3))
    for z in range(side):
        plane = np.full((side, side), 40, np.uint8)
        for cz, cy, cx in centres:
            r2 = 60 ** 2 - (z - cz) ** 2
            if r2 > 0:
                plane[(yy - cy) ** 2 + (xx - cx) ** 2 < r2] = 200
        volume[z] = plane + rng.integers(0, 20, (side, side), dtype=np.uint8)
    volume.flush()
    return path


def _child(model: Path, kind: str, arg: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(model), kind, arg], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(log=print) -> str:
    rows = ["| case | shape | seconds | s / MP | peak RSS (GiB) |", "| --- | --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rgb, gray = _train(folder, gray=False), _train(folder, gray=True)
        cases = [("image", str(s)) for s in (512, 1024, 2048, 4096)] + [("volume", str(_volume(folder)))]
        for kind, arg in cases:
            r = _child(gray if kind == "volume" else rgb, kind, arg)
            mp = float(np.prod(r["shape"])) / 1e6
            name = f"{kind} {'x'.join(map(str, r['shape']))}" + (" (memory-mapped, lazy)" if kind == "volume" else " RGB")
            rows.append(f"| {name} | {tuple(r['shape'])} | {r['seconds']:.1f} | {r['seconds'] / mp:.2f} | "
                        f"{r['rss_gib']:.2f} |")
            log(rows[-1])
    return ("Feature clustering (interactive default, trained on a 512x512 image) applied with one torch thread; "
            "images above 1024x1024 are labelled in tiles with whole-image batch statistics.\n\n" + "\n".join(rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks large", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    body = run()
    report = f"Measured {machine()} ({time.perf_counter() - started:.0f} s in all).\n" \
             f"Command: `python -m benchmarks large`\n\n{body}"
    print(report)
    if args.write:
        write_section("large data", report)
    return 0
