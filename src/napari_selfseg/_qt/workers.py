"""Thread workers for the panels: napari's ``create_worker`` with errors reported the panel's way."""
from __future__ import annotations

import inspect
from functools import wraps
from typing import Callable

from napari.qt.threading import create_worker
from napari.utils.notifications import notification_manager

from ..imageprep import InputError


def panel_worker(func: Callable, on_error: Callable[[Exception], None], progress: dict | None = None):
    """An unstarted napari worker running ``func`` (a function or generator function).

    Bad input (:class:`InputError`, e.g. a gray image for an RGB model) only reaches ``on_error``, which
    shows a plain message. Anything else is a bug: ``on_error`` shows the message and an error
    notification keeps the traceback for a report.
    """

    def errored(exc: Exception) -> None:
        on_error(exc)
        if not isinstance(exc, InputError):
            notification_manager.receive_error(type(exc), exc, exc.__traceback__)

    # an "errored" connection given here stops superqt from re-raising the error in the event loop
    worker = create_worker(_reraise_runtime_errors(func), _start_thread=False, _progress=progress,
                           _connect={"errored": errored})
    try:  # napari versions that relay worker errors themselves: we do it (once, our way)
        worker.errored.disconnect(worker._relay_error)
    except (AttributeError, TypeError):
        pass
    return worker


class WorkerError(Exception):
    """A ``RuntimeError`` (torch's errors, CUDA out of memory) raised in a worker, under another type."""


def _reraise_runtime_errors(func: Callable) -> Callable:
    """``func`` with its ``RuntimeError``s re-raised as :class:`WorkerError`: superqt's generator workers
    swallow a ``RuntimeError`` without emitting ``errored`` or ``finished``, which left a panel running."""
    if inspect.isgeneratorfunction(func):
        @wraps(func)
        def generator(*args, **kwargs):
            try:
                return (yield from func(*args, **kwargs))
            except RuntimeError as err:
                raise WorkerError(str(err)) from err
        return generator

    @wraps(func)
    def function(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except RuntimeError as err:
            raise WorkerError(str(err)) from err
    return function
