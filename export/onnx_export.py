"""Keras -> ONNX fp32 with tf2onnx (int8 is ``export.quantize``'s).

The ONNX graph takes NCHW input: tf2onnx then pushes the layout change through the whole
convolutional graph, so ONNX Runtime runs no Transpose at all (checked by :func:`count_ops`).
BatchNorm is folded into the convolutions by tf2onnx's optimizer.

Two of Keras' TensorFlow kernels trace to ops tf2onnx cannot convert, so the model is traced
with ONNX-friendly equivalents of them (:func:`convertible_kernels`): grouped and depthwise
``Conv2D(groups=...)`` (ConvNeXt's depthwise convolution), which Keras compiles with XLA on CPU
(a ``StatefulPartitionedCall`` to tf2onnx), and exact GELU, which TensorFlow writes with
``Erfc`` (no ONNX op); ``0.5 x (1 + erf(x / sqrt 2))`` is the same function with ONNX's ``Erf``.

Two habits of tf2onnx's graph optimizers cost memory in proportion to the weights times their
two dozen passes, measured on ResNet50V2 (94 MB of weights), whose conversion peaked at 6.8 GB:
its safety net deep-copies the graph before each pass, kept until Python's cycle collector runs
(:func:`optimizer_safety_net`: off at first, on again only where an optimizer fails, to skip it),
and after each pass it rewrites every node's attributes, weights included, into the node's
protobuf message, whose arena keeps every old copy (:func:`attributes_rewritten_when_changed`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import re
import traceback
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import onnx
import tensorflow as tf
import tf2onnx
from onnx import helper, numpy_helper

from export.opsets import DEFAULT_OPSET
from runtime.metadata import METADATA_KEY, ModelInfo

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"


def inference_function(model: keras.Model) -> tf.types.experimental.GenericFunction:
    """The model's inference pass as a tf.function over NHWC float32 batches of any size."""
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=INPUT_NAME)
    return tf.function(lambda image: model(image, training=False), input_signature=[spec])


def set_metadata(proto: onnx.ModelProto, info: ModelInfo) -> None:
    """Write the runtime's self-description into ``metadata_props`` (replacing an older one)."""
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=METADATA_KEY, value=info.to_json())


def _name_io(proto: onnx.ModelProto) -> None:
    """Call the output ``probabilities`` and the batch axis ``batch``, for readable tooling."""
    old = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = [OUTPUT_NAME if o == old else o for o in node.output]
    proto.graph.output[0].name = OUTPUT_NAME
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"


def captured_constants(function: tf.types.experimental.GenericFunction) -> dict[str, np.ndarray]:
    """The tensors (not variables) a traced model captures, by their name inside the graph.

    Keras layers that keep computed tensors rather than variables, such as ``Normalization``'s mean
    and variance (inside EfficientNet's and MobileNetV3's ``include_preprocessing``), are captured
    by ``tf.function`` as extra placeholders, which tf2onnx turns into extra graph inputs."""
    graph = function.get_concrete_function().graph
    return {internal.name: external.numpy() for external, internal in graph.captures if external.dtype != tf.resource}


def _fold_captured_inputs(proto: onnx.ModelProto, constants: dict[str, np.ndarray]) -> None:
    """Turn graph inputs that are captured constants into initializers: one input, the image."""
    for value in list(proto.graph.input):
        if value.name in constants:
            proto.graph.initializer.append(numpy_helper.from_array(constants[value.name], value.name))
            proto.graph.input.remove(value)


@contextlib.contextmanager
def convertible_kernels() -> Iterator[None]:
    """Trace Keras' grouped convolution without XLA and exact GELU with ``Erf`` (module docstring)."""
    from keras.src.backend.tensorflow import nn

    def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        layout = nn._convert_data_format(data_format, len(inputs.shape))
        return tf.nn.convolution(inputs, kernel, strides, padding.upper(), data_format=layout, dilations=dilation_rate)

    def gelu(x, approximate=True):
        x = tf.convert_to_tensor(x)
        if approximate:
            return tf.nn.gelu(x, approximate=True)
        return 0.5 * x * (1.0 + tf.math.erf(x / math.sqrt(2.0)))

    originals = {"conv": nn.conv, "gelu": nn.gelu}
    nn.conv, nn.gelu = conv, gelu
    try:
        yield
    finally:
        nn.conv, nn.gelu = originals["conv"], originals["gelu"]


CATCH_ERRORS_ENV = "TF2ONNX_CATCH_ERRORS"  # tf2onnx.constants.ENV_TF2ONNX_CATCH_ERRORS


@contextlib.contextmanager
def optimizer_safety_net(on: bool) -> Iterator[None]:
    """Run tf2onnx's optimizers with (its default) or without the deep copy that lets it skip one that
    fails. tf2onnx turns the net off whenever its variable is set (tf2onnx 1.17 compares the variable's
    name, not its value, with "TRUE"), so "FALSE" turns it off whichever way a release reads it."""
    saved = os.environ.pop(CATCH_ERRORS_ENV, None)
    if not on:
        os.environ[CATCH_ERRORS_ENV] = "FALSE"
    try:
        yield
    finally:
        os.environ.pop(CATCH_ERRORS_ENV, None)
        if saved is not None:
            os.environ[CATCH_ERRORS_ENV] = saved


def raised_in_optimizer(exc: BaseException) -> bool:
    """Whether ``exc`` came out of one of tf2onnx's graph optimizers (``tf2onnx/optimizer/``)."""
    return any(
        Path(frame.filename).parent.name == "optimizer" and "tf2onnx" in Path(frame.filename).parts
        for frame in traceback.extract_tb(exc.__traceback__)
    )


@contextlib.contextmanager
def attributes_rewritten_when_changed() -> Iterator[None]:
    """Make tf2onnx's ``Node.update_proto`` leave a node's attributes in place when they equal those
    already written. It deletes and re-adds them after every optimizer pass; with protobuf's upb
    backend a deleted attribute stays in its message's arena until the message is freed, so each
    pass kept one more copy of every weight (one 40 MB tensor rewritten five times: +190 MB)."""
    from tf2onnx.graph import Node

    original = Node.update_proto

    def update_proto(node: Node, external_tensor_storage=None) -> None:
        proto = node._op  # noqa: SLF001
        plain = external_tensor_storage is None and not node.get_body_graphs()
        if plain and list(proto.attribute) == list(node.get_onnx_attrs().values()):
            del proto.input[:]
            proto.input.extend(node.input)
            del proto.output[:]
            proto.output.extend(node.output)
            return
        original(node, external_tensor_storage)

    Node.update_proto = update_proto
    try:
        yield
    finally:
        Node.update_proto = original


def _converted(function: tf.types.experimental.GenericFunction, opset: int, safety_net: bool) -> onnx.ModelProto:
    with convertible_kernels(), optimizer_safety_net(safety_net), attributes_rewritten_when_changed():
        proto, _ = tf2onnx.convert.from_function(
            function, input_signature=function.input_signature, opset=opset, inputs_as_nchw=[INPUT_NAME]
        )
    return proto


def keras_to_onnx(model: keras.Model, info: ModelInfo, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Convert to an NCHW-input ONNX model with metadata, validated by the full checker."""
    function = inference_function(model)
    try:
        proto = _converted(function, opset, safety_net=False)
    except Exception as exc:  # tf2onnx's optimizers raise whatever they meet
        if not raised_in_optimizer(exc):
            raise
        log.info("tf2onnx: an optimizer failed (%s): converting again, skipping it", str(exc).splitlines()[0][:200])
        proto = _converted(function, opset, safety_net=True)
    _fold_captured_inputs(proto, captured_constants(function))
    _name_io(proto)
    number_generated_names(proto)
    proto.producer_name = "edgepack"
    set_metadata(proto, info)
    onnx.checker.check_model(proto, full_check=True)
    return proto


_GENERATED = re.compile(r"^(.*)__\d+$")  # tf2onnx's names for what it makes: a process-wide counter


def number_generated_names(proto: onnx.ModelProto) -> int:
    """Renumber the names tf2onnx makes up (``new_shape__60``) in the order the graph first uses
    them; returns how many. tf2onnx's counter depends on the order Python iterates sets of strings,
    which changes from process to process: two exports of one model differed in these names alone
    (``new_shape__60`` against ``new_shape__61``), so the ONNX files had different sha256. A graph
    with subgraphs, which may refer to outer names, is left as it is."""
    graph = proto.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return 0
    renamed: dict[str, str] = {}

    def numbered(name: str) -> str:
        match = _GENERATED.match(name)
        if not match:
            return name
        if name not in renamed:
            renamed[name] = f"{match.group(1)}__{len(renamed)}"
        return renamed[name]

    for node in graph.node:
        node.input[:] = [numbered(name) for name in node.input]
        node.output[:] = [numbered(name) for name in node.output]
        node.name = numbered(node.name)
    for item in (*graph.initializer, *graph.value_info, *graph.input, *graph.output):
        item.name = numbered(item.name)
    return len(renamed)


def store_weights_as_int8(proto: onnx.ModelProto) -> int:
    """Store float Conv and MatMul weights as per-output-channel int8 behind DequantizeLinear.

    tf2onnx folds a QAT model's weight fake-quantization into float constants, which leaves an
    "int8" model with fp32-sized weights that ONNX Runtime cannot run as integer convolutions.
    The folded weights already sit on a symmetric per-channel grid, so re-quantizing them with
    scale max|w|/127 restores int8 storage; the parity gate measures whatever error remains.
    Returns the number of weights converted.
    """
    initializers = {init.name: init for init in proto.graph.initializer}
    dequantize_nodes = []
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "MatMul") or node.input[1] not in initializers:
            continue
        name = node.input[1]
        weights = numpy_helper.to_array(initializers[name]).astype(np.float32)
        axis = 0 if node.op_type == "Conv" else weights.ndim - 1  # output channels: OIHW rows, MatMul columns
        others = tuple(i for i in range(weights.ndim) if i != axis)
        scale = np.max(np.abs(weights), axis=others) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        shape = [1] * weights.ndim
        shape[axis] = -1
        quantized = np.clip(np.rint(weights / scale.reshape(shape)), -127, 127).astype(np.int8)
        proto.graph.initializer.extend(
            [
                numpy_helper.from_array(quantized, f"{name}_int8"),
                numpy_helper.from_array(scale, f"{name}_scale"),
                numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_zero_point"),
            ]
        )
        dequantize_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{name}_int8", f"{name}_scale", f"{name}_zero_point"],
                [f"{name}_dequantized"],
                axis=axis,
            )
        )
        node.input[1] = f"{name}_dequantized"
    used = {i for node in proto.graph.node for i in node.input}
    kept = [
        init
        for init in proto.graph.initializer
        if init.name in used or init.name.endswith(("_int8", "_scale", "_zero_point"))
    ]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    for node in reversed(dequantize_nodes):  # their inputs are initializers: first is a valid order
        proto.graph.node.insert(0, node)
    return len(dequantize_nodes)


def shorten_added_names(proto: onnx.ModelProto, original: onnx.GraphProto) -> int:
    """Give the nodes and tensors that quantization added to ``original`` short names; returns how many.

    ONNX Runtime's quantizer names each QuantizeLinear/DequantizeLinear pair and its scale and zero
    point after the tensor it quantizes (``..._const_fold_opt__659_DequantizeLinear``): measured on
    the zoo's MobileNetV2, those names were a fifth of its int8 file, which then weighed 0.44x of the
    fp32 one (0.35x with short names, the same outputs bit for bit). The original graph's names stay,
    so the per-layer report and float fallback still find their tensors and ops. A graph with
    subgraphs (If, Loop), which may refer to outer names, is left as it is."""
    graph = proto.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return 0
    kept = {n.name for n in original.node} | {t for n in original.node for t in (*n.input, *n.output)}
    kept |= {i.name for i in original.initializer} | {v.name for v in (*graph.input, *graph.output)}
    renamed: dict[str, str] = {}
    fresh = (f"q{i}" for i in itertools.count() if f"q{i}" not in kept)

    def short(name: str) -> str:
        if not name or name in kept:
            return name
        if name not in renamed:
            renamed[name] = next(fresh)
        return renamed[name]

    for node in graph.node:
        node.name = short(node.name)
        node.input[:] = [short(name) for name in node.input]
        node.output[:] = [short(name) for name in node.output]
    for item in (*graph.initializer, *graph.value_info):
        item.name = short(item.name)
    return len(renamed)


def count_ops(proto: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
