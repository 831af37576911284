#!/usr/bin/env bash
# Set up (if needed) and run the main job: a headless segmentation that writes a label file, then napari
# with the sample image and the Feature-clustering panel docked, training. Without a screen, napari runs
# under Xvfb and the window is saved to out/demo.png after DEMO_SECONDS (default 15) seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p out
python -c "import imageio.v3 as iio, skimage.data as d; iio.imwrite('out/coffee.png', d.coffee())"
napari-selfseg segment out/coffee.png --method feature-clustering -o out/labels
if [ -n "${DISPLAY:-}" ]; then
  python -m napari_selfseg._qt.demo --train
else
  xvfb-run -a -s "-screen 0 1600x1000x24" python -m napari_selfseg._qt.demo \
    --screenshot out/demo.png --seconds "${DEMO_SECONDS:-15}"
fi
