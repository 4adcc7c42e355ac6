"""The contenders of a benchmark: which model files compete, and how each is loaded and called.

The Keras model competes two ways (``predict`` and a plain call); every exported artifact competes
through each runner its format declares (``export.formats``). A contender turns NxHxWxC uint8
pixels into probabilities. ``prepare`` is what happens once per batch outside the timed call
(nothing, for the runtime: its own preprocessing is part of what users pay), ``call`` is what is
timed. The bare ONNX Runtime session gets its input prepared beforehand, so the difference to
the runtime is the runtime's own overhead.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.formats import FORMATS
from export.formats.base import BenchRunner, Loaded
from runtime.artifacts import MANIFEST, read_manifest, verify_artifact
from runtime.errors import ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    kind: str  # keras_predict, keras_call, or one of a format's runners (export.formats.base.BenchRunner)
    runtime: str  # the library that runs it, for memory figures and grouping
    precision: str
    filename: str
    format: str | None = None  # the exported format, None for the Keras model itself


def _exported() -> list[Contender]:
    """Every runner of every format on each of its post-training artifacts, from the registry."""
    return [
        Contender(
            runner.key.format(precision=spec.precision),
            runner.label.format(precision=spec.precision),
            runner.kind,
            runner.runtime,
            spec.precision,
            spec.filename,
            spec.format,
        )
        for fmt in FORMATS.values()
        for runner in fmt.bench_runners
        for spec in fmt.artifacts
        if spec.quantization != "qat"
    ]


CONTENDERS = (
    Contender("keras_predict", "Keras predict", "keras_predict", "keras", "fp32", "model.keras"),
    Contender("keras_call", "Keras call", "keras_call", "keras", "fp32", "model.keras"),
    *_exported(),
)
BY_KEY = {c.key: c for c in CONTENDERS}
RUNTIME_KEY = "ort_int8"  # the runtime's own shipped artifact: cold start and folder throughput run it


def discover(folder: Path) -> tuple[list[Contender], list[str]]:
    """The contenders whose files are in ``folder``, and a note for each one that is skipped.

    Exported artifacts count only if the manifest lists them as having passed the parity gate:
    a benchmark of a file that would not ship is no answer to "how fast is what I ship". Each is
    checked against the manifest's sha256 first, for every runner (the bare ONNX Runtime and LiteRT
    ones too): a changed file raises ModelError, as the runtime refuses it.
    """
    published: set[str] = set()
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            published = {e["path"] for e in read_manifest(manifest)["artifacts"] if e.get("passed")}
        except ModelError as exc:
            log.warning("%s", exc)
    found, skipped, verified = [], [], set()
    for contender in CONTENDERS:
        path = folder / contender.filename
        if not path.is_file():
            skipped.append(f"{contender.label}: {path} not found")
        elif contender.runtime != "keras" and contender.filename not in published:
            skipped.append(f"{contender.label}: {path.name} is not a published artifact in {manifest}")
        else:
            if contender.runtime != "keras" and path not in verified:
                verify_artifact(path)
                verified.add(path)
            found.append(contender)
    return found, skipped


def load(contender: Contender, path: Path, threads: int) -> Loaded:
    """The contender's file loaded, ready for its untimed ``prepare`` and timed ``call``."""
    if contender.format is None:
        return _keras(contender, path)
    return FORMATS[contender.format].load_for_bench(_runner(contender), path, threads)


def _runner(contender: Contender) -> BenchRunner:
    return next(r for r in FORMATS[contender.format].bench_runners if r.kind == contender.kind)


def import_runtime(contender: Contender, threads: int) -> None:
    """Import the contender's library first, so that load times exclude import times."""
    if contender.runtime == "keras":
        import tensorflow as tf

        try:  # only possible before TensorFlow's context starts, hence once per process
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass
        import keras  # noqa: F401
    else:
        importlib.import_module(_runner(contender).module)


def _keras(contender: Contender, path: Path) -> Loaded:
    """The float model, loaded within the export's limits on a .keras archive (a 0.5 MB bomb
    inflated to 2.4 GB when Keras opened it unchecked)."""
    import keras

    from export.source import check_keras_archive

    check_keras_archive(path)
    model = keras.models.load_model(path, compile=False)
    height, width, channels = model.input_shape[1:]

    def prepare(pixels: np.ndarray) -> np.ndarray:
        return pixels.astype(np.float32) / 255.0

    if contender.kind == "keras_predict":
        return Loaded((height, width, channels), prepare, lambda x: model.predict(x, batch_size=len(x), verbose=0))
    return Loaded((height, width, channels), prepare, lambda x: model(x, training=False).numpy())
