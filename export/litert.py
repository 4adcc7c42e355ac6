"""Running TFLite artifacts with LiteRT (ai_edge_litert), for the parity gate and the benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from export.integers import to_integers, to_reals
from runtime.metadata import ModelInfo
from runtime.native_logs import native_notices_filtered
from runtime.preprocess import normalize


class LiteRTModel:
    """A TFLite model fed uint8 NHWC pixels, returning float probabilities.

    Quantized inputs and outputs are converted with the scale and zero point stored in the file.
    Not thread-safe: LiteRT interpreters hold their tensors. ``reference_kernels`` runs TFLite's
    reference kernels instead of the optimized ones: the arithmetic TFLite Micro's kernels port.
    """

    def __init__(
        self, path: Path | str, info: ModelInfo, threads: int | None = None, reference_kernels: bool = False
    ) -> None:
        self.path = Path(path)
        self.info = info
        resolver = OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO
        with native_notices_filtered():  # LiteRT announces its XNNPACK delegate on stderr
            self.interpreter = Interpreter(
                model_path=str(self.path), num_threads=threads, experimental_op_resolver_type=resolver
            )
            self._input = self.interpreter.get_input_details()[0]
            self._output = self.interpreter.get_output_details()[0]
            self._batch = None
            self._resize(1)

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            self.interpreter.resize_tensor_input(self._input["index"], [batch, *self._input["shape"][1:]])
            self.interpreter.allocate_tensors()
            self._batch = batch

    def _quantize(self, batch: np.ndarray) -> np.ndarray:
        dtype = self._input["dtype"]
        if dtype == np.float32:
            return batch
        return to_integers(batch, *self._input["quantization"], dtype)

    @property
    def output_step(self) -> float:
        """The probability one quantization step of the output is worth (0 for a float output)."""
        return float(self._output["quantization"][0])

    def _dequantize(self, values: np.ndarray) -> np.ndarray:
        if values.dtype == np.float32:
            return values
        return to_reals(values, *self._output["quantization"])

    def run(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Probabilities for an NxHxWxC uint8 batch."""
        outputs = [
            self._dequantize(self.raw(self._quantize(normalize(pixels[start : start + batch_size], self.info))))
            for start in range(0, len(pixels), batch_size)
        ]
        return np.concatenate(outputs)

    def raw(self, inputs: np.ndarray) -> np.ndarray:
        """The output tensor for one batch of input tensors, as the file's types hold them."""
        self._resize(len(inputs))
        self.interpreter.set_tensor(self._input["index"], inputs)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output["index"])


class FloatTensors:
    """A float TFLite model run with every intermediate tensor kept, to read activations by name.

    Without XNNPACK, every op stays a graph node with its own kind and outputs (a delegate would
    swallow them into DELEGATE nodes), which the per-layer report and percentile ranges need.
    """

    def __init__(self, content: bytes) -> None:
        with native_notices_filtered():
            self.interpreter = Interpreter(
                model_content=content,
                experimental_preserve_all_tensors=True,
                experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            )
        self.interpreter.allocate_tensors()
        self.indices = {t["name"]: t["index"] for t in self.interpreter.get_tensor_details()}
        self.ops = self.interpreter._get_ops_details()  # noqa: SLF001 (the graph's structure; TF's own debugger reads it so)
        self.bytes_per_image = self._op_output_bytes()

    def _op_output_bytes(self) -> int:
        """The bytes of one image's float op outputs (weights excluded), at the file's batch of one."""
        outputs = {index for op in self.ops for index in op["outputs"]}
        details = self.interpreter.get_tensor_details()
        return sum(4 * int(np.prod(t["shape"])) for t in details if t["index"] in outputs and t["dtype"] == np.float32)

    def run(self, inputs: np.ndarray) -> None:
        """Run one batch of (normalized) input tensors; :meth:`tensor` then reads any tensor of it."""
        entry = self.interpreter.get_input_details()[0]
        self.interpreter.resize_tensor_input(entry["index"], list(inputs.shape))
        self.interpreter.allocate_tensors()
        self.interpreter.set_tensor(entry["index"], inputs)
        self.interpreter.invoke()

    def tensor(self, name: str) -> np.ndarray:
        return self.interpreter.get_tensor(self.indices[name])
