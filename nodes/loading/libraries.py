"""The model libraries (diffusers, transformers, accelerate), imported once, ahead of need where possible.

Importing them costs seconds (``diffusers``' UNet module pulls in every diffusers model package, peft, scipy and
``torch._dynamo``) while reading a small checkpoint takes a fraction of one. Every loader calls
:func:`import_model_libraries` before it builds modules; ``chisel serve`` also calls it on a background thread as soon
as it listens (:func:`import_in_background`), so the first prompt finds the libraries imported. A loader that starts
while that import is under way waits on the same lock instead of importing the same modules from a second thread.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

_lock = threading.Lock()
_seconds: float | None = None  # how long the import took, once it succeeded


def imported() -> bool:
    return _seconds is not None


def import_model_libraries() -> float:
    """Import what the loaders and the first sampling steps use (returns the seconds the import took, or 0.0 when it
    had been done); a second caller waits for the first. An import that fails raises, and the next call tries
    again."""
    global _seconds
    if _seconds is not None:
        return 0.0
    with _lock:
        if _seconds is not None:
            return 0.0
        started = time.perf_counter()
        # What nodes.loading and nodes.text import inside their functions, named the same way.
        from accelerate import init_empty_weights  # noqa: F401
        from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401
        from diffusers.loaders import single_file_utils  # noqa: F401
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: F401

        _seconds = time.perf_counter() - started
        return _seconds


def import_in_background(wanted: Callable[[], bool] = lambda: True) -> threading.Thread:
    """Start :func:`import_model_libraries` on a daemon thread, if ``wanted()`` (asked on that thread) says so; a
    failure is logged (the loader that needs the libraries then raises it itself)."""

    def run() -> None:
        try:
            if not wanted():
                log.debug("no model file to load: the model libraries are imported when first needed")
                return
            seconds = import_model_libraries()
        except Exception as exc:  # noqa: BLE001 - reported again, with its traceback, by the first loader
            log.warning("the model libraries could not be imported ahead of use: %s: %s", type(exc).__name__, exc)
        else:
            log.info("model libraries imported in %.1f s", seconds)

    thread = threading.Thread(target=run, name="chisel-import-models", daemon=True)
    thread.start()
    return thread
