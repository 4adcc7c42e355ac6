"""What an export starts from: a Keras model file, the dataset that measures it, and how to feed it.

Two ways in, one result (:class:`Source`):

* the release flow, ``--dataset fashion_mnist|cifar10``: ``models/<dataset>/model.keras`` as
  ``python -m train`` wrote it, fed [0, 1] pixels, published beside it;
* a user's own model (``export.api.export_model``, ``--model PATH.keras --dataset NAME|PATH``):
  any Keras 3 image classifier, fed what ``--pixel-range``/``--mean``/``--std`` say it expects,
  published into ``--out``.

Whatever the model expects goes into the artifacts' metadata (``ModelInfo``), so the runtime
feeds every artifact exactly what the float model was measured with. Images of another size or
colour than the model's input are resized and converted by the runtime's own preprocessing, for
the gate as for users.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import re
import sys
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
from tqdm import tqdm

from export.errors import ExportError
from export.memory import images_within
from runtime.metadata import ModelInfo
from runtime.preprocess import normalize, to_pixels
from runtime.text import one_line
from train.datasets import Dataset, load_dataset

log = logging.getLogger(__name__)

PROBABILITY_TOLERANCE = 1e-3
PROBE_IMAGES = 64  # training images that show whether the model's outputs are probabilities

# What an untrusted .keras archive may declare before Keras opens it (a zip's central directory
# states every member's sizes): a 3 MB file inflating to 3 GiB of weights, a 1.5 GiB config.json
# or gigabytes of "assets" are refused in one line instead of filling memory or $TMPDIR.
MAX_ARCHIVE_MEMBERS = 10_000
MAX_ARCHIVE_BYTES = 1024**3  # all members, uncompressed: a 250M-parameter float32 model
MAX_CONFIG_BYTES = 16 * 1024**2  # config.json and metadata.json: kilobytes for real models
MAX_COMPRESSION_RATIO = 100  # float weights compress about 1.1x; a bomb, thousands of times
RATIO_CHECK_FROM_BYTES = 1024**2  # small members (configs, empty weights) compress well, harmlessly


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
        means = _floats(mean, "--mean", (1, 3)) if mean else (0.0,)
        stds = _floats(std, "--std", (1, 3)) if std else (1.0,)
        return cls.checked((low, high), means, stds)

    @classmethod
    def checked(cls, pixel_range: tuple, mean: tuple, std: tuple) -> Preprocessing:
        """From numbers (the Python API's), refused with the option's name if they make no sense."""
        values = [*pixel_range, *mean, *std]
        if len(pixel_range) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise ExportError(f"--pixel-range {pixel_range}, --mean {mean}, --std {std}: expected finite numbers")
        low, high = (float(v) for v in pixel_range)
        if high <= low:
            raise ExportError(f"--pixel-range {low:g},{high:g}: HIGH must be above LOW")
        if len(mean) not in (1, 3) or len(std) not in (1, 3):
            raise ExportError(f"--mean/--std: give 1 or 3 values, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ExportError(f"--std {','.join(f'{s:g}' for s in std)}: every value must be positive")
        return cls(low, high, tuple(float(m) for m in mean), tuple(float(s) for s in std))

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


@dataclass(frozen=True)
class Training:
    """How ``python -m train`` made a release model: its architecture, and the hold-out it kept
    out of training (QAT fine-tuning leaves the same images out)."""

    arch: str
    val_fraction: float
    seed: int


@dataclass
class Source:
    """A loaded model and everything the export needs to know about it."""

    model: keras.Model  # NHWC float input, probabilities out
    model_path: Path
    data: Dataset
    info: ModelInfo  # the ONNX (NCHW) description; TFLite uses the same with NHWC
    folder: Path  # where artifacts are published
    trained: Training | None  # how train/ made it (QAT rebuilds it); None for a user's own model

    def pixels(self, images: np.ndarray) -> np.ndarray:
        """Dataset images as the model takes them (resized, colour-converted) by the runtime's code."""
        return to_pixels(images, self.info)

    def inputs(self, pixels: np.ndarray) -> np.ndarray:
        """Model-sized uint8 NHWC pixels -> the float model's input tensor."""
        return normalize(pixels, replace(self.info, layout="NHWC"))

    def probabilities(self, pixels: np.ndarray, model: keras.Model | None = None) -> np.ndarray:
        """The float model's probabilities (or ``model``'s): the reference every artifact is
        measured against."""
        model = model or self.model
        batches = inference_batches(model, pixels)
        return np.concatenate(
            [
                np.asarray(model(self.inputs(b), training=False))
                for b in tqdm(batches, desc="float reference", unit=" batch", leave=False)
            ]
        )


def activation_bytes(model: keras.Model) -> int:
    """The bytes of one image's float32 layer outputs, nested models' layers included.

    What eager inference holds per image, roughly: Xception at 71 px counts 15.3 MB and took 19.3 MB
    per image (4.9 GB) at a batch of 256; ResNet50V2 at 32 px counts 2.8 MB and took 3.5 MB. A
    layer Keras never called symbolically (inside a subclassed model) is not counted."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += activation_bytes(layer)
            continue
        try:
            outputs = keras.tree.flatten(layer.output)
        except (AttributeError, ValueError):
            continue
        total += sum(4 * math.prod(out.shape[1:]) for out in outputs if all(out.shape[1:]))
    return total


def inference_batch(model: keras.Model, most: int = 256) -> int:
    """Images per Keras forward pass: up to ``most``, fewer where their activations would not fit
    the export's activation budget (Xception at 71 px: 35 images, 0.7 GB at once; 256 also ran
    2.2x slower than 64 there, 21.9 s against 10.0 s for 1,024 images)."""
    return images_within(activation_bytes(model), most)


def inference_batches(model: keras.Model, images: np.ndarray) -> list[np.ndarray]:
    """``images`` in the batches :func:`inference_batch` sizes for ``model`` (views, not copies)."""
    size = inference_batch(model)
    return [images[start : start + size] for start in range(0, len(images), size)]


def import_user_module(path: Path) -> None:
    """Run the user's own module (``--custom-objects``), so that the layers it registers with
    ``@keras.saving.register_keras_serializable`` are known when the model is loaded. This runs the
    user's code, as importing it would: the flag exists for the user's own files."""
    if path.is_dir():
        raise ExportError(f"{path}: is a directory; --custom-objects takes one Python file (a package's __init__.py)")
    if not path.is_file():
        raise ExportError(f"{path}: no such file (--custom-objects)")
    spec = importlib.util.spec_from_file_location(f"edgepack_user_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ExportError(f"{path}: not a Python module (--custom-objects)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:  # sys.exit() at import ended the export with rc 0, nothing written, no word
        raise ExportError(f"{path}: the module called sys.exit({exc.code!r}) while being imported") from None
    except Exception as exc:  # the user's code can fail in any way
        raise ExportError(f"{path}: importing it failed ({one_line(exc, 300)})") from None


def load_keras_model(path: Path, trust_code: bool = False) -> keras.Model:
    """The model, with Keras' safe mode on (code inside the file is refused) unless ``trust_code``."""
    if path.is_dir():
        raise ExportError(f"{path}: is a directory, not a .keras model file")
    if not path.is_file():
        raise ExportError(f"{path}: no such model file")
    if path.suffix.lower() == ".keras":
        check_keras_archive(path)
    try:
        return keras.models.load_model(path, compile=False, safe_mode=not trust_code)
    except Exception as exc:  # Keras raises many types for a damaged or foreign archive
        raise ExportError(f"{path}: cannot load the Keras model ({load_failure(exc)})") from None


def check_keras_archive(path: Path) -> None:
    """Refuse a .keras file that is not a zip, or whose declared sizes exceed the limits above,
    before Keras inflates anything."""
    if not zipfile.is_zipfile(path):
        raise ExportError(f"{path}: not a .keras model (a .keras file is a zip archive; this one is not)")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ExportError(f"{path}: damaged .keras archive ({exc})") from None
    if len(members) > MAX_ARCHIVE_MEMBERS:
        raise ExportError(f"{path}: {len(members)} archive members, over the limit of {MAX_ARCHIVE_MEMBERS}")
    total = sum(member.file_size for member in members)
    if total > MAX_ARCHIVE_BYTES:
        raise ExportError(f"{path}: inflates to {total} bytes, over the limit of {MAX_ARCHIVE_BYTES} bytes")
    for member in members:
        if member.filename.endswith(".json") and member.file_size > MAX_CONFIG_BYTES:
            raise ExportError(
                f"{path}: {member.filename} inflates to {member.file_size} bytes, over the limit of {MAX_CONFIG_BYTES}"
            )
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > RATIO_CHECK_FROM_BYTES and ratio > MAX_COMPRESSION_RATIO:
            raise ExportError(
                f"{path}: {member.filename} inflates {ratio:.0f}-fold (limit {MAX_COMPRESSION_RATIO}): "
                "a decompression bomb, not model weights"
            )


def load_failure(exc: BaseException) -> str:
    """The useful part of a Keras loading error on one line: the class it could not find, when that
    is the cause (Keras buries it under the outer model's own deserialization message), else the
    whole message (its reason often comes after the first line)."""
    unknown = re.search(r"Could not locate (?:class|function) '[^']+'", str(exc))
    if unknown:
        return (
            f"{unknown.group(0)}: a custom layer or function the model needs; give the module that registers it "
            "with --custom-objects FILE.py"
        )
    if "safe_mode" in str(exc):
        return one_line(exc) + " (edgepack: --trust-model-code lets Keras run the code in a file you trust)"
    return one_line(exc)


def release_source(dataset: str, models_dir: Path, data_dir: str | None, out: Path | None = None) -> Source:
    """``models/<dataset>/model.keras``, trained by ``python -m train`` on [0, 1] pixels, to be
    published beside it, or into ``out/<dataset>/``."""
    data = load_dataset(dataset, data_dir)
    folder = models_dir / data.name
    path = folder / "model.keras"
    if not path.exists():
        raise ExportError(f"{path}: no trained model; train it first (python -m train --dataset {dataset})")
    model = load_keras_model(path)
    info = describe(model, data, data.labels, Preprocessing(), path)
    target = out / data.name if out is not None else folder
    return Source(model, path, data, info, target, _training_record(folder))


def describe(model: keras.Model, data: Dataset, labels, preprocessing: Preprocessing, path: Path) -> ModelInfo:
    """The runtime metadata of a model: its input size and channels, labels and scaling."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ExportError(
            f"{path}: expected one image input and one output, found {len(model.inputs)} and {len(model.outputs)}"
        )
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise ExportError(f"{path}: input shape {shape} is not NHWC with 1 or 3 channels")
    outputs = model.output_shape
    binary = len(outputs) == 2 and outputs[-1] == 1 and len(labels) == 2  # Dense(1, "sigmoid"): P(second class)
    if len(outputs) != 2 or (outputs[-1] != len(labels) and not binary):
        raise ExportError(
            f"{path}: output shape {outputs} does not give one score per class of {data.name} ({len(labels)} classes)"
            + ("; a single score is read as a binary classifier's, which needs 2 classes" if outputs[-1] == 1 else "")
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


def with_probabilities(model: keras.Model, info: ModelInfo, data: Dataset) -> keras.Model:
    """The model with a fixed input size and one probability per class.

    Artifacts always output probabilities: the runtime reports them and the gate compares them.
    Whether the model already does is measured on a few training images, not guessed from names:
    logits get a softmax; a binary classifier's single score (``Dense(1, "sigmoid")``, or its
    logit) becomes the two probabilities ``[1 - p, p]``, in every artifact.
    """
    inputs = keras.Input((info.height, info.width, info.channels), name="image")
    scores = _scores(model, data.x_train[:PROBE_IMAGES], info)
    in_range = np.all(scores >= -PROBABILITY_TOLERANCE) and np.all(scores <= 1 + PROBABILITY_TOLERANCE)
    binary = scores.shape[1] == 1
    is_probability = in_range and (binary or np.allclose(scores.sum(axis=1), 1.0, atol=PROBABILITY_TOLERANCE))
    fixed_size = tuple(model.input_shape[1:3]) == (info.height, info.width)
    if is_probability and fixed_size and not binary:
        return model
    outputs = model(inputs)
    if binary:
        if not is_probability:
            log.info("%s outputs one score that is not a probability: a sigmoid is appended", model.name)
            outputs = keras.layers.Activation("sigmoid", name="positive")(outputs)
        log.info("%s is a binary classifier: its artifacts output [1 - p, p] for %s", model.name, list(info.labels))
        negative = keras.layers.Rescaling(-1.0, offset=1.0, name="negative")(outputs)
        outputs = keras.layers.Concatenate(name="probabilities")([negative, outputs])
    elif not is_probability:
        log.info("%s outputs scores that are not probabilities: a softmax is appended", model.name)
        outputs = keras.layers.Softmax(name="probabilities")(outputs)
    return keras.Model(inputs, outputs, name=f"{model.name}_export")


def _scores(model: keras.Model, images: np.ndarray, info: ModelInfo) -> np.ndarray:
    """The model's outputs on ``images``, preprocessed and run in batches within the activation
    budget (64 images of a 1024x1024 model in one batch reached 20.9 GB)."""
    nhwc = replace(info, layout="NHWC")
    batches = inference_batches(model, images)
    return np.concatenate([np.asarray(model(normalize(to_pixels(b, info), nhwc), training=False)) for b in batches])


def _training_record(folder: Path) -> Training | None:
    """What ``python -m train`` recorded in ``metrics.json``, if anything (QAT needs it)."""
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        # metrics.json from before recipes recorded it: every recipe then held out 10% if any
        held_out = metrics["recipe"].get("val_fraction", 0.1 if metrics.get("val_images") else 0.0)
        return Training(metrics["arch"], float(held_out), int(metrics["seed"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
