"""Third-party progress bars off while a model loads, unless mitsuke logs at INFO (``-v``).

transformers draws a ``Loading weights: 100%|…|`` bar (and huggingface_hub
download bars) on stderr for every model load, even when stderr is a pipe or
a log file. mitsuke reports its own progress; the libraries' bars come back
with ``mitsuke -v`` or when the ``mitsuke`` logger is at INFO or below.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["quiet_model_loading"]


@contextmanager
def quiet_model_loading() -> Iterator[None]:
    """Within the block, transformers' and huggingface_hub's progress bars are off (restored after)."""
    if logging.getLogger("mitsuke").isEnabledFor(logging.INFO):
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as hf_logging

    tf_was_on = hf_logging.is_progress_bar_enabled()
    hub_was_off = are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # both libraries' bars
    try:
        yield
    finally:
        if tf_was_on:
            hf_logging.enable_progress_bar()
        if not hub_was_off:
            enable_progress_bars()
