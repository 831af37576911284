"""Report helpers every benchmark shares: the machine line and writing a section of BENCHMARKS.md."""
from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


# Libraries whose versions can move a benchmark's figures (SLIC, watershed, k-means, resizing): a table
# names them so that a change between two runs of the same code can be traced to the environment.
NUMERIC_LIBRARIES = ("numpy", "scipy", "scikit-image", "scikit-learn")


def machine() -> str:
    """The date, hardware and software a table was measured with (one line)."""
    import torch

    cpu = platform.processor() or platform.machine()
    cuda = "yes: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no"
    return (f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}, "
            f"torch {torch.__version__}, CUDA {cuda}; {library_versions()}")


def library_versions() -> str:
    """``numpy 2.4.6, scipy 1.17.1, ...`` for :data:`NUMERIC_LIBRARIES` (``?`` where one is not installed)."""
    versions = []
    for name in NUMERIC_LIBRARIES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} ?")
    return ", ".join(versions)


def write_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the block between this section's markers in BENCHMARKS.md."""
    from napari_selfseg.io import atomic_path

    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n{block}\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
