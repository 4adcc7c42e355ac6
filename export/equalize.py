"""Cross-layer equalization: rescale channels between two layers without changing the function.

Nagel et al. (2019, "Data-Free Quantization") and Qualcomm AIMET: when a layer's output channel
``c`` goes through a positively homogeneous path (ReLU, max or average pooling, dropout) into the
next linear layer, dividing channel ``c`` by ``s_c`` before the path and multiplying the next
layer's input weights for ``c`` by ``s_c`` leaves the output unchanged. Activations are quantized
per tensor, so one channel with a range far above the others (an outlier channel) costs every
other channel its resolution; equalizing brings the channels' ranges together.

The scales here use the activations themselves, measured on calibration images:
``s_c = sqrt(range_c / weight_range_c)`` balances channel ``c``'s activation range against the
next layer's weight range for it (DFQ's rule, with the activation range in place of the
producer's weight range, as SmoothQuant does). Pairs are found in the model's own graph
(nested models too); the result is verified in float on the calibration images, and refused
if it changed the function.

Producers that can be rescaled: BatchNormalization (its gamma, or without one its moving
variance), and Conv2D, DepthwiseConv2D and Dense with a linear or ReLU activation. Consumers:
Conv2D, DepthwiseConv2D and Dense (after global pooling).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import keras
import numpy as np

from export.source import inference_batches

log = logging.getLogger(__name__)

NOTHING_TO_EQUALIZE = "cross-layer equalization changes nothing in this model"
PASS_THROUGH = (
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.Dropout,
    keras.layers.ZeroPadding2D,
    keras.layers.Identity,
)
CONSUMERS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
MAX_FLOAT_DRIFT = 1e-3
SCALE_LIMITS = (1e-4, 1e4)


@dataclass(frozen=True)
class Pair:
    producer: keras.layers.Layer
    path_end: keras.layers.Layer  # the last layer before the consumer (whose output is rescaled)
    consumer: keras.layers.Layer

    def describe(self) -> str:
        return f"{self.producer.name} -> {self.consumer.name}"


def _is_relu(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, keras.layers.ReLU):
        config = layer.get_config()
        return not config.get("max_value") and not config.get("negative_slope") and not config.get("threshold")
    if isinstance(layer, keras.layers.Activation):
        return layer.get_config().get("activation") == "relu"
    return False


def _activation(layer: keras.layers.Layer) -> str:
    return str(layer.get_config().get("activation", "linear"))


def _can_produce(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, keras.layers.BatchNormalization):
        return layer.get_config().get("axis") in (-1, 3, [-1], [3])
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
        return type(layer) in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense) and _activation(
            layer
        ) in ("linear", "relu")
    return False


def _can_consume(layer: keras.layers.Layer) -> bool:
    grouped = isinstance(layer, keras.layers.Conv2D) and layer.get_config().get("groups", 1) != 1
    return type(layer) in CONSUMERS and not grouped


def _single_consumer(layer: keras.layers.Layer) -> keras.layers.Layer | None:
    """The one layer that reads ``layer``'s output, if there is exactly one.

    Distinct operations are counted, not nodes: a Sequential model rebuilt from its config calls
    each layer once per build, which leaves several nodes to the same consumer."""
    consumers = {id(node.operation): node.operation for node in getattr(layer, "_outbound_nodes", [])}
    return next(iter(consumers.values())) if len(consumers) == 1 else None


def find_pairs(model: keras.Model) -> list[Pair]:
    """Producer -> (ReLU, pooling, ...) -> consumer chains with no branching, in this model and
    in nested functional models."""
    pairs = []
    for layer in model.layers:
        if isinstance(layer, keras.Model) and hasattr(layer, "_outbound_nodes") and layer.layers:
            pairs += find_pairs(layer)
            continue
        if not _can_produce(layer):
            continue
        path_end, current = layer, _single_consumer(layer)
        relu_seen = _activation(layer) == "relu"
        while current is not None and (_is_relu(current) or isinstance(current, PASS_THROUGH)):
            relu_seen = relu_seen or _is_relu(current)
            path_end, current = current, _single_consumer(current)
        if current is not None and relu_seen and _can_consume(current):
            if isinstance(current, keras.layers.Dense) and path_end.output.shape[-1] != current.kernel.shape[0]:
                continue
            pairs.append(Pair(layer, path_end, current))
    return pairs


def _input_weight_range(consumer: keras.layers.Layer) -> np.ndarray:
    """Per input channel, the largest absolute weight the consumer applies to it."""
    kernel = np.abs(consumer.get_weights()[0])
    if isinstance(consumer, keras.layers.Dense):
        return kernel.max(axis=1)
    return kernel.max(axis=(0, 1, 3))  # Conv2D (h, w, in, out) and DepthwiseConv2D (h, w, in, multiplier)


def rescale_producer(layer: keras.layers.Layer, scale: np.ndarray) -> None:
    """Divide the producer's output channel c by scale[c]."""
    weights = layer.get_weights()
    if isinstance(layer, keras.layers.BatchNormalization):
        names = [w.path.split("/")[-1] for w in layer.weights]
        values = dict(zip(names, weights))
        if "gamma" in values:
            values["gamma"] = values["gamma"] / scale
        else:  # no gamma: (x - mean) / sqrt(var + eps) is divided by s when var becomes s^2 (var + eps) - eps
            epsilon = layer.get_config()["epsilon"]
            values["moving_variance"] = scale**2 * (values["moving_variance"] + epsilon) - epsilon
        if "beta" in values:
            values["beta"] = values["beta"] / scale
        layer.set_weights([values[name] for name in names])
        return
    kernel = weights[0]
    shape = (1,) * (kernel.ndim - 1) + (-1,)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kernel = kernel / scale.reshape(1, 1, -1, 1)
    else:
        kernel = kernel / scale.reshape(shape)
    layer.set_weights([kernel, *(w / scale for w in weights[1:])])


def rescale_consumer(layer: keras.layers.Layer, scale: np.ndarray) -> None:
    """Multiply the consumer's weights for input channel c by scale[c]."""
    weights = layer.get_weights()
    kernel = weights[0]
    if isinstance(layer, keras.layers.Dense):
        kernel = kernel * scale[:, None]
    else:
        kernel = kernel * scale.reshape(1, 1, -1, 1)
    layer.set_weights([kernel, *weights[1:]])


def _copy(model: keras.Model) -> keras.Model:
    clone = keras.models.model_from_json(model.to_json())
    clone.set_weights(model.get_weights())
    return clone


def equalize(model: keras.Model, inputs: np.ndarray) -> tuple[keras.Model, list[str]]:
    """An equalized copy of ``model`` and the pairs rescaled; ``inputs`` are model-ready images.

    Returns the model unchanged (and no pairs) if nothing can be equalized or the result would
    change the float function."""
    equalized = _copy(model)
    pairs = find_pairs(equalized)
    if not pairs:
        log.info("cross-layer equalization: no rescalable layer pairs in %s", model.name)
        return model, []
    ranges = _activation_ranges(equalized, pairs, inputs)
    done = []
    for pair, activation_range in zip(pairs, ranges):
        weight_range = _input_weight_range(pair.consumer)
        scale = np.sqrt(np.maximum(activation_range, 1e-12) / np.maximum(weight_range, 1e-12))
        scale = np.clip(np.where((activation_range > 0) & (weight_range > 0), scale, 1.0), *SCALE_LIMITS)
        rescale_producer(pair.producer, scale.astype(np.float32))
        rescale_consumer(pair.consumer, scale.astype(np.float32))
        done.append(pair.describe())
    drift = float(np.max(np.abs(_outputs(model, inputs) - _outputs(equalized, inputs))))
    if drift > MAX_FLOAT_DRIFT:
        log.warning("cross-layer equalization changed the float outputs by %.2g: not used", drift)
        return model, []
    log.info("cross-layer equalization: %d pair(s), float outputs within %.1g", len(done), drift)
    return equalized, done


def _outputs(model: keras.Model, inputs: np.ndarray) -> np.ndarray:
    """The model's outputs in batches sized to the activation budget: checking ResNet50V2's 1,000
    calibration images in one pass took 3.1 GB at once, the peak of its whole export."""
    return np.concatenate([np.asarray(model(batch, training=False)) for batch in inference_batches(model, inputs)])


def _activation_ranges(model: keras.Model, pairs: list[Pair], inputs: np.ndarray) -> list[np.ndarray]:
    """The per-channel maximum absolute activation entering each consumer, over ``inputs``.

    Each ``path_end`` layer's ``call`` is wrapped for the duration of an eager run of the whole
    model, rather than cut out as a sub-model: a sub-model needs the layer's output connected to
    the model's inputs, which Keras cannot trace through a Sequential wrapper or a nested model
    (``Output with path `` is not connected to `inputs```)."""
    ranges: dict[int, np.ndarray] = {}

    def recording(layer: keras.layers.Layer, call):
        def wrapped(*args, **kwargs):
            out = call(*args, **kwargs)
            seen = np.abs(np.asarray(out)).reshape(-1, out.shape[-1]).max(axis=0)
            ranges[id(layer)] = np.maximum(ranges.get(id(layer), seen), seen)
            return out

        return wrapped

    hooked = {id(pair.path_end): pair.path_end for pair in pairs}
    for layer in hooked.values():
        object.__setattr__(layer, "call", recording(layer, layer.call))
    try:
        for batch in inference_batches(model, inputs):
            model(batch, training=False)
    finally:
        for layer in hooked.values():
            object.__delattr__(layer, "call")
    return [ranges[id(pair.path_end)] for pair in pairs]
