"""Post-training int8 quantization of both formats, with the knobs accuracy control turns.

An :class:`Int8Recipe` says how: the calibration method and sample size, symmetric activations,
cross-layer equalization first, 16-bit activations, and which ops stay in float. Calibration is
the slow part, so it runs once per (model, sample, method) and is reused when only the float ops
change:

* ONNX: ONNX Runtime static QDQ quantization (per-channel int8 weights on a 7-bit range, uint8
  activations) with its calibration cache; float ops are ``nodes_to_exclude``. The 7-bit range
  (``reduce_range``) is ONNX Runtime's documented cure for saturation: on x86 CPUs without VNNI
  (AVX2, AVX-512F) it multiplies uint8 by int8 with VPMADDUBSW, whose 16-bit sums of two products
  saturate, and depthwise and squeeze-excite networks then drift far from the float model.
  Measured on this 2-core AVX2 CPU, MobileNetV2 alpha 0.35 on the test patterns: probability drift
  p99 0.96 with full 8-bit weights, 0.040 with ``reduce_range``, 0.025 with uint8 weights (int8
  TFLite: 0.029); batch-1 latency of the CIFAR-10 release model 1.34 / 1.32 / 1.78 ms (the three
  measured interleaved on a busy host), and its accuracy 90.60% / 90.62% / 90.56%. So 7-bit weights
  keep the speed of the int8 kernels and nearly all of the accuracy of uint8 ones. With 16-bit
  activations no int8 kernel runs (see below), nothing saturates, and the 7-bit range only doubled
  the weights' error: those artifacts get the full 8-bit range (:func:`reduced_range`).
  The first convolution, reading the image's 1 or 3 channels, always stays float (faster, see
  :meth:`OnnxQuantizer.first_conv`).
* TFLite: the converter calibrates once (``_experimental_calibrate_only``, as its own
  quantization debugger does) and ``mlir_quantize`` quantizes with uint8 input and output;
  float ops are ``denylisted_nodes`` (output tensor names). The TFLite calibrator only records
  min/max; percentile calibration clips those ranges afterwards (``export.tflite_percentile``),
  entropy and symmetric activations apply to ONNX alone.

16-bit activations (int8 weights, int16 activations: TFLite's "16x8" scheme, ONNX Runtime's
uint16 QDQ) are the remedy for networks whose loss is spread over every activation rather than
concentrated in a few tensors, as in squeeze-excite and hard-swish networks trained briefly: one
per-tensor 8-bit scale cannot serve channels whose ranges differ by orders of magnitude, and 256
times finer steps can. Weights stay int8 (the file stays small) and the model stays
integer-only where kernels exist: LiteRT has 16x8 kernels for most ops (the converter keeps the
others, e.g. HARD_SWISH, in float between quantize and dequantize ops); ONNX Runtime's CPU
provider has no 16-bit kernels and runs such a graph through its float kernels, several times
slower than int8 and than fp32 (measured per artifact in the report). ONNX Runtime writes 16-bit
QuantizeLinear at opset 21, so such an ONNX file has opset 21 whatever ``--opset`` said.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm import tqdm

from export.memory import images_within
from export.onnx_export import INPUT_NAME, set_metadata, shorten_added_names
from runtime.metadata import ModelInfo
from runtime.native_logs import native_notices_filtered
from runtime.preprocess import normalize

log = logging.getLogger(__name__)

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
MAX_CALIBRATION_BATCH = 64
CALIBRATION_STRIDE_IMAGES = 256  # images whose activations ONNX Runtime's calibrator holds at once, at most
REDUCE_RANGE = True  # 7-bit weights: see the module docstring (8-bit sums saturate on x86 without VNNI)


@dataclass(frozen=True)
class Int8Recipe:
    """How to quantize to int8; the default is plain post-training quantization."""

    method: str = "minmax"
    symmetric: bool = False  # symmetric activation ranges (ONNX)
    samples: int | None = None  # calibration images; None: the export's --calibration-samples
    equalize: bool = False  # cross-layer equalization before quantizing
    activation_bits: int = 8  # 16: int16 activations (the 16x8 scheme)
    float_ops: tuple[str, ...] = field(default=())  # ops kept in float (format-specific names)

    def describe(self) -> dict:
        """What differs from plain PTQ, for the manifest and the metadata."""
        plain = Int8Recipe(method=self.method)
        found = {"method": self.method}
        for name in ("symmetric", "samples", "equalize", "activation_bits", "float_ops"):
            if getattr(self, name) != getattr(plain, name):
                value = getattr(self, name)
                found[name] = list(value) if isinstance(value, tuple) else value
        return found


def reduced_range(recipe: Int8Recipe) -> bool:
    """Whether ``recipe``'s ONNX weights use the 7-bit range: only where ONNX Runtime's int8 kernels
    multiply them (8-bit activations). With 16-bit activations they run through float kernels and
    the full range halves the weight error: the zoo's EfficientNetV2B0 drifted p99 0.054 with 7-bit
    weights, 0.023 with 8-bit ones (int8 TFLite 16x8: 0.021), at the same accuracy within 0.2 pp."""
    return REDUCE_RANGE and recipe.activation_bits == 8


def calibration_batch_size(samples: int, largest: int = MAX_CALIBRATION_BATCH) -> int:
    """The largest batch size up to ``largest`` that divides the sample evenly.

    ONNX Runtime's histogram calibrators (entropy, percentile) stack every batch's activations
    into one array, which fails when the last batch is shorter than the others."""
    return max(d for d in range(1, min(largest, samples) + 1) if samples % d == 0)


class PixelReader(CalibrationDataReader):
    """Feeds calibration images through the runtime's own normalization, in equal batches, a
    stride of batches at a time (see :func:`calibration_stride`)."""

    def __init__(self, pixels: np.ndarray, info: ModelInfo, stride_images: int = CALIBRATION_STRIDE_IMAGES) -> None:
        size = calibration_batch_size(len(pixels))
        self._batches = [pixels[i : i + size] for i in range(0, len(pixels), size)]
        self._info = info
        self.stride = calibration_stride(len(self._batches), size, stride_images)
        self._progress = tqdm(total=len(self._batches), desc="calibrating", unit=" batch", leave=False)
        self.set_range(0, len(self._batches))

    def set_range(self, start_index: int, end_index: int) -> None:
        """Read batches ``start_index`` to ``end_index`` next (ONNX Runtime's strided calibration)."""
        self._iterator = iter(self._batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iterator, None)
        if batch is None:
            return None
        self._progress.update()
        return {INPUT_NAME: normalize(batch, self._info)}

    def __len__(self) -> int:
        return len(self._batches)


def calibration_stride(batches: int, batch_size: int, images: int = CALIBRATION_STRIDE_IMAGES) -> int:
    """How many batches ONNX Runtime's calibrator runs before reducing them to ranges/histograms.

    It keeps every activation of every image it has run until it reduces them: percentile
    calibration of the zoo's EfficientNetB0 peaked at 3.1 GB for 1,000 images in one pass. A stride of about ``images``
    images bounds that (it must divide the number of batches); :func:`stride_images` sizes it to the model."""
    return max(d for d in range(1, batches + 1) if batches % d == 0 and d * batch_size <= max(images, batch_size))


def float_activation_bytes(graph: onnx.GraphProto) -> int:
    """The bytes of one image's float intermediate tensors (those with known shapes past the batch axis)."""
    total = 0
    for info in graph.value_info:
        tensor = info.type.tensor_type
        dims = [d.dim_value for d in tensor.shape.dim][1:]
        if tensor.elem_type == onnx.TensorProto.FLOAT and dims and all(dims):
            total += 4 * math.prod(dims)
    return total


def stride_images(graph: onnx.GraphProto) -> int:
    """Images per calibration stride for this graph: up to ``CALIBRATION_STRIDE_IMAGES``, fewer where
    their activations would not fit the export's activation budget (Xception at 71 px: 38)."""
    return images_within(float_activation_bytes(graph), CALIBRATION_STRIDE_IMAGES)


class OnnxQuantizer:
    """Static QDQ quantization of one fp32 ONNX model, calibrating once per method and symmetry."""

    def __init__(self, fp32: onnx.ModelProto, workdir: Path) -> None:
        self.workdir = workdir
        self.prepared = workdir / f"prepared-{id(self)}.onnx"
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "fp32.onnx"
            onnx.save(fp32, source)
            quant_pre_process(str(source), str(self.prepared), skip_symbolic_shape=False)
        graph = onnx.load(self.prepared).graph
        self.float_first_conv = self.first_conv(graph)
        self.stride_images = stride_images(graph)

    @staticmethod
    def first_conv(graph: onnx.GraphProto) -> str | None:
        """The first convolution, if it reads the image itself (at most 3 input channels).

        ONNX Runtime's int8 kernels handle so few input channels poorly: measured at batch 1 and one
        thread, keeping this one layer in float saved 12 us of 190 on Fashion-MNIST and 3 of 511 on
        CIFAR-10, at no cost in accuracy and a few hundred bytes of weights."""
        weights = {init.name: init for init in graph.initializer}
        conv = next((node for node in graph.node if node.op_type == "Conv"), None)
        if conv is None or conv.input[1] not in weights or weights[conv.input[1]].dims[1] > 3:
            return None
        return conv.name

    def quantize(self, calibration: np.ndarray, info: ModelInfo, recipe: Int8Recipe) -> onnx.ModelProto:
        prepared = onnx.load(self.prepared).graph
        unknown = set(recipe.float_ops) - {node.name for node in prepared.node}
        if unknown:  # ONNX Runtime would ignore them and quantize everything: a fallback that does nothing
            raise ValueError(f"float ops not in this graph: {', '.join(sorted(unknown)[:3])}")
        cache = self.workdir / f"{self.prepared.stem}-{recipe.method}-{recipe.symmetric}-{len(calibration)}.json"
        output = self.workdir / f"{self.prepared.stem}-int8.onnx"
        reader = PixelReader(calibration, info, self.stride_images)
        quantize_static(
            str(self.prepared),
            str(output),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt16 if recipe.activation_bits == 16 else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            reduce_range=reduced_range(recipe),
            calibrate_method=CALIBRATION_METHODS[recipe.method],
            nodes_to_exclude=list(recipe.float_ops) + ([self.float_first_conv] if self.float_first_conv else []),
            calibration_cache_path=str(cache),
            extra_options={"ActivationSymmetric": recipe.symmetric, "CalibStridedMinMax": reader.stride},
        )
        proto = onnx.load(output)
        shorten_added_names(proto, prepared)
        set_metadata(proto, info)
        onnx.checker.check_model(proto, full_check=True)
        return proto


def representative(calibration: np.ndarray, info: ModelInfo) -> Callable[[], Iterator[list[np.ndarray]]]:
    """The TFLite converter's calibration data: one image at a time, normalized by the runtime."""

    def generate() -> Iterator[list[np.ndarray]]:
        for image in calibration:
            yield [normalize(image[None], info)]

    return generate


def calibrated_tflite(model: keras.Model, calibration: np.ndarray, info: ModelInfo) -> bytes:
    """A float TFLite model carrying calibration statistics, ready for :func:`tflite_int8`."""
    converter = _quantizing_converter(model, calibration, info)
    converter._experimental_calibrate_only = True  # noqa: SLF001 (the quantization debugger's own route)
    return _converted(converter)


def tflite_16x8(model: keras.Model, calibration: np.ndarray, info: ModelInfo) -> bytes:
    """TFLite with int8 weights and int16 activations, input and output (the "16x8" scheme); ops
    without 16x8 kernels stay float. The 16x8 quantizer calibrates by itself (it cannot take the
    calibrated model :func:`tflite_int8` shares) and has no list of float ops. LayerNormalization
    becomes an int16 op LiteRT cannot run unless :mod:`export.int16_kernels` rewrote it first."""
    import tensorflow as tf

    converter = _quantizing_converter(model, calibration, info)
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
        tf.lite.OpsSet.TFLITE_BUILTINS,  # ops without 16x8 kernels (HARD_SWISH) stay float
    ]
    converter.inference_input_type = converter.inference_output_type = tf.int16
    return _converted(converter)


def _quantizing_converter(model: keras.Model, calibration: np.ndarray, info: ModelInfo):
    """A TFLite converter of ``model`` set to quantize, calibrating on ``calibration``."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative(calibration, info)
    return converter


def _converted(converter) -> bytes:
    with contextlib.redirect_stdout(io.StringIO()), native_notices_filtered():  # Keras prints its signature
        return converter.convert()


def tflite_int8(calibrated: bytes, float_ops: tuple[str, ...] = (), io_type: str = "uint8") -> bytes:
    """Full-integer TFLite from a calibrated model, with ``io_type`` ("uint8" or "int8") input and
    output; ``float_ops`` stay float."""
    import tensorflow as tf
    from tensorflow.lite.python import convert

    with native_notices_filtered():
        return convert.mlir_quantize(
            calibrated,
            input_data_type=tf.as_dtype(io_type),
            output_data_type=tf.as_dtype(io_type),
            denylisted_nodes=list(float_ops) or None,
        )
