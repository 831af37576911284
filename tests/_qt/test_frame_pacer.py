from napari_selfseg._qt.frame_pacer import FramePacer


def test_slow_drawing_lowers_the_frame_rate_to_the_budget():
    pacer = FramePacer(start=4.0, budget=0.08, low=1.0, high=8.0)
    for _ in range(30):
        fps = pacer.drawn(0.04)  # 40 ms per frame: 2 frames/s keep drawing at 8 % of the time
    assert abs(fps - 2.0) < 1e-6


def test_fast_drawing_is_capped_and_slow_drawing_floored():
    assert FramePacer(start=4.0, high=8.0).drawn(0.001) == 8.0
    assert FramePacer(start=4.0, low=2.0).drawn(1.0) == 2.0


def test_one_slow_frame_does_not_stall_the_stream():
    pacer = FramePacer(start=4.0, budget=0.08, low=0.5, high=8.0, smoothing=0.3)
    for _ in range(20):
        pacer.drawn(0.01)
    assert pacer.drawn(0.5) > 0.5  # the moving average keeps most of the history
