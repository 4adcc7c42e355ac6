"""Test-time augmentation baked into the exported graph, as an option with its cost stated.

``--tta flip`` exports a model that classifies each image and its mirror image and averages the
two probability vectors: usually a little more accurate, always twice the inference work. The
float reference the gate measures against is the same averaged model, and the manifest, the
metadata and ``parity.md`` say that it is there, so no figure carries it silently.
"""

from __future__ import annotations

import keras

TTA_CHOICES = ("none", "flip")


@keras.saving.register_keras_serializable(package="edgepack")
class Mirror(keras.layers.Layer):
    """Left-right mirror of NHWC images (a Reverse/Slice op in ONNX, REVERSE_V2 in TFLite)."""

    def call(self, images):
        return keras.ops.flip(images, axis=2)


def with_flip_tta(model: keras.Model) -> keras.Model:
    """``model`` averaged over each image and its mirror."""
    inputs = keras.Input(model.input_shape[1:], name="image")
    both = [model(inputs), model(Mirror(name="mirror")(inputs))]
    return keras.Model(inputs, keras.layers.Average(name="tta_average")(both), name=f"{model.name}_flip_tta")
