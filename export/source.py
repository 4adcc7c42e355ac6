"""What an export starts from: a Keras model file, the dataset that measures it, and how to feed it.

Two ways in, one result (:class:`Source`):

* the release flow, ``--dataset fashion_mnist|cifar10``: ``models/<dataset>/model.keras`` as
  ``python -m train`` wrote it, fed [0, 1] pixels, published beside it;
* a user's own model, ``--model PATH.keras --dataset NAME|PATH``: any Keras 3 image classifier,
  fed what ``--pixel-range``/``--mean``/``--std`` say it expects, published into ``--out``.

Whatever the model expects goes into the artifacts' metadata (``ModelInfo``), so the runtime
feeds every artifact exactly what the float model was measured with. Images of another size or
colour than the model's input are resized and converted by the runtime's own preprocessing, for
the gate as for users.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np

from runtime.metadata import ModelInfo
from runtime.preprocess import normalize, to_pixels
from train.datasets import Dataset, load_dataset

log = logging.getLogger(__name__)

PROBABILITY_TOLERANCE = 1e-3


class ExportError(Exception):
    """A release that cannot be built: missing model, mismatched data, unusable options."""


@dataclass(frozen=True)
class Preprocessing:
    """How uint8 pixels become the model's input: ``x = (low + pixel / 255 * (high - low) - mean) / std``."""

    low: float = 0.0
    high: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    @classmethod
    def parse(cls, pixel_range: str | None, mean: str | None, std: str | None) -> Preprocessing:
        """From the command line's ``--pixel-range LOW,HIGH``, ``--mean M[,M,M]``, ``--std S[,S,S]``."""
        low, high = _floats(pixel_range, "--pixel-range", (2,)) if pixel_range else (0.0, 1.0)
        if high <= low:
            raise ExportError(f"--pixel-range {pixel_range}: HIGH must be above LOW")
        means = _floats(mean, "--mean", (1, 3)) if mean else (0.0,)
        stds = _floats(std, "--std", (1, 3)) if std else (1.0,)
        if any(s <= 0 for s in stds):
            raise ExportError(f"--std {std}: every value must be positive")
        return cls(low, high, means, stds)

    def fields(self) -> dict:
        """The equivalent ``ModelInfo`` scaling: ``(pixel * scale - mean) / std``."""
        return {
            "scale": (self.high - self.low) / 255.0,
            "mean": tuple(m - self.low for m in self.mean),
            "std": self.std,
            "extra": {"pixel_range": [self.low, self.high]},
        }


def _floats(text: str, flag: str, counts: tuple[int, ...]) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ExportError(f"{flag} {text}: expected comma-separated numbers") from None
    if len(values) not in counts or not all(math.isfinite(v) for v in values):
        raise ExportError(f"{flag} {text}: expected {' or '.join(map(str, counts))} finite numbers")
    return values


@dataclass
class Source:
    """A loaded model and everything the export needs to know about it."""

    model: keras.Model  # NHWC float input, probabilities out
    model_path: Path
    data: Dataset
    info: ModelInfo  # the ONNX (NCHW) description; TFLite uses the same with NHWC
    folder: Path  # where artifacts are published
    arch: str | None  # a train/ architecture (QAT rebuilds it); None for a user's own model
    release: bool  # the release flow (models/<dataset>/model.keras)

    def pixels(self, images: np.ndarray) -> np.ndarray:
        """Dataset images as the model takes them (resized, colour-converted) by the runtime's code."""
        return to_pixels(images, self.info)

    def inputs(self, pixels: np.ndarray) -> np.ndarray:
        """Model-sized uint8 NHWC pixels -> the float model's input tensor."""
        return normalize(pixels, replace(self.info, layout="NHWC"))


def load_keras_model(path: Path) -> keras.Model:
    if path.is_dir():
        raise ExportError(f"{path}: is a directory, not a .keras model file")
    if not path.is_file():
        raise ExportError(f"{path}: no such model file")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a damaged or foreign archive
        raise ExportError(f"{path}: cannot load the Keras model ({load_failure(exc)})") from None


def load_failure(exc: BaseException) -> str:
    """The useful part of a Keras loading error: the class it could not find, when that is the cause
    (Keras buries it under the outer model's own deserialization message)."""
    text = str(exc).strip()
    unknown = re.search(r"Could not locate (?:class|function) '[^']+'", text)
    if unknown:
        return f"{unknown.group(0)}: a custom layer or function the model needs; import or register it first"
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def release_source(dataset: str, models_dir: Path, data_dir: str | None) -> Source:
    """``models/<dataset>/model.keras``, trained by ``python -m train`` on [0, 1] pixels."""
    data = load_dataset(dataset, data_dir)
    folder = models_dir / data.name
    path = folder / "model.keras"
    if not path.exists():
        raise ExportError(f"{path}: no trained model; train it first (python -m train --dataset {dataset})")
    model = load_keras_model(path)
    info = _describe(model, data, data.labels, Preprocessing(), path)
    return Source(model, path, data, info, folder, _trained_arch(folder), release=True)


def user_source(
    model_path: Path,
    dataset: str,
    data_dir: str | None,
    out: Path | None,
    preprocessing: Preprocessing,
    labels: tuple[str, ...] | None,
) -> Source:
    """A user's own Keras classifier, measured on ``dataset``'s test split."""
    model = load_keras_model(model_path)
    data = load_dataset(dataset, data_dir)
    if labels is not None and len(labels) != data.num_classes:
        raise ExportError(f"--labels names {len(labels)} classes, but {data.name} has {data.num_classes}")
    info = _describe(model, data, labels or data.labels, preprocessing, model_path)
    folder = out or model_path.with_suffix("")
    return Source(_with_probabilities(model, info, data), model_path, data, info, folder, None, release=False)


def _describe(model: keras.Model, data: Dataset, labels, preprocessing: Preprocessing, path: Path) -> ModelInfo:
    """The runtime metadata of a model: its input size and channels, labels and scaling."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ExportError(
            f"{path}: expected one image input and one output, found {len(model.inputs)} and {len(model.outputs)}"
        )
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise ExportError(f"{path}: input shape {shape} is not NHWC with 1 or 3 channels")
    outputs = model.output_shape
    if len(outputs) != 2 or outputs[-1] != len(labels):
        raise ExportError(
            f"{path}: output shape {outputs} does not give one score per class of {data.name} ({len(labels)} classes)"
        )
    if len(preprocessing.mean) not in (1, shape[-1]) or len(preprocessing.std) not in (1, shape[-1]):
        raise ExportError(f"--mean/--std: give 1 or {shape[-1]} values for this {shape[-1]}-channel model")
    height = shape[1] or data.input_shape[0]
    width = shape[2] or data.input_shape[1]
    return ModelInfo(
        labels=tuple(labels),
        height=height,
        width=width,
        channels=shape[-1],
        dataset=data.name,
        **preprocessing.fields(),
    )


def _with_probabilities(model: keras.Model, info: ModelInfo, data: Dataset) -> keras.Model:
    """The model with a fixed input size and a softmax if it outputs logits.

    Artifacts always output probabilities: the runtime reports them and the gate compares them.
    Whether the model already does is measured on a few training images, not guessed from names.
    """
    inputs = keras.Input((info.height, info.width, info.channels), name="image")
    sample = normalize(to_pixels(data.x_train[:64], info), replace(info, layout="NHWC"))
    scores = np.asarray(model(sample, training=False))
    is_probability = (
        np.all(scores >= -PROBABILITY_TOLERANCE)
        and np.all(scores <= 1 + PROBABILITY_TOLERANCE)
        and np.allclose(scores.sum(axis=1), 1.0, atol=PROBABILITY_TOLERANCE)
    )
    fixed_size = tuple(model.input_shape[1:3]) == (info.height, info.width)
    if is_probability and fixed_size:
        return model
    outputs = model(inputs)
    if not is_probability:
        log.info("%s outputs scores that are not probabilities: a softmax is appended", model.name)
        outputs = keras.layers.Softmax(name="probabilities")(outputs)
    return keras.Model(inputs, outputs, name=f"{model.name}_export")


def _trained_arch(folder: Path) -> str | None:
    """The architecture ``python -m train`` recorded, if any (QAT needs it)."""
    try:
        return json.loads((folder / "metrics.json").read_text())["arch"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
