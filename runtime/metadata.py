"""What an artifact says about itself, read from (and written to) ONNX ``metadata_props``.

Everything the runtime needs to feed a model travels inside the model file under one key,
``edgepack``, as JSON: the labels, the input geometry and layout, and the pixel scaling. Export
writes it with :func:`ModelInfo.to_json`; the runtime reads it back with :func:`ModelInfo.from_json`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field, fields

from runtime.errors import ModelError
from runtime.limits import MAX_INPUT_MAGNITUDE, MAX_INPUT_PIXELS, MAX_LABEL_CHARS, MAX_LABELS, MAX_SIDE

METADATA_KEY = "edgepack"
SCHEMA_VERSION = 1
LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "uint8")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class ModelInfo:
    """How to turn pixels into this model's input, and how to read its output.

    ``scale``, ``mean`` and ``std`` define ``x = (pixel * scale - mean) / std`` per channel, with
    ``pixel`` the uint8 value; the model's output is a probability per label.
    """

    labels: tuple[str, ...]
    height: int
    width: int
    channels: int
    layout: str = "NCHW"
    dtype: str = "float32"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    dataset: str = ""
    precision: str = "fp32"
    float_accuracy: float | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Every field checked for type and value: metadata comes from files anyone can edit."""
        if not isinstance(self.layout, str) or self.layout not in LAYOUTS:
            raise ModelError(f"unsupported input layout {self.layout!r} (expected NCHW or NHWC)")
        if self.dtype not in DTYPES:
            raise ModelError(f"unsupported input dtype {self.dtype!r} (expected {' or '.join(DTYPES)})")
        for name in ("height", "width", "channels"):
            value = getattr(self, name)
            if not _is_int(value) or not 1 <= value <= MAX_SIDE:
                raise ModelError(f"metadata {name} must be a whole number from 1 to {MAX_SIDE}, not {value!r}")
        if self.channels not in (1, 3):
            raise ModelError(f"unsupported channel count {self.channels} (expected 1 or 3)")
        if self.height * self.width > MAX_INPUT_PIXELS:
            raise ModelError(f"metadata input {self.height}x{self.width} exceeds {MAX_INPUT_PIXELS} pixels")
        self._check_labels()
        if not _is_number(self.scale) or not 0 < self.scale < math.inf:
            raise ModelError(f"metadata scale must be a positive number, not {self.scale!r}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if not isinstance(values, tuple) or not all(_is_number(v) and math.isfinite(v) for v in values):
                raise ModelError(f"metadata {name} must be a list of finite numbers, not {values!r}")
            if len(values) not in (1, self.channels):
                raise ModelError(f"metadata {name} has {len(values)} values for {self.channels} channels")
        if any(s == 0 for s in self.std):
            raise ModelError("metadata std contains zero")
        self._check_input_range()
        if not isinstance(self.extra, dict):
            raise ModelError("metadata extra must be an object")

    def _check_labels(self) -> None:
        """Labels name classes one to one: a blank or repeated label makes results ambiguous."""
        if not isinstance(self.labels, tuple) or not all(isinstance(label, str) for label in self.labels):
            raise ModelError("metadata labels must be a list of strings")
        if len(self.labels) < 2:
            raise ModelError("the model metadata lists fewer than two labels")
        if len(self.labels) > MAX_LABELS:
            raise ModelError(f"the model metadata lists {len(self.labels)} labels, over the limit of {MAX_LABELS}")
        if not all(label.strip() for label in self.labels):
            raise ModelError("metadata labels include an empty one")
        if max(map(len, self.labels)) > MAX_LABEL_CHARS:
            raise ModelError(f"metadata labels include one over {MAX_LABEL_CHARS} characters")
        counts = Counter(self.labels)  # linear: list.count per label took 50 s for 40,000 labels
        repeated = sorted(label for label, count in counts.items() if count > 1)
        if repeated:
            raise ModelError(f"metadata labels repeat {repeated[0]!r:.200}: each class needs its own name")

    def _check_input_range(self) -> None:
        """The values pixels 0 and 255 become must be finite and of a sane magnitude in float32."""
        for mean, std in zip(self.mean * self.channels, self.std * self.channels):
            for pixel in (0, 255):
                value = (pixel * self.scale - mean) / std
                if not abs(value) <= MAX_INPUT_MAGNITUDE:  # NaN fails too
                    raise ModelError(
                        f"metadata scale {self.scale!r}, mean {mean!r} and std {std!r} map pixel {pixel} to {value!r}, "
                        f"beyond +-{MAX_INPUT_MAGNITUDE:g}: degenerate preprocessing"
                    )

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The input of one image without the batch axis, in the model's layout."""
        if self.layout == "NCHW":
            return (self.channels, self.height, self.width)
        return (self.height, self.width, self.channels)

    def to_json(self) -> str:
        payload = asdict(self)
        payload["schema"] = SCHEMA_VERSION
        return json.dumps(payload, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> ModelInfo:
        try:
            payload = json.loads(text)
            if not isinstance(payload, dict):
                raise TypeError("not a JSON object")
            payload.pop("schema", None)
            for key in ("labels", "mean", "std"):
                if key in payload:
                    if not isinstance(payload[key], list):
                        raise ModelError(f"metadata {key} must be a list, not {payload[key]!r}"[:200])
                    payload[key] = tuple(payload[key])
            unknown = set(payload) - {f.name for f in fields(cls)}
            if unknown:
                raise TypeError(f"unknown field(s) {sorted(unknown)}")
            return cls(**payload)
        except ModelError as exc:
            raise ModelError(f"{source}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{source}: malformed {METADATA_KEY!r} metadata ({exc})") from None
