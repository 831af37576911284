"""Child process of the speed benchmark: train through the real panel in napari, print JSON.

    python -m benchmarks.streamed METHOD ITERATIONS DEVICE     (needs a display, e.g. under xvfb-run)
"""
from __future__ import annotations

import json
import sys
import time


def main(method: str, iterations: int, device: str) -> dict:
    import napari
    from qtpy.QtCore import QEventLoop

    from napari_selfseg._qt.method_panel import MethodPanel
    from napari_selfseg.engine import warm_up
    from napari_selfseg.methods import get_method

    from .speed import speed_image, steady_rate

    image, _ = speed_image()
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    viewer.add_image(image, rgb=True, name="speed")
    panel = MethodPanel(viewer, get_method(method))
    viewer.window.add_dock_widget(panel)
    panel.device_box.value = device if device in panel.device_box.choices else "auto"
    panel.form.set_values({"max_iterations": iterations, "min_labels": 1})
    frames, arrivals = [], []
    loop = QEventLoop()  # a real event loop, idle in C++ like napari's own, not a Python polling loop
    warm_up()  # what the panel started when it opened, finished as it would be by the time a user presses Train
    pressed = time.perf_counter()
    panel.start()
    panel.worker.yielded.connect(lambda frame: (frames.append(frame), arrivals.append(time.perf_counter())))
    panel.worker.finished.connect(loop.quit)
    loop.exec()
    viewer.close()
    return {"rate": steady_rate(frames), "frames": len(frames) - 1, "first": arrivals[0] - pressed}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), sys.argv[3])))
