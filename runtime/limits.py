"""Every bound the runtime puts on what it is given, in one place (docs/security.md lists them).

Models, manifests, metadata and images come from files anyone can edit or send; each limit below
keeps one of them from costing unbounded time or memory. They are far above what real models and
images need; a user with a larger legitimate input raises the value here (or, for images and
batches, with the commands' flags where they offer one).
"""

from __future__ import annotations

import os


def from_environment(name: str, default: float) -> float:
    """A limit raised (or lowered) by an environment variable, else ``default``; a ValueError for a
    value that is not a positive number."""
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ValueError(f"${name}: expected a positive number, got {text[:50]!r}")
    return value


# Images: a file's bytes and its pixels, checked before any pixel is decoded.
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 40_000_000

# A model's declared input: at most 4096 px a side, so 16.8 Mpixels, inside the image limit, so
# that no metadata can ask for tensors an image could not fill.
MAX_SIDE = 4096
MAX_INPUT_PIXELS = MAX_SIDE * MAX_SIDE
# Largest magnitude a preprocessed value may reach: real models see values within a few hundred; a
# std of 1e-45 or a scale of 1e308 would turn every image into infinities (then NaN scores).
MAX_INPUT_MAGNITUDE = 1e6

# Labels: ImageNet-21k has 21,843 classes. 100,000 labels of up to 1,000 characters are checked in
# a fraction of a second; the check itself is linear in their number.
MAX_LABELS = 100_000
MAX_LABEL_CHARS = 1_000

# manifest.json: a real one holds a few kilobytes per artifact; the reader refuses a larger file by
# its size before reading it (a 12 KB sparse file of 1 GiB cost 2.1 GB of memory when read whole).
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

# One ONNX Runtime call: how long it may run before it is stopped (a graph with an endless Loop never
# returned; every Classifier), and how much memory the sessions of a command that runs a given model
# (classify, the demo) may allocate while running (one with a 3 GiB internal tensor allocated it). Our
# models run a batch in milliseconds with a few MB; the environment variables raise both.
MAX_RUN_SECONDS = 300.0
MAX_RUN_SECONDS_ENV = "EDGEPACK_MAX_RUN_SECONDS"
MAX_INFERENCE_BYTES = 2 * 1024**3
MAX_INFERENCE_BYTES_ENV = "EDGEPACK_MAX_INFERENCE_BYTES"

# Batches: images per call of the command-line tool, and input bytes per ONNX Runtime call (a model
# declaring a large input runs in smaller batches, down to one image).
MAX_BATCH_SIZE = 4096
MAX_BATCH_BYTES = 256 * 1024 * 1024
