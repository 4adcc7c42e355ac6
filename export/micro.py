"""Running full-integer TFLite on TFLite Micro's own kernels, through the ``tflite-micro`` wheel.

A microcontroller runs the same flatbuffer as LiteRT, but with TFLite Micro's reference kernels,
a fixed batch of one and every tensor inside one preallocated block of RAM, the tensor arena.
What a board needs is therefore measured here on those kernels: whether every operator has a
kernel, the smallest arena with which the model loads and runs, and what it answers.

TFLite Micro names what went wrong only on the native stderr ("Didn't find op for builtin opcode
'GELU'"); it is captured and turned into one line.
"""

from __future__ import annotations

import functools
import re
import tempfile
from pathlib import Path

import numpy as np
from tflite_micro.python.tflite_micro import runtime as tflm
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from export.errors import ExportError
from export.integers import to_integers, to_reals
from runtime.metadata import ModelInfo
from runtime.native_logs import native_stderr
from runtime.preprocess import normalize

ARENA_STEP = 16  # TFLite Micro aligns its allocations to 16 bytes
LARGEST_ARENA = 64 * 1024 * 1024  # past this, no microcontroller is the target any more
MISSING_KERNEL = re.compile(r"Didn't find op for builtin opcode '(\w+)'")
_OPERATOR_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}


class MicroError(ExportError):
    """The model cannot run on TFLite Micro: a missing kernel, or no arena that fits."""


def operators(model: bytes) -> list[str]:
    """The builtin operators the model uses, in the order of their first use (custom ops by name)."""
    tree = tflm.convert_bytearray_to_object(bytearray(model))
    codes = tree.operatorCodes or []
    names = []
    for subgraph in tree.subgraphs or []:
        for op in subgraph.operators or []:
            code = codes[op.opcodeIndex]
            builtin = tflm.get_builtin_code_from_operator_code(code)
            name = code.customCode.decode() if builtin == schema.BuiltinOperator.CUSTOM else _OPERATOR_NAMES[builtin]
            if name not in names:
                names.append(name)
    return names


def _interpreter(model: bytes, arena: int) -> tuple[tflm.Interpreter | None, list[str]]:
    """An interpreter that has run once on a zero input, or None and what TFLite Micro said."""
    said: list[str] = []
    try:
        with native_stderr(said):
            interpreter = tflm.Interpreter.from_bytes(model, arena_size=arena)
            entry = interpreter.get_input_details(0)
            interpreter.set_input(np.zeros(entry["shape"], entry["dtype"]), 0)
            interpreter.invoke()
    except (RuntimeError, ValueError):
        return None, said
    return interpreter, said


def stripped(model: bytes) -> bytes:
    """``model`` without the strings only a debugger reads (TFLite's ``strip_strings``: tensor and
    subgraph names, signature defs, the description), re-serialized by TFLite Micro's own aligner
    so that every buffer keeps the 16-byte alignment its kernels expect. Names are ~6% of a small
    model's flash (2.8 KB of edge_micro's 52 KB on Fashion-MNIST); the arithmetic is untouched."""
    from tensorflow.lite.tools import flatbuffer_utils
    from tflite_micro.tensorflow.lite.micro.tools import tflite_flatbuffer_align_wrapper

    tree = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    flatbuffer_utils.strip_strings(tree)
    with tempfile.TemporaryDirectory() as work:
        packed, aligned = Path(work, "packed.tflite"), Path(work, "aligned.tflite")
        packed.write_bytes(flatbuffer_utils.convert_object_to_bytearray(tree))
        tflite_flatbuffer_align_wrapper.align_tflite_model(str(packed), str(aligned))
        return aligned.read_bytes()


def check_kernels(model: bytes, name: str) -> None:
    """MicroError with one line naming every operator TFLite Micro has no kernel for."""
    interpreter, said = _interpreter(model, LARGEST_ARENA)
    missing = sorted({m.group(1) for line in said if (m := MISSING_KERNEL.search(line))})
    if missing:
        used = ", ".join(operators(model))
        raise MicroError(f"{name}: TFLite Micro has no kernel for {', '.join(missing)} (the model uses: {used})")
    if interpreter is None:
        detail = next((line.strip() for line in said if line.strip()), "no reason given")
        raise MicroError(f"{name}: TFLite Micro cannot run it within {LARGEST_ARENA // 2**20} MiB ({detail})")


@functools.lru_cache(maxsize=8)
def smallest_arena(model: bytes) -> int:
    """The smallest tensor arena, to ``ARENA_STEP`` bytes, with which the model loads and runs.

    Measured on this 64-bit host: the arena also holds TFLite Micro's own structs, whose pointers
    are half as wide on a 32-bit microcontroller, so the figure is an upper bound there. A bisection
    of some twenty loads, kept per file: the C header, the manifest and the memory profile all
    state it."""
    high = 4 * 1024
    while _interpreter(model, high)[0] is None:
        if high >= LARGEST_ARENA:
            raise MicroError(f"no tensor arena up to {LARGEST_ARENA // 2**20} MiB runs this model")
        high *= 2
    low = 0  # fails (or is nothing)
    while high - low > ARENA_STEP:
        middle = (low + high) // 2 // ARENA_STEP * ARENA_STEP
        if _interpreter(model, middle)[0] is None:
            low = middle
        else:
            high = middle
    return high


class MicroModel:
    """A full-integer TFLite model on TFLite Micro's kernels, fed uint8 NHWC pixels, returning
    float probabilities: one image per invoke, as on a device."""

    def __init__(self, path: Path | str, info: ModelInfo) -> None:
        self.info = info
        model = Path(path).read_bytes()
        interpreter, _ = _interpreter(model, LARGEST_ARENA)
        if interpreter is None:
            check_kernels(model, Path(path).name)  # raises, naming why
        self.interpreter = interpreter
        self._input = interpreter.get_input_details(0)
        self._output = interpreter.get_output_details(0)

    @property
    def entries(self) -> tuple[dict, dict]:
        """TFLite Micro's details of the input and the output tensor."""
        return self._input, self._output

    @staticmethod
    def parameters(entry: dict) -> tuple[float, int]:
        """A tensor's scale and zero point."""
        parameters = entry["quantization_parameters"]
        return float(parameters["scales"][0]), int(parameters["zero_points"][0])

    def quantize(self, pixels: np.ndarray) -> np.ndarray:
        """The model's integer input for uint8 pixels, as the device's code computes it."""
        return to_integers(normalize(pixels, self.info), *self.parameters(self._input), self._input["dtype"])

    def raw(self, quantized: np.ndarray) -> np.ndarray:
        """The integer outputs for a batch of integer inputs, one invoke per image."""
        outputs = []
        for image in quantized:
            self.interpreter.set_input(image[None], 0)
            self.interpreter.invoke()
            outputs.append(np.array(self.interpreter.get_output(0)).reshape(-1))
        return np.stack(outputs) if outputs else np.zeros((0, self._output["shape"][-1]), self._output["dtype"])

    def dequantize(self, values: np.ndarray) -> np.ndarray:
        return to_reals(values, *self.parameters(self._output))

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities for an NxHxWxC uint8 batch."""
        return self.dequantize(self.raw(self.quantize(pixels)))
