"""Keras -> TFLite at fp32, fp16 and dynamic-range precision, and full-integer QAT models.

TFLite keeps Keras' NHWC layout. Post-training int8 goes through ``export.quantize`` (calibrate
once, then quantize with any ops kept in float); a QAT model already carries its quantization
ranges, and is converted here with uint8 input and output like the post-training one.
"""

from __future__ import annotations

import contextlib
import io

import keras
import numpy as np
import tensorflow as tf

from export.quantize import representative
from runtime.metadata import ModelInfo
from runtime.native_logs import native_notices_filtered

TFLITE_PRECISIONS = ("fp32", "fp16", "dynamic", "int8")


def keras_to_tflite(
    model: keras.Model, precision: str, calibration: np.ndarray | None = None, info: ModelInfo | None = None
) -> bytes:
    """Convert at ``precision``; int8 (for QAT models) needs calibration images and their ``info``."""
    if precision not in TFLITE_PRECISIONS:
        raise ValueError(f"unknown TFLite precision {precision!r}")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        if calibration is None or info is None:
            raise ValueError("full-integer quantization needs calibration images and their ModelInfo")
        converter.representative_dataset = representative(calibration, info)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    with contextlib.redirect_stdout(io.StringIO()), native_notices_filtered():  # Keras prints its signature
        return converter.convert()
