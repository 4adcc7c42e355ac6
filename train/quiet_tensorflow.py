"""Import TensorFlow without its start-up notices: the first thing every command that trains or
converts does. It lives in ``train`` (the first stage that needs TensorFlow) so that the runtime
never imports it; the notice filter itself is ``runtime.native_logs``.

Commands that only convert and evaluate (export) import it without oneDNN. TensorFlow's oneDNN
kernels keep buffers sized for each batch shape they have run, for the life of the process, and
save nothing on inference here: ResNet50V2 at 32x32, 2,560 images in batches of 256, ran in 4.8 s
with oneDNN and kept 730 MB after it (malloc_trim'd), 4.6 s and nothing kept without it. Training
needs it: 768 images of ResNet50V2 training took 4.4 s with oneDNN, 32.8 s without.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from runtime.native_logs import native_notices_filtered

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"  # read once, when TensorFlow loads


def import_tensorflow_quietly(onednn: bool = True) -> None:
    """Import TensorFlow (if Keras will use it and it is installed) without its start-up notices;
    ``onednn=False`` for inference-only commands (module docstring), unless the user set it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not onednn:
        os.environ.setdefault(ONEDNN_ENV, "0")
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow" or "tensorflow" in sys.modules:
        return
    if importlib.util.find_spec("tensorflow") is None:
        return
    with native_notices_filtered():
        import tensorflow

        # Probe the devices now, inside the filter: without oneDNN TensorFlow leaves its CUDA probe
        # ("failed call to cuInit" on a machine without a GPU) to the first operation, whose notice
        # would then reach the terminal beside a command's one-line error.
        tensorflow.config.list_physical_devices()
