"""CNN architectures, selectable by name.

Every architecture takes float32 images scaled to [0, 1] in NHWC (Keras' layout; export turns it
into NCHW for ONNX) and ends in a float32 softmax, so mixed precision on GPU leaves the output
exact. The defaults use only quantization-friendly ops: Conv, BatchNorm (folded at export), ReLU,
pooling, Dense.

Builders take the Keras module to build with (``kx``): Keras 3 for training, or ``tf_keras``
(Keras 2) for quantization-aware training, which tensorflow-model-optimization only supports
there. Both build the same layers in the same order, so weights carry over with ``set_weights``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import keras

Builder = Callable[..., keras.Model]


def _classifier_head(kx: ModuleType, x, num_classes: int, dropout: float):
    x = kx.layers.Dropout(dropout)(x)
    x = kx.layers.Dense(num_classes)(x)
    return kx.layers.Activation("softmax", dtype="float32", name="probabilities")(x)


def baseline(input_shape: tuple[int, int, int], num_classes: int, kx: ModuleType = keras) -> keras.Model:
    """The seed notebook's CNN: Conv-Pool-Conv-Pool-Dense-Dropout, kept for comparison."""
    inputs = kx.Input(input_shape, name="image")
    x = kx.layers.Conv2D(32, 3, activation="relu")(inputs)
    x = kx.layers.MaxPooling2D()(x)
    x = kx.layers.Conv2D(64, 3, activation="relu")(x)
    x = kx.layers.MaxPooling2D()(x)
    x = kx.layers.Flatten()(x)
    x = kx.layers.Dense(128, activation="relu")(x)
    return kx.Model(inputs, _classifier_head(kx, x, num_classes, 0.5), name="baseline")


def _conv_bn_relu(kx: ModuleType, x, filters: int):
    x = kx.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    x = kx.layers.BatchNormalization()(x)
    return kx.layers.ReLU()(x)


def edge_vgg(input_shape: tuple[int, int, int], num_classes: int, kx: ModuleType = keras) -> keras.Model:
    """A small VGG with batch norm and global pooling (~0.3M parameters); default for 28x28."""
    inputs = kx.Input(input_shape, name="image")
    x = inputs
    for filters in (32, 64):
        x = _conv_bn_relu(kx, x, filters)
        x = _conv_bn_relu(kx, x, filters)
        x = kx.layers.MaxPooling2D()(x)
    x = _conv_bn_relu(kx, x, 128)
    x = _conv_bn_relu(kx, x, 128)
    x = kx.layers.GlobalAveragePooling2D()(x)
    return kx.Model(inputs, _classifier_head(kx, x, num_classes, 0.3), name="edge_vgg")


def _residual(kx: ModuleType, x, filters: int):
    shortcut = x
    x = _conv_bn_relu(kx, x, filters)
    x = _conv_bn_relu(kx, x, filters)
    return kx.layers.Add()([shortcut, x])


def edge_resnet(input_shape: tuple[int, int, int], num_classes: int, kx: ModuleType = keras) -> keras.Model:
    """A narrow ResNet-9 (~0.76M parameters); default for 32x32 colour images.

    Follows the fast-CIFAR ResNet-9 layout (prep conv, three pooled stages, two residual blocks,
    global max pooling) with half its width, to stay under 1M parameters.
    """
    inputs = kx.Input(input_shape, name="image")
    x = _conv_bn_relu(kx, inputs, 32)
    x = _conv_bn_relu(kx, x, 64)
    x = kx.layers.MaxPooling2D()(x)
    x = _residual(kx, x, 64)
    x = _conv_bn_relu(kx, x, 128)
    x = kx.layers.MaxPooling2D()(x)
    x = _residual(kx, x, 128)
    x = _conv_bn_relu(kx, x, 256)
    x = kx.layers.MaxPooling2D()(x)
    x = kx.layers.GlobalMaxPooling2D()(x)
    return kx.Model(inputs, _classifier_head(kx, x, num_classes, 0.2), name="edge_resnet")


ARCHITECTURES: dict[str, Builder] = {
    "baseline": baseline,
    "edge_vgg": edge_vgg,
    "edge_resnet": edge_resnet,
}
DEFAULT_ARCH = {"fashion_mnist": "edge_vgg", "cifar10": "edge_resnet"}


def default_arch(dataset: str, channels: int) -> str:
    """The default architecture of a registered dataset, or by colour for a user's own."""
    return DEFAULT_ARCH.get(dataset, "edge_resnet" if channels == 3 else "edge_vgg")


def build_model(arch: str, input_shape: tuple[int, int, int], num_classes: int, kx: ModuleType = keras) -> keras.Model:
    try:
        builder = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}: expected one of {sorted(ARCHITECTURES)}") from None
    return builder(input_shape, num_classes, kx)
