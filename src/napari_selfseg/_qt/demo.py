"""Open napari with a sample image and a method's panel docked (``python -m napari_selfseg._qt.demo``).

With ``--screenshot PATH`` it trains for ``--seconds``, saves the window and exits (for machines without
a screen, under Xvfb); otherwise it leaves napari open for the user.
"""
from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sample", default="coffee", help="sample key of napari-selfseg (coffee, immunohistochemistry)")
    ap.add_argument("--panel", default="Feature clustering", help="panel name in Plugins > napari-selfseg")
    ap.add_argument("--train", action="store_true", help="press Train once the panel is docked")
    ap.add_argument("--screenshot", default=None, help="save the window here after --seconds, then exit")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer()
    viewer.window._qt_window.resize(1500, 950)
    viewer.open_sample("napari-selfseg", args.sample)
    _, panel = viewer.window.add_plugin_dock_widget("napari-selfseg", args.panel)
    if args.train or args.screenshot:
        panel.train_button.click()
    if not args.screenshot:
        napari.run()
        return 0
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)
    import imageio.v3 as iio

    iio.imwrite(args.screenshot, viewer.screenshot(canvas_only=False, flash=False))
    print(f"saved {args.screenshot}: {panel.status.text()}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
