"""Running TFLite artifacts with LiteRT (ai_edge_litert), for the parity gate and the benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from runtime.metadata import ModelInfo
from runtime.native_logs import native_notices_filtered
from runtime.preprocess import normalize


class LiteRTModel:
    """A TFLite model fed uint8 NHWC pixels, returning float probabilities.

    Quantized inputs and outputs are converted with the scale and zero point stored in the file.
    Not thread-safe: LiteRT interpreters hold their tensors.
    """

    def __init__(self, path: Path | str, info: ModelInfo, threads: int | None = None) -> None:
        self.path = Path(path)
        self.info = info
        with native_notices_filtered():  # LiteRT announces its XNNPACK delegate on stderr
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
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
        scale, zero = self._input["quantization"]
        limits = np.iinfo(dtype)
        return np.clip(np.rint(batch / scale + zero), limits.min, limits.max).astype(dtype)

    def _dequantize(self, values: np.ndarray) -> np.ndarray:
        if values.dtype == np.float32:
            return values
        scale, zero = self._output["quantization"]
        return (values.astype(np.float32) - zero) * scale

    def run(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Probabilities for an NxHxWxC uint8 batch."""
        outputs = []
        for start in range(0, len(pixels), batch_size):
            chunk = pixels[start : start + batch_size]
            self._resize(len(chunk))
            self.interpreter.set_tensor(self._input["index"], self._quantize(normalize(chunk, self.info)))
            self.interpreter.invoke()
            outputs.append(self._dequantize(self.interpreter.get_tensor(self._output["index"])))
        return np.concatenate(outputs)
