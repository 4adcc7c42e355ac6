"""LayerNormalization rewritten for LiteRT's 16x8 kernels (export/int16_kernels.py)."""

from __future__ import annotations

from types import SimpleNamespace

import keras
import numpy as np
import pytest

from export.int16_kernels import MultiplyLayerNormalization, with_int16_kernels
from export.macs import nested_layers
from runtime.metadata import ModelInfo

INFO = ModelInfo(labels=("a", "b", "c"), height=8, width=8, channels=3, layout="NHWC")
IMAGES = np.random.default_rng(0).integers(0, 255, (48, 8, 8, 3), dtype=np.uint8)


def layer_norm_model(**options) -> keras.Model:
    """conv -> LayerNormalization(**options) -> pooled softmax, nested in a Sequential as users wrap
    keras.applications models; gamma and beta moved off their initial values so they matter."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    norm = keras.layers.LayerNormalization(**options)
    x = norm(keras.layers.Conv2D(8, 3, padding="same")(inputs))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    norm.set_weights([w + np.random.default_rng(1).normal(0, 0.5, w.shape) for w in norm.get_weights()])
    return keras.Sequential([keras.Input((8, 8, 3)), keras.Model(inputs, outputs)])


def layer_types(model: keras.Model) -> set[type]:
    return {type(layer) for layer in nested_layers(model)}


@pytest.mark.parametrize(
    "options",
    [{}, {"axis": [1, 2, 3]}, {"axis": 1}, {"center": False}, {"scale": False, "epsilon": 1e-6}],
    ids=["last-axis", "three-axes", "first-axis", "no-beta", "no-gamma"],
)
def test_the_rewrite_computes_the_same_function_in_other_ops(options):
    model = layer_norm_model(**options)
    rewritten = with_int16_kernels(model, IMAGES, INFO)
    assert MultiplyLayerNormalization in layer_types(rewritten)
    assert keras.layers.LayerNormalization not in layer_types(rewritten)
    pixels = IMAGES.astype(np.float32) / 255
    np.testing.assert_allclose(rewritten.predict(pixels, verbose=0), model.predict(pixels, verbose=0), atol=1e-5)


def test_a_16_bit_tflite_of_layer_normalization_runs_on_litert_in_integers(tmp_path):
    """Through the real TFLite format and LiteRT: without the rewrite the 16x8 file fails at
    invoke (int16 SquaredDifference); with it every op computes in integers, close to float."""
    from export.formats import ARTIFACTS, format_of
    from export.litert import LiteRTModel
    from export.quantize import Int8Recipe, tflite_16x8

    model = layer_norm_model()
    unrewritten = tmp_path / "unrewritten.tflite"
    unrewritten.write_bytes(tflite_16x8(model, IMAGES, INFO))
    with pytest.raises(RuntimeError, match="SquaredDifference"):
        LiteRTModel(unrewritten, INFO).run(IMAGES[:1])

    spec = ARTIFACTS["tflite_int8"]
    builder = SimpleNamespace(keras_model=lambda recipe: model, calibration_for=lambda samples: IMAGES)
    path = tmp_path / spec.filename
    format_of(spec).build(builder, spec, Int8Recipe(activation_bits=16), INFO, path)
    litert = LiteRTModel(path, INFO)
    probabilities = litert.run(IMAGES)
    np.testing.assert_allclose(probabilities, model.predict(IMAGES.astype(np.float32) / 255, verbose=0), atol=0.02)
    interpreter = litert.interpreter
    tensors = interpreter.get_tensor_details()
    computed = {str(tensors[op["outputs"][0]]["dtype"]) for op in interpreter._get_ops_details()}  # noqa: SLF001
    assert computed == {"<class 'numpy.int16'>"}  # no op left in float


def test_models_without_a_rewritable_layer_norm_are_left_as_they_are(caplog):
    rms = layer_norm_model(rms_scaling=True)
    assert with_int16_kernels(rms, IMAGES, INFO) is rms  # RMS scaling converts without SquaredDifference

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.norm = keras.layers.LayerNormalization()
            self.head = keras.layers.Dense(3, activation="softmax")

        def call(self, x):
            return self.head(keras.ops.mean(self.norm(x), axis=(1, 2)))

    subclassed = Subclassed()
    subclassed(IMAGES[:1].astype(np.float32))
    assert with_int16_kernels(subclassed, IMAGES, INFO) is subclassed
    assert "cannot be cloned" in caplog.text
