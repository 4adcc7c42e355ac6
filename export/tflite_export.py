"""Keras -> TFLite at four precisions, and LiteRT to run them (never tf.lite.Interpreter).

TFLite keeps Keras' NHWC layout. The full-integer model takes and returns uint8; its input
quantization is read from the file, so the runner feeds it exactly what the float models get.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf

TFLITE_PRECISIONS = ("fp32", "fp16", "dynamic", "int8")


def keras_to_tflite(model: keras.Model, precision: str, calibration: np.ndarray | None = None) -> bytes:
    """Convert at ``precision``; int8 needs calibration images (uint8 NHWC) from the training split."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision not in TFLITE_PRECISIONS:
        raise ValueError(f"unknown TFLite precision {precision!r}")
    if precision != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        if calibration is None:
            raise ValueError("full-integer quantization needs calibration images")
        converter.representative_dataset = lambda: _representative(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    with contextlib.redirect_stdout(io.StringIO()):  # Keras 3 prints its SavedModel signature to stdout
        return converter.convert()


def _representative(calibration: np.ndarray) -> Iterator[list[np.ndarray]]:
    for image in calibration:
        yield [image[None].astype(np.float32) / 255.0]
