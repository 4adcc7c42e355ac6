"""Microcontroller artifacts: full-integer TFLite for TensorFlow Lite Micro, with its C++ source.

The file is the int8 TFLite that post-training quantization makes (``export.quantize``), with
int8 input and output by default (``micro_io``: "uint8" for boards whose camera code wants
those), stripped of the strings only a debugger reads, and only operators TFLite Micro has
kernels for. Beside it travel its description (JSON, as for TFLite) and ``<stem>_data.cc`` /
``<stem>_data.h``: the flatbuffer as a C array, with the constants a firmware needs (``export.c_array``).

The gate runs the artifact on TFLite Micro's own kernels (``export.micro``): one image per
invoke, as on a device. When the full test split would take longer than ``micro_gate_seconds``, it
runs a seeded subset, and the gate's bound is computed on the images it saw. On a sample of those
images LiteRT's reference kernels, whose integer arithmetic TFLite Micro's kernels port, must give
the same answers (their outputs may differ by a few rounding steps).
The manifest records the flash (file bytes), the measured tensor arena and the operator list.

A float fallback has no place on a microcontroller, so accuracy control only recalibrates and
equalizes. Not in the default formats unless the model fits a typical board (``fits_default``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from export.formats.base import ArtifactSpec, BenchRunner, Builder, Format, Loaded, Predict
from export.formats.tflite import TFLITE
from runtime.metadata import ModelInfo

if TYPE_CHECKING:
    from export.diagnose import LayerError
    from export.quantize import Int8Recipe

log = logging.getLogger(__name__)

TYPICAL_BOARD_PARAMETERS = 250_000  # int8 weights in 256 KB of flash, the smallest of MLPerf Tiny's boards
MIN_GATE_IMAGES = 1000  # below this a subset's bound on the accuracy drop is too loose to say much
TIMING_IMAGES = 8
IO_TYPES = ("int8", "uint8")
# TFLite Micro's kernels port LiteRT's reference arithmetic, yet not bit for bit: on the test CNN,
# 18 of 10,000 outputs were up to 9 steps (of 1/256) apart. Answers may differ on near-ties only:
# beyond the share of confident answers the int8 gate lets go, it is a kernel's fault.
MAX_KERNEL_DISAGREEMENT = 0.005
KERNEL_CHECK_IMAGES = 1000


class TFLiteMicroFormat(Format):
    title = "TFLite Micro"
    name = "tflite_micro"
    suffix = "_micro.tflite"
    layout = "NHWC"
    precisions = ("int8",)
    default = False
    options = {"micro_io": "int8", "micro_gate_seconds": 600.0}
    bench_runners = (
        BenchRunner(
            "tflm_{precision}",
            "TFLite Micro {precision}",
            "tflm",
            "tflite_micro",
            "tflite_micro.python.tflite_micro.runtime",
        ),
    )

    def checked_options(self, given: dict) -> dict:
        options = super().checked_options(given)
        if options["micro_io"] not in IO_TYPES:
            raise ValueError(
                f"--micro-io {options['micro_io']}: TFLite Micro's input and output are {' or '.join(IO_TYPES)}"
            )
        seconds = options["micro_gate_seconds"]
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < float("inf"):
            raise ValueError(f"--micro-gate-seconds {seconds}: a positive number of seconds")
        return options

    @property
    def artifacts(self) -> tuple[ArtifactSpec, ...]:
        """Post-training int8 only (a QAT model leaves as ONNX and TFLite)."""
        return tuple(spec for spec in super().artifacts if spec.quantization == "ptq")

    def fits_default(self, parameters: int) -> bool:
        """Whether the default export includes this format for a model of ``parameters``."""
        return parameters <= TYPICAL_BOARD_PARAMETERS

    def sidecars(self, filename: str) -> list[str]:
        stem = filename.removesuffix(".tflite")
        return [filename + ".json", f"{stem}_data.cc", f"{stem}_data.h"]

    def write_sidecars(self, path: Path, info: ModelInfo) -> None:
        from export.c_array import Quantization, header, source
        from export.micro import MicroModel, smallest_arena

        TFLITE.write_sidecars(path, info)  # the JSON description, as for TFLite
        _, source_name, header_name = self.sidecars(path.name)
        model = path.read_bytes()
        micro = MicroModel(path, info)
        inputs, outputs = (Quantization(*micro.parameters(e), e["dtype"].__name__) for e in micro.entries)
        stem = path.name.removesuffix(".tflite")
        path.with_name(header_name).write_text(header(stem, len(model), smallest_arena(model), info, inputs, outputs))
        path.with_name(source_name).write_text(source(stem, model, info))

    def read_info(self, path: Path) -> ModelInfo:
        return TFLITE.read_info(path)

    def remedies(self, spec: ArtifactSpec) -> tuple[str, ...]:
        return ("calibration", "equalization")

    def calibration_choices(self, plain: Int8Recipe) -> list[tuple[str, Int8Recipe]]:
        return TFLITE.calibration_choices(plain)  # the same calibrated model

    def build(self, builder: Builder, spec: ArtifactSpec, recipe: Int8Recipe, info: ModelInfo, path: Path) -> None:
        from export.micro import check_kernels, stripped

        data = stripped(self.quantized(builder, recipe, info))
        check_kernels(data, spec.filename)
        path.write_bytes(data)
        self.write_sidecars(path, info)

    def quantized(self, builder: Builder, recipe: Int8Recipe, info: ModelInfo) -> bytes:
        """The full-integer file before its strings are stripped (its tensor names are what the
        per-layer error report matches against the float model's)."""
        from export.quantize import tflite_int8

        return tflite_int8(TFLITE.calibrated(builder, recipe, info), io_type=builder.options(self.name)["micro_io"])

    def predictor(self, path: Path, info: ModelInfo, threads: int | None = None) -> Predict:
        """TFLite Micro's kernels fed the images resized by the runtime's own code (one thread)."""
        from export.micro import MicroModel
        from runtime.preprocess import to_pixels

        model = MicroModel(path, info)
        return lambda images: model.run(to_pixels(images, info))

    def gate_indices(self, builder: Builder, spec: ArtifactSpec, path: Path, count: int) -> np.ndarray | None:
        """The full test split if TFLite Micro gets through it within ``micro_gate_seconds``, else a
        seeded subset that does (at least ``MIN_GATE_IMAGES``)."""
        from export.sampling import gate_subset

        run = self.predictor(path, builder.info_for(spec))
        images = builder.source.data.x_test[:TIMING_IMAGES]
        started = time.perf_counter()
        run(images)
        per_image = (time.perf_counter() - started) / max(len(images), 1)
        budget = builder.options(self.name)["micro_gate_seconds"]
        if per_image * count <= budget:
            return None
        size = min(count, max(MIN_GATE_IMAGES, int(budget / per_image)))
        log.info(
            "%s: %.0f ms an image on TFLite Micro's kernels; the gate runs %d of %d test images "
            "(--micro-gate-seconds %g)",
            path.name,
            1000 * per_image,
            size,
            count,
            budget,
        )
        return gate_subset(count, size, builder.seed)

    def target_figures(
        self, path: Path, info: ModelInfo, pixels: np.ndarray, probabilities: np.ndarray
    ) -> tuple[dict, list[str]]:
        """Flash, arena and operators; and whether LiteRT's reference kernels give the answers TFLite
        Micro's gave (``probabilities`` on ``pixels``), on a seeded sample of those images."""
        from export.litert import LiteRTModel
        from export.micro import operators, smallest_arena
        from export.sampling import gate_subset

        model = path.read_bytes()
        chosen = gate_subset(len(pixels), min(len(pixels), KERNEL_CHECK_IMAGES), 0)
        litert = LiteRTModel(path, info, reference_kernels=True)
        on_litert, on_micro = litert.run(pixels[chosen]), probabilities[chosen]
        steps = np.rint(np.abs(on_micro - on_litert) / litert.output_step).max(axis=1, initial=0)
        answers = int(np.sum(on_micro.argmax(1) != on_litert.argmax(1)))
        figures = {
            "flash_bytes": len(model),
            "arena_bytes": smallest_arena(model),
            "operators": operators(model),
            "litert_match": {
                "images": len(chosen),
                "kernels": "reference",
                "identical": round(float(np.mean(steps == 0)), 4) if len(chosen) else 1.0,
                "max_steps": int(steps.max(initial=0)),
                "answers_differ": answers,
            },
        }
        failures = []
        if answers > MAX_KERNEL_DISAGREEMENT * len(chosen):
            failures.append(
                f"TFLite Micro's kernels and LiteRT's reference kernels give different answers on {answers} of "
                f"{len(chosen)} images (outputs up to {int(steps.max(initial=0))} quantization steps apart)"
            )
        return figures, failures

    def working_memory(self, path: Path) -> int | None:
        """On a microcontroller every tensor lives in the arena: its measured size is the figure."""
        from export.micro import smallest_arena

        return smallest_arena(path.read_bytes())

    def layer_errors(
        self, builder: Builder, spec: ArtifactSpec, recipe: Int8Recipe, path: Path, images: np.ndarray
    ) -> list[LayerError]:
        from export.diagnose import tflite_layer_errors

        info = builder.info_for(spec)
        calibrated = TFLITE.calibrated(builder, recipe, info)
        return tflite_layer_errors(calibrated, self.quantized(builder, recipe, info), images, info)

    def load_for_bench(self, runner: BenchRunner, path: Path, threads: int) -> Loaded:
        from export.micro import MicroModel

        info = self.read_info(path)
        model = MicroModel(path, info)
        return Loaded((info.height, info.width, info.channels), model.quantize, model.raw)


TFLITE_MICRO = TFLiteMicroFormat()
