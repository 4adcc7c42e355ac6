"""Percentile calibration for TFLite (export/tflite_percentile.py), through the real converter,
quantizer and LiteRT."""

from __future__ import annotations

from types import SimpleNamespace

import keras
import numpy as np
import pytest

from export.tflite_percentile import BINS, clipped_range, percentile_calibrated, recorded_ranges, with_ranges
from runtime.metadata import ModelInfo

INFO = ModelInfo(labels=("a", "b", "c"), height=32, width=32, channels=3, layout="NHWC")


def calibration_images() -> np.ndarray:
    """Dim images, one of them with a single bright pixel: it alone sets the conv output's maximum,
    in 72 of its 720,000 values (0.01%, over the 0.001% that percentile calibration keeps)."""
    images = np.random.default_rng(0).integers(0, 50, (100, 32, 32, 3), dtype=np.uint8)
    images[7, 5, 5] = 255
    return images


def conv_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def calibrated() -> bytes:
    from export.quantize import calibrated_tflite

    return calibrated_tflite(conv_model(), calibration_images(), INFO)


def conv_tensor(ranges: dict) -> str:
    """The conv+ReLU output, the one tensor the converter names after the fused ReLU."""
    (name,) = [name for name in ranges if "Relu" in name]
    return name


def test_the_threshold_is_the_percentile_of_the_magnitudes():
    counts = np.zeros(BINS, np.int64)
    counts[:100] = 10_000  # a million values in the lowest 100 bins
    counts[-1] = 5  # five in the last: 0.0005%, under the 0.001% percentile clips
    low, high = clipped_range(counts, (-2.0, 4.0))
    assert high == pytest.approx(4.0 * 100 / BINS) and low == -high  # symmetric, as ONNX Runtime's
    counts[-1] = 50  # 0.005%: the top is kept
    assert clipped_range(counts, (-2.0, 4.0)) == (-2.0, 4.0)
    zeros = np.zeros(BINS, np.int64)
    zeros[0] = 1_000_000
    assert clipped_range(zeros, (0.0, 3.0))[1] > 0  # a tensor of zeros keeps a range above zero
    assert clipped_range(np.zeros(BINS, np.int64), (0.0, 3.0)) == (0.0, 3.0)  # nothing seen: as recorded


def test_percentile_ranges_clip_an_outlier_and_leave_the_input_alone(calibrated):
    clipped = percentile_calibrated(calibrated, calibration_images(), INFO)
    before, after = recorded_ranges(calibrated), recorded_ranges(clipped)
    assert before.keys() == after.keys() and len(clipped) == len(calibrated)  # overwritten in place
    conv = conv_tensor(before)
    assert after[conv][0] == before[conv][0] == 0.0
    assert after[conv][1] < 0.7 * before[conv][1]  # the bright pixel's reach is cut
    (model_input,) = [name for name in before if name.startswith("serving_default")]
    assert after[model_input] == before[model_input]  # the normalized image keeps its full range
    assert recorded_ranges(with_ranges(calibrated, {conv: (-1.0, 2.0)}))[conv] == (-1.0, 2.0)


def test_the_int8_model_gets_finer_steps_and_still_computes_the_model(calibrated, tmp_path):
    """Through the TFLite format's own build and LiteRT: the conv output's int8 step shrinks with
    the clipped range, and the uint8 model still gives the float model's probabilities."""
    from ai_edge_litert.interpreter import Interpreter

    from export.formats import ARTIFACTS, format_of
    from export.litert import LiteRTModel
    from export.quantize import Int8Recipe

    model, images, spec = conv_model(), calibration_images(), ARTIFACTS["tflite_int8"]
    fmt, store = format_of(spec), {}
    for name in ("tflite_int8", "tflite_micro_int8"):  # accuracy control offers it to both
        choices = format_of(ARTIFACTS[name]).calibration_choices(Int8Recipe())
        assert [(remedy, recipe.method) for remedy, recipe in choices] == [("percentile calibration", "percentile")]
    assert fmt.calibration_choices(Int8Recipe(method="percentile")) == []  # already the export's method
    builder = SimpleNamespace(
        keras_model=lambda recipe: model, calibration_for=lambda samples: images, cache=lambda name: store
    )
    steps = {}
    for method in ("minmax", "percentile"):
        path = tmp_path / f"{method}.tflite"
        fmt.build(builder, spec, Int8Recipe(method=method), INFO, path)
        tensors = Interpreter(model_path=str(path)).get_tensor_details()
        steps[method] = next(t["quantization"][0] for t in tensors if "Relu" in t["name"])
        ordinary = np.delete(images, 7, axis=0)
        expected = model.predict(ordinary.astype(np.float32) / 255, verbose=0)
        np.testing.assert_allclose(LiteRTModel(path, INFO).run(ordinary), expected, atol=0.02)
    assert steps["percentile"] < 0.7 * steps["minmax"]
    assert len([key for key in store if key[0] == "calibrated"]) == 2  # min-max calibrated once, reused
