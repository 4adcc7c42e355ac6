"""ONNX artifacts, run by ONNX Runtime through edgepack's own runtime: fp32, post-training int8
(static QDQ, ``export.quantize.OnnxQuantizer``) and QAT int8.

The graph takes NCHW input and carries its description (``ModelInfo``) in its metadata, so an
ONNX artifact is one file. Converters and runtimes are imported where they are used (see
``export.formats.base``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from export.formats.base import ArtifactSpec, BenchRunner, Builder, Format, Loaded, Predict
from export.opsets import DEFAULT_OPSET, opset_range
from runtime.metadata import ModelInfo

if TYPE_CHECKING:
    import onnx

    from export.diagnose import LayerError
    from export.quantize import Int8Recipe, OnnxQuantizer

log = logging.getLogger(__name__)


class OnnxFormat(Format):
    title = "ONNX"
    name = "onnx"
    suffix = ".onnx"
    layout = "NCHW"
    precisions = ("fp32", "int8")
    options = {"opset": DEFAULT_OPSET}
    bench_runners = (
        BenchRunner("ort_{precision}", "ORT {precision} (runtime)", "ort_runtime", "onnxruntime", "onnxruntime"),
        BenchRunner("ort_bare_{precision}", "ORT {precision} (bare session)", "ort_bare", "onnxruntime", "onnxruntime"),
    )

    def info_extra(self, spec: ArtifactSpec) -> dict:
        from export.quantize import REDUCE_RANGE

        if not spec.post_training_int8:
            return {}
        return {
            "first_conv": "float",  # see export.quantize.OnnxQuantizer.first_conv
            "weights": "int8 per channel, 7-bit range with 8-bit activations" if REDUCE_RANGE else "int8 per channel",
        }

    def checked_options(self, given: dict) -> dict:
        """The opset must lie in what the converter and the installed ONNX package can write."""
        options = super().checked_options(given)
        low, high = opset_range()
        opset = options["opset"]
        if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
            raise ValueError(f"--opset {opset}: this installation writes ONNX opsets {low} to {high}")
        return options

    def read_info(self, path: Path) -> ModelInfo:
        from runtime.classifier import open_session, read_model_info

        return read_model_info(open_session(path), path)

    def calibration_choices(self, plain: Int8Recipe) -> list[tuple[str, Int8Recipe]]:
        return [
            ("percentile calibration", replace(plain, method="percentile")),
            ("symmetric activations", replace(plain, symmetric=True)),
            ("entropy calibration", replace(plain, method="entropy")),
        ]

    def build(self, builder: Builder, spec: ArtifactSpec, recipe: Int8Recipe, info: ModelInfo, path: Path) -> None:
        import onnx

        from export.onnx_export import keras_to_onnx, store_weights_as_int8

        if spec.quantization == "qat":
            proto = keras_to_onnx(builder.qat_model(), info, builder.options(self.name)["opset"])
            store_weights_as_int8(proto)
            onnx.checker.check_model(proto, full_check=True)
        elif spec.precision == "fp32":
            proto = self.fp32(builder)
        else:
            quantizer = self.quantizer(builder, recipe)
            proto = quantizer.quantize(builder.calibration_for(recipe.samples), info, recipe)
        onnx.save(proto, path)

    def fp32(self, builder: Builder) -> onnx.ModelProto:
        """The fp32 graph of the export's model, converted once per run."""
        from export.onnx_export import count_ops, keras_to_onnx

        cache = builder.cache(self.name)
        if "fp32" not in cache:
            opset = builder.options(self.name)["opset"]
            proto = keras_to_onnx(builder.source.model, builder.info_for(self.artifacts[0]), opset)
            ops = count_ops(proto)
            log.info("ONNX fp32 graph: %s", ops)
            if ops.get("Transpose", 0):
                log.warning("the ONNX graph keeps %d Transpose node(s)", ops["Transpose"])
            cache["fp32"] = proto
        return cache["fp32"]

    def quantizer(self, builder: Builder, recipe: Int8Recipe) -> OnnxQuantizer:
        """The quantizer of the graph ``recipe`` starts from (equalized or not), prepared once."""
        from export.onnx_export import keras_to_onnx
        from export.quantize import OnnxQuantizer

        cache, key = builder.cache(self.name), ("quantizer", recipe.equalize)
        if key not in cache:
            if recipe.equalize:
                opset = builder.options(self.name)["opset"]
                fp32 = keras_to_onnx(builder.keras_model(recipe), builder.info_for(self.artifacts[0]), opset)
            else:
                fp32 = self.fp32(builder)
            cache[key] = OnnxQuantizer(fp32, builder.workdir)
        return cache[key]

    def predictor(self, path: Path, info: ModelInfo, threads: int | None = None) -> Predict:
        """The runtime users install, fed the images as they are: its own resizing is measured too."""
        from runtime.classifier import Classifier

        return Classifier(path, threads=threads, batch_size=256).predict

    def layer_errors(
        self, builder: Builder, spec: ArtifactSpec, recipe: Int8Recipe, path: Path, images: np.ndarray
    ) -> list[LayerError]:
        from export.diagnose import onnx_layer_errors

        info = builder.info_for(spec)
        return onnx_layer_errors(self.quantizer(builder, recipe).prepared, path, images, info)

    def load_for_bench(self, runner: BenchRunner, path: Path, threads: int) -> Loaded:
        """The runtime (its own preprocessing timed), or a bare session fed prepared input (so the
        difference between the two is the runtime's overhead)."""
        from runtime.classifier import Classifier, open_session, read_model_info
        from runtime.preprocess import normalize

        if runner.kind == "ort_runtime":
            classifier = Classifier(path, threads=threads, batch_size=1 << 16)
            info = classifier.info
            return Loaded((info.height, info.width, info.channels), lambda pixels: pixels, classifier.run)
        session = open_session(path, threads)
        info = read_model_info(session, path)
        name = session.get_inputs()[0].name
        return Loaded(
            (info.height, info.width, info.channels),
            lambda pixels: normalize(pixels, info),
            lambda x: session.run(None, {name: x}),
        )


ONNX = OnnxFormat()
