"""The parity gate: does an artifact keep the float model's accuracy on the full test split?"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Threshold:
    """Largest tolerated |accuracy delta| in percentage points and smallest top-1 agreement."""

    max_delta_pp: float
    min_agreement: float


DEFAULT_THRESHOLDS: dict[str, Threshold] = {
    "fp32": Threshold(0.05, 0.999),
    "fp16": Threshold(0.05, 0.999),
    "dynamic": Threshold(0.5, 0.99),
    "int8": Threshold(0.5, 0.99),
}


def parse_thresholds(text: str) -> dict[str, Threshold]:
    """``int8=0.5:0.99,fp32=0.05:0.999`` -> thresholds, starting from the defaults."""
    thresholds = dict(DEFAULT_THRESHOLDS)
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            precision, values = item.split("=")
            delta, agreement = values.split(":")
            if precision not in DEFAULT_THRESHOLDS:
                raise ValueError(f"unknown precision {precision!r}")
            thresholds[precision] = Threshold(float(delta), float(agreement))
        except ValueError as exc:
            raise ValueError(f"bad threshold {item!r}: expected PRECISION=MAX_DELTA_PP:MIN_AGREEMENT ({exc})") from None
    return thresholds


@dataclass
class ParityResult:
    """An artifact's figures against the float model, and whether they pass."""

    name: str
    path: str
    format: str
    precision: str
    quantization: str
    bytes: int
    accuracy: float
    delta_pp: float
    agreement: float
    max_abs_diff: float
    per_class_delta_pp: list[float]
    threshold: Threshold
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def per_class_accuracy(predicted: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    return np.array(
        [np.mean(predicted[targets == c] == c) if np.any(targets == c) else np.nan for c in range(num_classes)]
    )


def compare(
    probabilities: np.ndarray,
    reference: np.ndarray,
    targets: np.ndarray,
    threshold: Threshold,
    source: np.ndarray | None = None,
    **artifact,
) -> ParityResult:
    """Measure one artifact against the float model's probabilities on the same images.

    Accuracy deltas are always against the float ``reference``. Agreement and probability
    differences are against the model the artifact was converted from: the float model itself,
    or, for quantization-aware training, the fine-tuned QAT model passed as ``source``. QAT
    changes the weights on purpose, so for it the gate asks that the conversion be faithful
    (agreement with its source) and that accuracy not drop below the float model's (a gain is
    no failure).
    """
    converted_from = reference if source is None else source
    predicted, expected = probabilities.argmax(1), reference.argmax(1)
    accuracy = float(np.mean(predicted == targets))
    delta_pp = 100.0 * (accuracy - float(np.mean(expected == targets)))
    k = reference.shape[1]
    per_class = 100.0 * (per_class_accuracy(predicted, targets, k) - per_class_accuracy(expected, targets, k))
    result = ParityResult(
        accuracy=accuracy,
        delta_pp=delta_pp,
        agreement=float(np.mean(predicted == converted_from.argmax(1))),
        max_abs_diff=float(np.max(np.abs(probabilities - converted_from))),
        per_class_delta_pp=[round(float(v), 4) for v in per_class],
        threshold=threshold,
        **artifact,
    )
    worst = result.delta_pp if source is not None else -abs(result.delta_pp)
    if worst < -threshold.max_delta_pp - 1e-9:
        bound = f"-{threshold.max_delta_pp}" if source is not None else f"±{threshold.max_delta_pp}"
        result.failures.append(f"accuracy delta {result.delta_pp:+.3f} pp exceeds {bound} pp")
    if result.agreement < threshold.min_agreement:
        result.failures.append(
            f"top-1 agreement {100 * result.agreement:.2f}% is below {100 * threshold.min_agreement:.2f}%"
        )
    return result
