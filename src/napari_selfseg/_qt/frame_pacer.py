"""How often a training panel asks for frames: drawing them may take only a small share of the time.

Each drawn frame costs the GUI thread (and a software OpenGL renderer's threads) time the training loop
shares the CPU with: ~30 ms per frame under Xvfb on a 2-core machine, a few ms on a desktop GPU. The
pacer turns the measured cost into a frame rate, so a fast display streams more frames and a slow one
keeps the training near its headless speed.
"""
from __future__ import annotations


class FramePacer:
    """Frames per second such that drawing them takes about ``budget`` of the wall time.

    ``drawn(seconds)`` takes one frame's drawing cost (from its arrival on the GUI thread to the end of the
    window's repaint, in seconds), keeps an exponential moving average (weight ``smoothing`` for the
    newest frame) and returns ``budget / average``, clipped to ``[low, high]`` frames per second.
    """

    def __init__(self, start: float, budget: float = 0.08, low: float = 2.0, high: float = 8.0,
                 smoothing: float = 0.3):
        self.budget, self.high, self.smoothing = budget, high, smoothing
        self.low = min(low, high)
        self.fps = min(max(start, self.low), high)
        self.cost: float | None = None  # moving average of the drawing cost, seconds per frame

    def drawn(self, seconds: float) -> float:
        """Record one frame's drawing cost; return the frame rate to ask for from now on."""
        seconds = max(float(seconds), 1e-4)
        self.cost = seconds if self.cost is None else self.smoothing * seconds + (1 - self.smoothing) * self.cost
        self.fps = min(max(self.budget / self.cost, self.low), self.high)
        return self.fps
