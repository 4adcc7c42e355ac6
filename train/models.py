"""CNN architectures, selectable by name.

Every architecture takes float32 images scaled to [0, 1] in NHWC (Keras' layout; export turns it
into NCHW for ONNX) and ends in a float32 softmax, so mixed precision on GPU leaves the output
exact. The defaults use only quantization-friendly ops: Conv, BatchNorm (folded at export), ReLU,
pooling, Dense.

Builders take the Keras module to build with (``kx``): Keras 3 for training, or ``tf_keras``
(Keras 2) for quantization-aware training, which tensorflow-model-optimization only supports
there. Both build the same layers in the same order, so weights carry over with ``set_weights``.

An architecture may also have a training layout (``TRAINING_LAYOUTS``): the same layers and
weights in an order that is cheaper to train but computes the same function in inference mode.
Training uses it; the saved ``model.keras`` uses the plain layout, which export folds better.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import keras
import numpy as np

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
    """A small VGG with batch norm and global pooling (~0.3M parameters); the last Fashion-MNIST default."""
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
    """A narrow ResNet-9 (~0.76M parameters); the last CIFAR-10 default.

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


WHITEN_LAYER = "whiten"
CLASSIFIER_LAYER = "classifier"
LOGIT_SCALE_LAYER = "logit_scale"
AIRBENCH_WIDTHS = (64, 160, 192)  # airbench93's are 64/128/128; these fill the 1M-parameter budget
LOGIT_SCALE = 1 / 9  # airbench's output scaling: slows the classifier's effective learning rate


def _airbench_group(kx: ModuleType, x, filters: int, pool_first: bool):
    """conv-pool-BN-ReLU-conv-BN-ReLU, with BatchNorm's scale fixed at 1 (``scale=False``).

    With the scale fixed, BatchNorm in inference mode is a per-channel increasing map, so it and
    the ReLU commute with max pooling: ``pool_first`` (fewer BatchNorm elements to train) and
    its inverse compute the same function on the same weights. The saved model puts the pooling
    last, so that export folds every BatchNorm into the convolution before it.
    """

    def norm(y):
        y = kx.layers.BatchNormalization(scale=False, momentum=0.6, epsilon=1e-5)(y)
        return kx.layers.ReLU()(y)

    def conv(y):
        return kx.layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=_torch_default(kx))(y)

    x = conv(x)
    x = norm(kx.layers.MaxPooling2D()(x)) if pool_first else kx.layers.MaxPooling2D()(norm(x))
    return norm(conv(x))


def _torch_default(kx: ModuleType):
    """PyTorch's default initializer, uniform within 1/sqrt(fan_in), as airbench was tuned with.

    Keras' Glorot default draws weights about 1.7x larger here; before a BatchNorm the scale of a
    convolution's weights does not change its output, but it divides its effective learning rate
    by the square of that factor."""
    return kx.initializers.VarianceScaling(1 / 3, mode="fan_in", distribution="uniform")


def _edge_airbench(
    input_shape: tuple[int, int, int],
    num_classes: int,
    kx: ModuleType,
    training: bool,
    widths: tuple[int, ...] = AIRBENCH_WIDTHS,
    name: str = "edge_airbench",
) -> keras.Model:
    inputs = kx.Input(input_shape, name="image")
    # 2x2 patch whitening: fixed weights set from the training images (train.fit.init_whitening),
    # as +/- pairs so that the ReLU after it keeps every direction.
    x = kx.layers.Conv2D(8 * input_shape[-1], 2, name=WHITEN_LAYER, trainable=False)(inputs)
    x = kx.layers.ReLU()(x)
    for filters in widths:
        x = _airbench_group(kx, x, filters, pool_first=training)
    x = kx.layers.GlobalMaxPooling2D()(x)
    x = kx.layers.Dense(num_classes, use_bias=False, kernel_initializer=_torch_default(kx), name=CLASSIFIER_LAYER)(x)
    if training:
        x = kx.layers.Rescaling(LOGIT_SCALE, name=LOGIT_SCALE_LAYER)(x)
    outputs = kx.layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return kx.Model(inputs, outputs, name=name)


def edge_airbench(input_shape: tuple[int, int, int], num_classes: int, kx: ModuleType = keras) -> keras.Model:
    """An airbench-style net (Jordan 2024) widened to ~0.98M parameters; the default.

    A frozen 2x2 patch-whitening convolution, then three conv groups (64, 160, 192 filters) each
    halving the resolution, global max pooling and a linear classifier. GELU is replaced by ReLU,
    so every op folds and quantizes (and tfmot can fine-tune it).
    """
    return _edge_airbench(input_shape, num_classes, kx, training=False)


def edge_airbench_training(input_shape: tuple[int, int, int], num_classes: int, kx: ModuleType = keras):
    """edge_airbench as trained: each group pools before its first BatchNorm (18% faster here),
    and the logits are scaled by ``LOGIT_SCALE``; :func:`saved_layout` folds both away."""
    return _edge_airbench(input_shape, num_classes, kx, training=True)


# edge_micro's widths: its int8 weights (one byte each) must leave room in a microcontroller's flash
# for the rest of the firmware. MLPerf Tiny's boards have 256 KB-2 MB of flash; its image reference
# (ResNet-8, 78k parameters) sets the class. Colour images get ~83k parameters (within 100 KB as an
# int8 TFLite file), grayscale ~37k (within 50 KB); each group's activations stay within a 64 KB arena.
MICRO_WIDTHS = {3: (24, 40, 56), 1: (16, 32, 36)}


def _edge_micro(input_shape: tuple[int, int, int], num_classes: int, kx: ModuleType, training: bool) -> keras.Model:
    widths = MICRO_WIDTHS[3 if input_shape[-1] == 3 else 1]
    return _edge_airbench(input_shape, num_classes, kx, training, widths, name="edge_micro")


def edge_micro(input_shape: tuple[int, int, int], num_classes: int, kx: ModuleType = keras) -> keras.Model:
    """edge_airbench narrowed for microcontrollers (``MICRO_WIDTHS``): the same blocks, recipe and
    initialization, a tenth of the parameters. Export it with ``--formats tflite_micro``."""
    return _edge_micro(input_shape, num_classes, kx, training=False)


def edge_micro_training(input_shape: tuple[int, int, int], num_classes: int, kx: ModuleType = keras) -> keras.Model:
    """edge_micro as trained (see :func:`edge_airbench_training`)."""
    return _edge_micro(input_shape, num_classes, kx, training=True)


ARCHITECTURES: dict[str, Builder] = {
    "baseline": baseline,
    "edge_vgg": edge_vgg,
    "edge_resnet": edge_resnet,
    "edge_airbench": edge_airbench,
    "edge_micro": edge_micro,
}
TRAINING_LAYOUTS: dict[str, Builder] = {"edge_airbench": edge_airbench_training, "edge_micro": edge_micro_training}
# The default for every dataset: on two CPU cores it trains CIFAR-10 to 90.77% in 95 minutes, where
# edge_resnet needs 7-9 hours for 90.66%, and Fashion-MNIST to 94.72% in 38 minutes.
DEFAULT_ARCH = "edge_airbench"


def saved_layout(trained: keras.Model, arch: str, kx: ModuleType = keras) -> keras.Model:
    """A float32 model of ``arch`` in its saved layout, computing what ``trained`` computes.

    The weights carry over one for one; a training-only logit scale is folded into the
    classifier's kernel (the classifier has no bias, so scaling its kernel scales its output).
    """
    model = build_model(arch, trained.input_shape[1:], trained.output_shape[-1], kx)
    weights = trained.get_weights()
    scale_layers = [layer for layer in trained.layers if layer.name == LOGIT_SCALE_LAYER]
    if scale_layers:
        kernel = model.get_layer(CLASSIFIER_LAYER).kernel
        index = next(i for i, w in enumerate(model.weights) if w is kernel)
        weights[index] = weights[index] * np.float32(scale_layers[0].scale)
    model.set_weights(weights)
    return model


def build_model(
    arch: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    kx: ModuleType = keras,
    training_layout: bool = False,
) -> keras.Model:
    """The architecture by name; ``training_layout`` picks its cheaper-to-train twin, if any."""
    try:
        builder = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}: expected one of {sorted(ARCHITECTURES)}") from None
    if training_layout:
        builder = TRAINING_LAYOUTS.get(arch, builder)
    return builder(input_shape, num_classes, kx)
