#!/usr/bin/env bash
# Set up everything napari-selfseg needs on a fresh Debian machine: system libraries for Qt under Xvfb,
# a virtual environment in .venv, CPU PyTorch 2.13.0 first (so no multi-GB CUDA build is pulled), then
# the package itself with its test and GUI extras. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# Qt's xcb platform plugin under Xvfb needs these; install only what is missing.
apt_packages=(xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-cursor0 libxcb-image0
  libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xkb1 libxkbcommon-x11-0
  libgl1 libegl1 libfontconfig1 libdbus-1-3)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})) && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends --no-upgrade "${missing[@]}"
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
# pip's config on these machines names local indexes that may be absent: silence those warnings only
pipq() { python -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
pipq --upgrade pip
# torch first and pinned: the CPU wheel on disk. Users with a GPU install a CUDA build instead.
python -c "import torch" 2>/dev/null || pipq "torch==2.13.0"
pipq -e ".[all,testing]"
