"""TFLite artifacts, run by LiteRT: fp32, fp16, dynamic-range, full-integer post-training int8
(uint8 input and output, ``export.quantize``) and QAT int8.

TFLite keeps Keras' NHWC layout. Every file carries TFLite's standard metadata (labels,
normalization; ``export.android_metadata``) for Android's Task Library; edgepack's own, fuller
description travels in a JSON sidecar beside it (``model_int8.tflite.json``) for the runtime.
Converters and runtimes are imported where they are used (see ``export.formats.base``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from export.formats.base import ArtifactSpec, BenchRunner, Builder, Format, Loaded, Predict
from runtime.metadata import ModelInfo

if TYPE_CHECKING:
    from export.diagnose import LayerError
    from export.quantize import Int8Recipe


class TFLiteFormat(Format):
    title = "TFLite"
    name = "tflite"
    suffix = ".tflite"
    layout = "NHWC"
    precisions = ("fp32", "fp16", "dynamic", "int8")
    bench_runners = (
        BenchRunner("litert_{precision}", "LiteRT {precision}", "litert", "litert", "ai_edge_litert.interpreter"),
    )

    def sidecars(self, filename: str) -> list[str]:
        return [filename + ".json"]

    def read_info(self, path: Path) -> ModelInfo:
        return ModelInfo.from_json(path.with_name(self.sidecars(path.name)[0]).read_text(), str(path))

    def build(self, builder: Builder, spec: ArtifactSpec, recipe: Int8Recipe, info: ModelInfo, path: Path) -> None:
        from export.android_metadata import with_metadata
        from export.int16_kernels import with_int16_kernels
        from export.quantize import tflite_16x8, tflite_int8
        from export.tflite_export import keras_to_tflite

        if spec.post_training_int8 and recipe.activation_bits == 16:
            calibration = builder.calibration_for(recipe.samples)
            model = with_int16_kernels(builder.keras_model(recipe), calibration, info)
            data = tflite_16x8(model, calibration, info)
        elif spec.post_training_int8:
            data = tflite_int8(self.calibrated(builder, recipe, info), recipe.float_ops)
        else:
            model = builder.qat_model() if spec.quantization == "qat" else builder.keras_model(recipe)
            data = keras_to_tflite(model, spec.precision, builder.calibration_for(None), info)
        path.write_bytes(with_metadata(data, info, self.description(info)))
        self.write_sidecars(path, info)

    @staticmethod
    def description(info: ModelInfo) -> str:
        """What the Android metadata says of the model: what it classifies and what it was gated on."""
        accuracy = f", float model test accuracy {100 * info.float_accuracy:.2f}%" if info.float_accuracy else ""
        return (
            f"{info.dataset or 'Image'} classifier, {info.precision} TFLite exported by edgepack{accuracy}; "
            "parity figures in the release's manifest.json and parity.md."
        )

    def calibration_choices(self, plain: Int8Recipe) -> list[tuple[str, Int8Recipe]]:
        if plain.method == "percentile":
            return []
        return [("percentile calibration", replace(plain, method="percentile"))]

    def calibrated(self, builder: Builder, recipe: Int8Recipe, info: ModelInfo) -> bytes:
        """The float model carrying calibration statistics, calibrated once per graph and sample:
        min-max ranges, clipped at a percentile for ``method="percentile"``
        (``export.tflite_percentile``; TFLite has no other method, entropy gets min-max)."""
        from export.quantize import calibrated_tflite
        from export.tflite_percentile import percentile_calibrated

        percentile = recipe.method == "percentile"
        cache, key = builder.cache(self.name), ("calibrated", recipe.equalize, recipe.samples, percentile)
        if key not in cache:
            images = builder.calibration_for(recipe.samples)
            if percentile:
                minmax = self.calibrated(builder, replace(recipe, method="minmax"), info)
                cache[key] = percentile_calibrated(minmax, images, info)
            else:
                cache[key] = calibrated_tflite(builder.keras_model(recipe), images, info)
        return cache[key]

    def predictor(self, path: Path, info: ModelInfo, threads: int | None = None) -> Predict:
        """LiteRT fed the images resized by the runtime's own code."""
        from export.litert import LiteRTModel
        from runtime.preprocess import to_pixels

        model = LiteRTModel(path, info, threads)
        return lambda images: model.run(to_pixels(images, info))

    def layer_errors(
        self, builder: Builder, spec: ArtifactSpec, recipe: Int8Recipe, path: Path, images: np.ndarray
    ) -> list[LayerError]:
        from export.diagnose import tflite_layer_errors

        info = builder.info_for(spec)
        return tflite_layer_errors(self.calibrated(builder, recipe, info), path.read_bytes(), images, info)

    def load_for_bench(self, runner: BenchRunner, path: Path, threads: int) -> Loaded:
        from export.litert import LiteRTModel

        info = self.read_info(path)
        model = LiteRTModel(path, info, threads)
        return Loaded((info.height, info.width, info.channels), lambda pixels: pixels, lambda x: model.run(x, len(x)))


TFLITE = TFLiteFormat()
