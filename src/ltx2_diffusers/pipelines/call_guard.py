"""One call at a time per transformer: the stage-2 distilled LoRA is applied to the shared transformer for the
duration of stage 2, so two calls sharing it (two threads on one pipeline, or pipelines built from the same
components) would see each other's stage. A second call is refused at once with a `RuntimeError` (no waiting)."""

from __future__ import annotations

import functools
import threading
import weakref


_LOCKS: "weakref.WeakKeyDictionary[object, threading.Lock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def exclusive_call(method):
    """Decorate a pipeline `__call__`: refuse to start while another call runs on the same transformer."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with _LOCKS_GUARD:
            lock = _LOCKS.setdefault(self.transformer, threading.Lock())
        if not lock.acquire(blocking=False):
            raise RuntimeError(
                f"{type(self).__name__} is already running a call on this transformer (another thread, or a "
                "callback calling the pipeline): calls cannot overlap. Use one pipeline (with its own "
                "transformer) per thread, or wait for the running call to finish."
            )
        try:
            return method(self, *args, **kwargs)
        finally:
            lock.release()

    return wrapper
