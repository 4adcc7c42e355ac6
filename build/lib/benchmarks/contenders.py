"""The contenders of a benchmark: which model files compete, and how each is loaded and called.

A contender turns NxHxWxC uint8 pixels into probabilities. ``prepare`` is what happens once per
batch outside the timed call (nothing, for the runtime: its own preprocessing is part of what
users pay), ``call`` is what is timed. The bare ONNX Runtime session gets its input prepared
beforehand, so the difference to the runtime is the runtime's own overhead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.artifacts import MANIFEST


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    kind: str  # keras_predict, keras_call, litert, ort_runtime, ort_bare
    runtime: str  # the library that runs it, for memory figures and grouping
    precision: str
    filename: str


CONTENDERS = (
    Contender("keras_predict", "Keras predict", "keras_predict", "keras", "fp32", "model.keras"),
    Contender("keras_call", "Keras call", "keras_call", "keras", "fp32", "model.keras"),
    Contender("litert_fp32", "LiteRT fp32", "litert", "litert", "fp32", "model_fp32.tflite"),
    Contender("litert_fp16", "LiteRT fp16", "litert", "litert", "fp16", "model_fp16.tflite"),
    Contender("litert_dynamic", "LiteRT dynamic", "litert", "litert", "dynamic", "model_dynamic.tflite"),
    Contender("litert_int8", "LiteRT int8", "litert", "litert", "int8", "model_int8.tflite"),
    Contender("ort_fp32", "ORT fp32 (runtime)", "ort_runtime", "onnxruntime", "fp32", "model_fp32.onnx"),
    Contender("ort_int8", "ORT int8 (runtime)", "ort_runtime", "onnxruntime", "int8", "model_int8.onnx"),
    Contender("ort_bare_fp32", "ORT fp32 (bare session)", "ort_bare", "onnxruntime", "fp32", "model_fp32.onnx"),
    Contender("ort_bare_int8", "ORT int8 (bare session)", "ort_bare", "onnxruntime", "int8", "model_int8.onnx"),
)
BY_KEY = {c.key: c for c in CONTENDERS}


def discover(folder: Path) -> tuple[list[Contender], list[str]]:
    """The contenders whose files are in ``folder``, and a note for each one that is skipped.

    Exported artifacts count only if the manifest lists them as having passed the parity gate:
    a benchmark of a file that would not ship is no answer to "how fast is what I ship".
    """
    published: set[str] = set()
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            published = {e["path"] for e in json.loads(manifest.read_text())["artifacts"] if e.get("passed")}
        except (ValueError, KeyError, TypeError):
            published = set()
    found, skipped = [], []
    for contender in CONTENDERS:
        path = folder / contender.filename
        if not path.is_file():
            skipped.append(f"{contender.label}: {path} not found")
        elif contender.runtime != "keras" and contender.filename not in published:
            skipped.append(f"{contender.label}: {path.name} is not a published artifact in {manifest}")
        else:
            found.append(contender)
    return found, skipped


@dataclass
class Runner:
    """A loaded contender: the input shape it takes, and its untimed and timed halves."""

    shape: tuple[int, int, int]  # height, width, channels
    prepare: Callable[[np.ndarray], object]
    call: Callable[[object], object]


def load(contender: Contender, path: Path, threads: int) -> Runner:
    loaders = {
        "keras_predict": _keras,
        "keras_call": _keras,
        "litert": _litert,
        "ort_runtime": _ort_runtime,
        "ort_bare": _ort_bare,
    }
    return loaders[contender.kind](contender, path, threads)


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
    elif contender.runtime == "litert":
        import ai_edge_litert.interpreter  # noqa: F401
    else:
        import onnxruntime  # noqa: F401


def _keras(contender: Contender, path: Path, threads: int) -> Runner:
    import keras

    model = keras.models.load_model(path, compile=False)
    height, width, channels = model.input_shape[1:]

    def prepare(pixels: np.ndarray) -> np.ndarray:
        return pixels.astype(np.float32) / 255.0

    if contender.kind == "keras_predict":
        return Runner((height, width, channels), prepare, lambda x: model.predict(x, batch_size=len(x), verbose=0))
    return Runner((height, width, channels), prepare, lambda x: model(x, training=False).numpy())


def _litert(contender: Contender, path: Path, threads: int) -> Runner:
    from export.litert import LiteRTModel
    from runtime.metadata import ModelInfo

    info = ModelInfo.from_json(path.with_name(path.name + ".json").read_text(), str(path))
    model = LiteRTModel(path, info, threads)
    return Runner((info.height, info.width, info.channels), lambda pixels: pixels, lambda x: model.run(x, len(x)))


def _ort_runtime(contender: Contender, path: Path, threads: int) -> Runner:
    from runtime.classifier import Classifier

    classifier = Classifier(path, threads=threads, batch_size=1 << 16)
    info = classifier.info
    return Runner((info.height, info.width, info.channels), lambda pixels: pixels, classifier.run)


def _ort_bare(contender: Contender, path: Path, threads: int) -> Runner:
    from runtime.classifier import open_session, read_model_info
    from runtime.preprocess import normalize

    session = open_session(path, threads)
    info = read_model_info(session, path)
    name = session.get_inputs()[0].name
    return Runner(
        (info.height, info.width, info.channels),
        lambda pixels: normalize(pixels, info),
        lambda x: session.run(None, {name: x}),
    )
