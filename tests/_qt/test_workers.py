"""Panel workers always end: an error reaches the panel as a message and the worker still finishes."""
import pytest

from napari_selfseg._qt.workers import WorkerError, panel_worker
from napari_selfseg.imageprep import InputError

pytestmark = pytest.mark.gui


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory"), InputError("the image is gray")])
def test_a_failing_generator_reports_and_finishes(qtbot, error):
    def frames():
        yield 1
        raise error

    seen = []
    worker = panel_worker(frames, on_error=seen.append)
    with qtbot.waitSignal(worker.finished, timeout=5000):  # superqt swallowed RuntimeErrors: no finished
        worker.start()
    assert len(seen) == 1 and str(error) in str(seen[0])
    assert isinstance(seen[0], InputError if isinstance(error, InputError) else WorkerError)
