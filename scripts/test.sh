#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite headless: Qt tests run under Xvfb (pytest-xvfb).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# One torch thread: on 2 cores, 2 intra-op threads in a Qt worker under load ran ~10x slower than 1.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
python -m pytest tests -q -p no:cacheprovider "$@"
