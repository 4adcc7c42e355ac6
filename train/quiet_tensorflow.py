"""Import TensorFlow without its start-up notices: the first thing every command that trains or
converts does. It lives in ``train`` (the first stage that needs TensorFlow) so that the runtime
never imports it; the notice filter itself is ``runtime.native_logs``.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from runtime.native_logs import native_notices_filtered


def import_tensorflow_quietly() -> None:
    """Import TensorFlow (if Keras will use it and it is installed) without its start-up notices."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow" or "tensorflow" in sys.modules:
        return
    if importlib.util.find_spec("tensorflow") is None:
        return
    with native_notices_filtered():
        import tensorflow  # noqa: F401
