"""What a format plug-in is: the artifacts it offers and everything the pipeline, accuracy control,
publishing and the benchmarks need to know about them, behind one small interface.

A format (ONNX, TFLite) is one module in this package holding one :class:`Format` instance; the
registry (``export.formats``) lists them. Nothing outside the format modules asks which format an
artifact is: it asks the artifact's format.

Importing the registry loads no converter and no runtime (a format module imports those inside the
methods that use them): the benchmarks' measuring process reads the registry, and its memory
figure must be that of the one runtime it measures.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from runtime.metadata import ModelInfo

if TYPE_CHECKING:  # the registry stays light: see the module docstring
    import keras

    from export.diagnose import LayerError
    from export.quantize import Int8Recipe
    from export.source import Source

Predict = Callable[[np.ndarray], np.ndarray]  # NxHxWxC uint8 pixels -> probabilities


@dataclass(frozen=True)
class ArtifactSpec:
    """One artifact a format can build: its registry name, file, format, precision and how it was
    quantized ("none" for fp32, "ptq" post-training, "qat" quantization-aware training)."""

    name: str
    filename: str
    format: str
    precision: str
    quantization: str = "ptq"

    @property
    def post_training_int8(self) -> bool:
        return self.precision == "int8" and self.quantization == "ptq"


@dataclass(frozen=True)
class BenchRunner:
    """One way the benchmarks run a format's artifacts: ``key`` and ``label`` are formatted with the
    precision (``ort_{precision}``, ``ORT {precision} (runtime)``)."""

    key: str
    label: str
    kind: str
    runtime: str  # the library that runs it, for memory figures and grouping
    module: str  # the module to import before timing the load (so load times exclude import times)


@dataclass
class Loaded:
    """A loaded artifact for the benchmarks: the input shape it takes, and its untimed and timed
    halves (``prepare`` once per batch outside the timed call, ``call`` timed)."""

    shape: tuple[int, int, int]  # height, width, channels
    prepare: Callable[[np.ndarray], object]
    call: Callable[[object], object]


class Builder(Protocol):
    """What a format needs from an export run to build its artifacts (``export.pipeline.Builder``
    is one): the model and its data, samples of training images, a work folder and a cache."""

    source: Source
    workdir: Path
    seed: int

    def calibration_for(self, samples: int | None) -> np.ndarray: ...

    def keras_model(self, recipe: Int8Recipe) -> keras.Model: ...

    def qat_model(self) -> keras.Model: ...

    def info_for(self, spec: ArtifactSpec, remedy: dict | None = None) -> ModelInfo: ...

    def cache(self, owner: str) -> dict: ...

    def options(self, owner: str) -> dict: ...


class Format(ABC):
    """A family of artifacts sharing one file type and one runtime."""

    title: str  # "ONNX", for reports
    name: str  # "onnx": artifact names are ``<name>_<precision>`` and ``<name>_qat_int8``
    suffix: str  # ".onnx"
    layout: str  # the layout of the model's input: "NCHW" or "NHWC"
    precisions: tuple[str, ...]  # what post-training export offers; "fp32" first
    bench_runners: tuple[BenchRunner, ...] = ()
    options: dict[str, object] = {}  # the format's own export options and their defaults
    default: bool = True  # in the default export of every model (else see fits_default)

    def fits_default(self, parameters: int) -> bool:
        """Whether a format that is not ``default`` joins the default export of a model this size."""
        return self.default

    def checked_options(self, given: dict) -> dict:
        """``given`` (from ``ExportConfig.format_options``) over the defaults; ValueError with one
        line for an option the format does not have or a value it cannot use."""
        unknown = set(given) - set(self.options)
        if unknown:
            raise ValueError(f"{self.title} has no option {sorted(unknown)[0]!r} (it has: {', '.join(self.options)})")
        return {**self.options, **given}

    @property
    def artifacts(self) -> tuple[ArtifactSpec, ...]:
        """Every artifact of this format: one per precision, then the QAT int8 one."""
        specs = [
            ArtifactSpec(f"{self.name}_{p}", f"model_{p}{self.suffix}", self.name, p, "none" if p == "fp32" else "ptq")
            for p in self.precisions
        ]
        specs.append(ArtifactSpec(f"{self.name}_qat_int8", f"model_qat_int8{self.suffix}", self.name, "int8", "qat"))
        return tuple(specs)

    def sidecars(self, filename: str) -> list[str]:
        """Files that travel beside the artifact (its description, when the file cannot hold it)."""
        return []

    def write_sidecars(self, path: Path, info: ModelInfo) -> None:
        """Write the artifact's description into each of its :meth:`sidecars`."""
        for name in self.sidecars(path.name):
            path.with_name(name).write_text(info.to_json() + "\n")

    @abstractmethod
    def read_info(self, path: Path) -> ModelInfo:
        """The description the artifact carries (or its sidecar)."""

    def info_extra(self, spec: ArtifactSpec) -> dict:
        """What the artifact's metadata says about how this format quantized it."""
        return {}

    def remedies(self, spec: ArtifactSpec) -> tuple[str, ...]:
        """The accuracy-control remedies that can repair a failing artifact of ``spec``."""
        if spec.post_training_int8:
            return ("calibration", "equalization", "activations", "fallback")
        if spec.precision == "dynamic":  # int8 weights, activations quantized on the fly
            return ("equalization",)
        return ()

    def calibration_choices(self, plain: Int8Recipe) -> list[tuple[str, Int8Recipe]]:
        """Calibration variants beyond the sample size, cheapest first."""
        return []

    @abstractmethod
    def build(self, builder: Builder, spec: ArtifactSpec, recipe: Int8Recipe, info: ModelInfo, path: Path) -> None:
        """Write the artifact ``spec`` at ``path``; ``recipe`` applies to post-training quantized ones."""

    @abstractmethod
    def predictor(self, path: Path, info: ModelInfo, threads: int | None = None) -> Predict:
        """How users run this artifact, fed images of any size: the gate measures what they get."""

    def gate_indices(self, builder: Builder, spec: ArtifactSpec, path: Path, count: int) -> np.ndarray | None:
        """Which of the ``count`` test images the gate runs the artifact on: None, all of them,
        unless the format's runtime is too slow for that (the gate's bound then uses fewer)."""
        return None

    def target_figures(
        self, path: Path, info: ModelInfo, pixels: np.ndarray, probabilities: np.ndarray
    ) -> tuple[dict, list[str]]:
        """What the manifest records about the artifact on its target (memory, operators), and any
        failure found there; ``probabilities`` are the artifact's answers on the gate's ``pixels``."""
        return {}, []

    def working_memory(self, path: Path) -> int | None:
        """The memory running one image takes beyond the runtime library itself, in bytes (None:
        not measurable here): measured in a process that runs only this artifact."""
        from export.memory import working_memory

        return working_memory(self.name, path)

    @abstractmethod
    def layer_errors(
        self, builder: Builder, spec: ArtifactSpec, recipe: Int8Recipe, path: Path, images: np.ndarray
    ) -> list[LayerError]:
        """The quantization error of every quantized tensor of the int8 artifact at ``path``."""

    def load_for_bench(self, runner: BenchRunner, path: Path, threads: int) -> Loaded:
        """The artifact at ``path`` loaded the way ``runner`` runs it."""
        raise NotImplementedError
