"""Where does int8 lose accuracy? The error of every activation quantizer, both formats alike.

Each quantized activation tensor has its own quantizer (a scale and zero point chosen from the
calibration images). Its error is measured in isolation: the *float* model's values of that tensor
on training images, quantized and dequantized with the int8 model's own scale and zero point,
against themselves. Running the int8 model instead would blame every tensor downstream of the
first bad one, since their inputs are already damaged.

The figure is a signal-to-quantization-noise ratio against the *typical* channel: the mean noise
power over the median channel's signal power. A whole-tensor SQNR (reported beside it) is
dominated by the loudest channel, so a tensor whose range one outlier channel stretched looks
healthy while its other channels are rounded to zero; weighting channels equally instead would
let a few near-silent channels, which round to zero in any per-tensor scheme, condemn healthy
tensors. The median channel is neither.

* ONNX: float activations from the prepared float graph with every tensor exposed
  (``onnxruntime.quantization.qdq_loss_debug``); quantizers from the QDQ model's QuantizeLinear nodes.
* TFLite: float activations from the calibrated float model with all tensors preserved (LiteRT);
  quantizers from the int8 model's tensors of the same name.

Each row also names the quantizer group accuracy control keeps in float to spare that tensor. A
tensor stays quantized while any op next to it is, and ops that merely pass values on (ReLU,
pooling, reshapes) are quantized with their neighbours, so the group runs from the compute op that
produces the values, through the pass-through ops, to the compute ops that consume them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from export.memory import images_within
from export.quantize import PixelReader, float_activation_bytes
from runtime.metadata import ModelInfo
from runtime.preprocess import normalize

log = logging.getLogger(__name__)

DIAGNOSIS_SAMPLES = 256
_INTEGER_RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}


PASS_THROUGH = frozenset(
    {
        # ONNX
        "Relu", "Clip", "LeakyRelu", "MaxPool", "AveragePool", "Identity", "Reshape", "Flatten", "Squeeze",
        "Unsqueeze", "Transpose", "Pad",
        # TFLite
        "RELU", "RELU6", "LEAKY_RELU", "MAX_POOL_2D", "AVERAGE_POOL_2D", "RESHAPE", "SQUEEZE", "PAD", "TRANSPOSE",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Op:
    name: str  # what the converter's exclusion list calls it
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def quantizer_group(ops: list[Op], tensor: str) -> tuple[str, ...]:
    """The ops to keep in float so that ``tensor`` is never quantized (see the module docstring)."""
    producers = {output: op for op in ops for output in op.outputs}
    group: list[str] = []

    def add(op: Op) -> None:
        if op.name not in group:
            group.append(op.name)

    op = producers.get(tensor)
    while op is not None:
        add(op)
        op = producers.get(op.inputs[0]) if op.kind in PASS_THROUGH and op.inputs else None
    frontier = [tensor]
    while frontier:
        current = frontier.pop()
        for consumer in (op for op in ops if current in op.inputs):
            if consumer.name not in group:
                add(consumer)
                if consumer.kind in PASS_THROUGH:
                    frontier.extend(consumer.outputs)
    return tuple(group)


@dataclass(frozen=True)
class LayerError:
    name: str  # the quantized tensor
    op: str  # the op type producing it
    sqnr_db: float  # against the median channel's power
    tensor_sqnr_db: float  # whole-tensor, as commonly reported
    group: tuple[str, ...]  # ops to keep in float so this tensor is not quantized (format-specific names)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "op": self.op,
            "sqnr_db": round(self.sqnr_db, 2),
            "tensor_sqnr_db": round(self.tensor_sqnr_db, 2),
            "group": list(self.group),
        }


def channel_noise(reference: np.ndarray, restored: np.ndarray, axis: int) -> tuple[float, float]:
    """(noise / median channel power, noise / mean channel power): the typical and whole-tensor ratios."""
    channels = reference.shape[axis]
    reference = np.moveaxis(np.asarray(reference, np.float64), axis, 0).reshape(channels, -1)
    restored = np.moveaxis(np.asarray(restored, np.float64), axis, 0).reshape(channels, -1)
    power = np.mean(reference**2, axis=1)
    noise = float(np.mean((reference - restored) ** 2))
    live = power[power > 0]  # channels a ReLU silenced on every image carry no signal to lose
    if not live.size:
        return 0.0, 0.0
    return noise / float(np.median(live)), noise / float(np.mean(power))


def quantizer_error(values: np.ndarray, scale: float, zero_point: int, dtype, axis: int) -> tuple[float, float]:
    """SQNR in dB (typical channel, whole tensor) of one per-tensor quantizer on float values."""
    low, high = _INTEGER_RANGES[np.dtype(dtype)]
    restored = (np.clip(np.rint(values / scale) + zero_point, low, high) - zero_point) * scale
    mean, worst = channel_noise(values, restored, axis)
    return _db(mean), _db(worst)


def _db(noise_ratio: float) -> float:
    return math.inf if noise_ratio <= 0 else -10.0 * math.log10(noise_ratio)


def onnx_layer_errors(prepared: Path, int8_path: Path, images: np.ndarray, info: ModelInfo) -> list[LayerError]:
    """Per-tensor error of a QDQ model quantized from the float graph ``prepared``."""
    graph = onnx.load(prepared).graph
    sample = images_within(float_activation_bytes(graph), DIAGNOSIS_SAMPLES)
    activations = _onnx_activations(prepared, images[:sample], info)
    ops = [Op(node.name, node.op_type, tuple(node.input), tuple(node.output)) for node in graph.node]
    producers = {output: op for op in ops for output in op.outputs}
    quantized = onnx.load(int8_path).graph
    constants = {init.name: numpy_helper.to_array(init) for init in quantized.initializer}
    errors = []
    for node in quantized.node:
        tensor = node.input[0] if node.op_type == "QuantizeLinear" else None
        if tensor not in producers or tensor not in activations or node.input[1] not in constants:
            continue
        scale, zero_point = constants[node.input[1]], constants.get(node.input[2], np.uint8(0))
        if scale.size != 1:
            continue
        values = activations[tensor]
        mean_db, worst_db = quantizer_error(
            values, float(scale), int(zero_point), zero_point.dtype, min(1, values.ndim - 1)
        )
        errors.append(LayerError(tensor, producers[tensor].kind, mean_db, worst_db, quantizer_group(ops, tensor)))
    return errors


def _onnx_activations(model: Path, images: np.ndarray, info: ModelInfo) -> dict[str, np.ndarray]:
    """Every float intermediate tensor of ``model`` on ``images``, with its shape (N first).

    (ONNX Runtime's ``qdq_loss_debug`` flattens them, losing the channel axis.)"""
    import onnxruntime as ort

    proto = onnx.load(model)
    floats = {v.name for v in proto.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    outputs = {o.name for o in proto.graph.output}
    for node in proto.graph.node:
        for name in node.output:
            if name in floats and name not in outputs:
                proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    batches = [dict(zip(names, session.run(None, feed))) for feed in iter(PixelReader(images, info).get_next, None)]
    return {name: np.concatenate([batch[name] for batch in batches]) for name in names}


def tflite_layer_errors(calibrated: bytes, quantized: bytes, images: np.ndarray, info: ModelInfo) -> list[LayerError]:
    """Per-tensor error of a full-integer TFLite model quantized from the float model ``calibrated``."""
    from ai_edge_litert.interpreter import Interpreter

    from export.litert import FloatTensors

    float_model = FloatTensors(calibrated)
    float_model.run(normalize(images[: images_within(float_model.bytes_per_image, DIAGNOSIS_SAMPLES)], info))
    names = float_model.indices
    index_names = {index: name for name, index in names.items()}
    ops = [  # named by their first output tensor, as denylisted_nodes wants them
        Op(
            index_names[op["outputs"][0]],
            op["op_name"],
            tuple(index_names.get(i, "") for i in op["inputs"]),
            tuple(index_names[o] for o in op["outputs"]),
        )
        for op in float_model.ops
    ]
    producers = {output: op for op in ops for output in op.outputs}
    errors = []
    for tensor in Interpreter(model_content=quantized).get_tensor_details():
        parameters = tensor["quantization_parameters"]
        if tensor["dtype"] not in (np.int8, np.uint8) or len(parameters["scales"]) != 1 or tensor["name"] not in names:
            continue
        producer = producers.get(tensor["name"])
        if producer is None:  # the model's input
            continue
        values = float_model.tensor(tensor["name"])
        mean_db, worst_db = quantizer_error(
            values, float(parameters["scales"][0]), int(parameters["zero_points"][0]), tensor["dtype"], -1
        )
        errors.append(
            LayerError(tensor["name"], producer.kind, mean_db, worst_db, quantizer_group(ops, tensor["name"]))
        )
    return errors


def short_name(name: str) -> str:
    """A readable tensor name: TFLite joins the names of fused ops with ';', the first says enough."""
    return name.split(";")[0]


def worst_first(errors: list[LayerError]) -> list[LayerError]:
    return sorted(errors, key=lambda e: e.sqnr_db)
