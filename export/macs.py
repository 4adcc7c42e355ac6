"""Multiply-accumulates per image: the compute a model costs a device, whatever runs it.

Counted over the convolutions and dense layers (they hold all but a sliver of a CNN's arithmetic),
nested models included, from each layer's output shape: a Conv2D costs ``H x W x kh x kw x
C_in / groups x C_out``, a depthwise one ``H x W x kh x kw x C_in x multiplier``, a separable one
both halves, a Dense ``positions x inputs x units``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import keras


def nested_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Every layer of ``model`` and of the models nested in it (not the models themselves)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from nested_layers(layer)
        else:
            yield layer


def _layer_macs(layer: keras.layers.Layer) -> int:
    try:
        out = layer.output.shape
        inputs = layer.input.shape
    except (AttributeError, ValueError):  # a layer called more than once has no single shape
        return 0
    kernel = math.prod(getattr(layer, "kernel_size", (1,)))
    positions = math.prod(d or 1 for d in out[1:-1])
    if isinstance(layer, keras.layers.SeparableConv2D):
        depthwise = positions * kernel * inputs[-1] * layer.depth_multiplier
        return depthwise + positions * inputs[-1] * layer.depth_multiplier * out[-1]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return positions * kernel * inputs[-1] * layer.depth_multiplier
    if isinstance(layer, keras.layers.Conv2D):
        return positions * kernel * inputs[-1] // layer.groups * out[-1]
    if isinstance(layer, keras.layers.Dense):
        return positions * inputs[-1] * out[-1]
    return 0


def macs_per_image(model: keras.Model) -> int:
    """The model's multiply-accumulates for one image (see the module docstring)."""
    return int(sum(_layer_macs(layer) for layer in nested_layers(model)))
