"""The artifacts export can build, and how each is run: the one table the pipeline, accuracy
control and the reports look formats up in.

Each entry names the file, the format (the runtime that runs it), the precision and how it was
quantized; :func:`evaluator` is how users run that format, so the gate measures what they get.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from export.litert import LiteRTModel
from export.source import Source
from runtime.classifier import Classifier
from runtime.metadata import ModelInfo


@dataclass(frozen=True)
class ArtifactSpec:
    filename: str
    format: str
    precision: str
    quantization: str = "ptq"


ARTIFACTS: dict[str, ArtifactSpec] = {
    "onnx_fp32": ArtifactSpec("model_fp32.onnx", "onnx", "fp32", "none"),
    "onnx_int8": ArtifactSpec("model_int8.onnx", "onnx", "int8"),
    "tflite_fp32": ArtifactSpec("model_fp32.tflite", "tflite", "fp32", "none"),
    "tflite_fp16": ArtifactSpec("model_fp16.tflite", "tflite", "fp16"),
    "tflite_dynamic": ArtifactSpec("model_dynamic.tflite", "tflite", "dynamic"),
    "tflite_int8": ArtifactSpec("model_int8.tflite", "tflite", "int8"),
    "onnx_qat_int8": ArtifactSpec("model_qat_int8.onnx", "onnx", "int8", "qat"),
    "tflite_qat_int8": ArtifactSpec("model_qat_int8.tflite", "tflite", "int8", "qat"),
}
DEFAULT_FORMATS = tuple(name for name, spec in ARTIFACTS.items() if spec.quantization != "qat")
QAT_FORMATS = tuple(name for name, spec in ARTIFACTS.items() if spec.quantization == "qat")


def float_reference(source: Source, pixels: np.ndarray, model=None, batch_size: int = 256) -> np.ndarray:
    """The float Keras model's probabilities, the reference every artifact is measured against."""
    model = model or source.model
    batches = [pixels[i : i + batch_size] for i in range(0, len(pixels), batch_size)]
    return np.concatenate(
        [
            np.asarray(model(source.inputs(b), training=False))
            for b in tqdm(batches, desc="float reference", unit=" batch", leave=False)
        ]
    )


def evaluator(spec: ArtifactSpec, info: ModelInfo) -> Callable[[Path, np.ndarray], np.ndarray]:
    """How users run this kind of artifact: the runtime for ONNX (fed the dataset's images as
    they are, so its own resizing is part of what is measured), LiteRT for TFLite (fed the same
    images resized by the runtime's code)."""
    if spec.format == "onnx":
        return lambda path, images: Classifier(path, batch_size=256).predict(images)

    def run_tflite(path: Path, images: np.ndarray) -> np.ndarray:
        from runtime.preprocess import to_pixels

        return LiteRTModel(path, info).run(to_pixels(images, info))

    return run_tflite
