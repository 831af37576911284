"""Report helpers every benchmark shares: the machine line and writing a section of BENCHMARKS.md."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return (f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}, "
            f"torch {torch.__version__}, CUDA {'yes: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no'}")


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
