"""Rewrite layers whose 16x8 TFLite conversion LiteRT cannot run into equivalent ops it can.

LiteRT's 16x8 quantizer (int16 activations, int8 weights) converts LayerNormalization through
``tf.nn.moments``, whose ``SQUARED_DIFFERENCE`` it writes with int16 tensors although LiteRT has
no int16 kernel for it: the file builds and fails at ``invoke`` ("SquaredDifference only supports
FLOAT32 and INT32"). That ended the 16-bit remedy for ConvNeXtTiny in the zoo, the one remedy that
would have repaired its int8 TFLite. Written as mean, subtraction, multiplication and ``rsqrt``,
the same normalization converts to ops that all have int16 kernels.

The rewrite shares every other layer (and its weights) with the original model and is verified in
float on the calibration images: a rewrite that changes the function is refused.
"""

from __future__ import annotations

import logging

import keras
import numpy as np

from export.macs import nested_layers
from runtime.metadata import ModelInfo
from runtime.preprocess import normalize

log = logging.getLogger(__name__)

FLOAT_TOLERANCE = 1e-4  # largest probability change the rewrite may cause in float
VERIFY_IMAGES = 32  # calibration images the rewrite is checked on


class MultiplyLayerNormalization(keras.layers.LayerNormalization):
    """LayerNormalization computed as ``(x - mean) * rsqrt(mean((x - mean)^2) + eps)``, squares
    by multiplication: the same function as its parent, in ops LiteRT runs with int16 tensors."""

    def call(self, inputs):
        x = keras.ops.cast(inputs, "float32")
        axes = [self.axis] if isinstance(self.axis, int) else list(self.axis)
        centered = x - keras.ops.mean(x, axis=axes, keepdims=True)
        variance = keras.ops.mean(centered * centered, axis=axes, keepdims=True)
        outputs = centered * keras.ops.rsqrt(variance + self.epsilon)
        if self.gamma is not None:
            outputs = outputs * self._broadcast(self.gamma, len(x.shape), axes)
        if self.beta is not None:
            outputs = outputs + self._broadcast(self.beta, len(x.shape), axes)
        return keras.ops.cast(outputs, self.compute_dtype)

    @staticmethod
    def _broadcast(weight, ndims: int, axes: list[int]):
        """``weight`` shaped to broadcast over the normalized axes (as the parent does)."""
        axes = sorted(a % ndims for a in axes)
        if axes == [ndims - 1]:
            return weight
        shape = [1] * ndims
        for index, axis in enumerate(axes):
            shape[axis] = weight.shape[index]
        return keras.ops.reshape(weight, shape)


def _rewritable(layer: keras.layers.Layer) -> bool:
    return type(layer) is keras.layers.LayerNormalization and not layer.rms_scaling


def _clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    """The original layer (shared), or a LayerNormalization rewritten with the same weights."""
    if not _rewritable(layer):
        return layer
    rewritten = MultiplyLayerNormalization.from_config(layer.get_config())
    rewritten.build(layer.input.shape)
    rewritten.set_weights(layer.get_weights())
    return rewritten


def _rewritable_layers(model: keras.Model) -> int:
    return sum(map(_rewritable, nested_layers(model)))


def with_int16_kernels(model: keras.Model, calibration: np.ndarray, info: ModelInfo) -> keras.Model:
    """``model`` with its LayerNormalization layers rewritten (see the module's docstring), or
    ``model`` itself where there is nothing to rewrite, the model cannot be cloned (a subclassed
    model), or the rewrite would change its outputs on the first calibration images."""
    count = _rewritable_layers(model)
    if not count:
        return model
    inputs = normalize(calibration[:VERIFY_IMAGES], info)
    try:
        rewritten = keras.models.clone_model(model, clone_function=_clone_layer, recursive=True)
    except Exception as error:  # noqa: BLE001 (subclassed or unusual models: keep the original)
        log.warning("LayerNormalization kept as it is for 16-bit TFLite (the model cannot be cloned: %s)", error)
        return model
    change = float(np.max(np.abs(rewritten.predict(inputs, verbose=0) - model.predict(inputs, verbose=0))))
    if change > FLOAT_TOLERANCE:
        log.warning("LayerNormalization kept as it is for 16-bit TFLite (rewriting it moved outputs by %.2g)", change)
        return model
    log.info("16-bit TFLite: %d LayerNormalization layers written in ops with int16 kernels", count)
    return rewritten
