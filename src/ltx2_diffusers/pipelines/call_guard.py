"""One call at a time per transformer: the stage-2 distilled LoRA is applied to the shared transformer for the
duration of stage 2, and `save_pretrained` takes PEFT layers out of it for the save, so two such operations sharing
it (two threads on one pipeline, or pipelines built from the same components) would see each other's state. A
second one is refused at once with a `RuntimeError` (no waiting)."""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref


_LOCKS: "weakref.WeakKeyDictionary[object, threading.Lock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def exclusive(pipe, what: str):
    """Hold `pipe.transformer` for `what` ("a call", "save_pretrained"); `RuntimeError` if it is already held."""
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(pipe.transformer, threading.Lock())
    if not lock.acquire(blocking=False):
        raise RuntimeError(
            f"{type(pipe).__name__} is already running a call or save_pretrained on this transformer (another "
            f"thread, or a callback calling the pipeline), so {what} cannot start now: calls cannot overlap. Use "
            "one pipeline (with its own transformer) per thread, or wait for the running call to finish."
        )
    try:
        yield
    finally:
        lock.release()


def exclusive_call(method):
    """Decorate a pipeline `__call__`: refuse to start while another call runs on the same transformer."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with exclusive(self, "a call"):
            return method(self, *args, **kwargs)

    return wrapper
