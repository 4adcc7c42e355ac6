"""The parity gate: is an artifact as good as the float model, for any model, not only accurate ones?

Comparing top-1 agreement over all test images against a fixed threshold punishes honest models:
where the float model itself hesitates between two classes (a near-tie), any rounding flips the
answer, and a 57%-accurate model has thousands of near-ties. So the gate asks three questions
that do not depend on how accurate or how sure the model is:

1. **Is accuracy kept, beyond sampling noise?** Only the images on which the two models differ
   say anything about the difference (McNemar): ``b`` the float model gets right and the artifact
   wrong, ``c`` the reverse. Given ``m = b + c`` such images, ``b`` is binomial in ``m``; the one-sided
   95% Wilson upper bound on its share gives an upper bound on the accuracy drop
   ``(b - c) / n``. The artifact passes if that bound is within ``max_drop_pp``: the test split
   must *show* that the artifact is no worse than the tolerance, not merely fail to show damage.
2. **Are confident answers kept?** Top-1 agreement among the images where the float model's top
   probability beats its runner-up by at least ``CONFIDENT_MARGIN``. A conversion that damages
   the model changes answers the float model was sure of; rounding only flips near-ties.
3. **Are probabilities kept?** The 99th percentile over images of the largest change of any
   class probability (the drift), so that one odd image cannot fail an artifact but a
   systematically shifted output does.

Overall agreement, the accuracy delta, per-class deltas and the largest change are reported as
information. For quantization-aware training the fine-tuned QAT model, not the float model, is
what the artifact was converted from: questions 2 and 3 compare against it, while question 1
still compares accuracy with the float model (a gain is no failure).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

CONFIDENT_MARGIN = 0.2  # top-1 minus runner-up probability of the float model
Z_95_ONE_SIDED = 1.6448536269514722
DRIFT_PERCENTILE = 99.0


@dataclass(frozen=True)
class Threshold:
    """What an artifact of one precision must show (see the module docstring)."""

    max_drop_pp: float  # upper 95% bound on the accuracy drop, percentage points
    min_confident_agreement: float  # share of confident float answers kept
    max_drift: float  # 99th-percentile largest probability change

    def failed_checks(self, drop_bound_pp: float, confident_agreement: float, drift_p99: float) -> list[str]:
        """Which of the three checks ("drop", "confident", "drift") these figures fail: the one place
        the tolerances live, for a fresh measurement and for figures recorded in a manifest alike."""
        checks = {
            "drop": drop_bound_pp > self.max_drop_pp + 1e-9,
            "confident": confident_agreement < self.min_confident_agreement,
            "drift": drift_p99 > self.max_drift + 1e-12,
        }
        return [name for name, failed in checks.items() if failed]


DEFAULT_THRESHOLDS: dict[str, Threshold] = {
    "fp32": Threshold(0.1, 0.999, 0.01),
    "fp16": Threshold(0.1, 0.999, 0.02),
    "dynamic": Threshold(0.5, 0.995, 0.15),
    "int8": Threshold(0.5, 0.995, 0.15),
}
THRESHOLD_SYNTAX = "PRECISION=MAX_DROP_PP:MIN_CONFIDENT_AGREEMENT[:MAX_DRIFT]"


def parse_thresholds(text: str) -> dict[str, Threshold]:
    """``int8=0.5:0.995:0.15,fp32=0.1:0.999`` -> thresholds, starting from the defaults.

    Every figure must be finite and in its range (a NaN would silently disable its check)."""
    thresholds = dict(DEFAULT_THRESHOLDS)
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            precision, values = item.split("=")
            if precision not in DEFAULT_THRESHOLDS:
                raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(DEFAULT_THRESHOLDS)}")
            figures = [float(v) for v in values.split(":")]
            if not 2 <= len(figures) <= 3:
                raise ValueError("two or three figures")
            drop, agreement = figures[:2]
            drift = figures[2] if len(figures) == 3 else DEFAULT_THRESHOLDS[precision].max_drift
            if not all(math.isfinite(f) for f in (drop, agreement, drift)):
                raise ValueError("figures must be finite numbers")
            if not 0 <= drop <= 100:
                raise ValueError(f"MAX_DROP_PP {drop} is outside 0..100")
            if not 0 <= agreement <= 1:
                raise ValueError(f"MIN_CONFIDENT_AGREEMENT {agreement} is outside 0..1")
            if not 0 <= drift <= 1:
                raise ValueError(f"MAX_DRIFT {drift} is outside 0..1")
            thresholds[precision] = Threshold(drop, agreement, drift)
        except ValueError as exc:
            raise ValueError(f"bad threshold {item!r}: expected {THRESHOLD_SYNTAX} ({exc})") from None
    return thresholds


def wilson_upper(successes: int, trials: int, z: float = Z_95_ONE_SIDED) -> float:
    """One-sided upper confidence bound of a binomial share (Wilson score); 0 trials -> 0."""
    if trials == 0:
        return 0.0
    share = successes / trials
    centre = share + z * z / (2 * trials)
    spread = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials))
    return min(1.0, (centre + spread) / (1 + z * z / trials))


def drop_upper_bound_pp(float_right: np.ndarray, artifact_right: np.ndarray) -> float:
    """Upper 95% bound on accuracy(float) - accuracy(artifact), in percentage points (McNemar pairs)."""
    b = int(np.sum(float_right & ~artifact_right))
    c = int(np.sum(~float_right & artifact_right))
    m = b + c
    return 100.0 * (2 * wilson_upper(b, m) - 1) * m / len(float_right) if m else 0.0


def reliable_discordance(images: int, max_drop_pp: float) -> float:
    """The largest share of images right in only one model at which an artifact that loses no
    accuracy at all passes the drop check on ``images`` images 95% of the time.

    With a share ``q`` of such images and no true drop, the observed drop is noise of standard
    deviation ``s = sqrt(q / images)`` and the bound adds about ``Z * s`` to it, so the check passes
    when the noise stays under ``max_drop - Z * s``: 95% of the time if ``max_drop >= 2 * Z * s``.
    On 10,000 images and 0.5 pp that is 2.3%: a weak model's 8-bit artifact whose answers differ on
    5% of the images fails the drop check a quarter of the time even when it loses nothing."""
    return images * (max_drop_pp / (200.0 * Z_95_ONE_SIDED)) ** 2


def top_margin(probabilities: np.ndarray) -> np.ndarray:
    """Top probability minus the runner-up's, per row."""
    top_two = np.sort(probabilities, axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0]


def per_class_accuracy(predicted: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    return np.array(
        [np.mean(predicted[targets == c] == c) if np.any(targets == c) else np.nan for c in range(num_classes)]
    )


@dataclass
class Figures:
    """The gate's measurements of candidate probabilities against a reference, on labelled images."""

    accuracy: float
    delta_pp: float
    drop_bound_pp: float
    agreement: float
    confident_agreement: float
    confident_images: int
    drift_p99: float
    max_abs_diff: float
    discordant: int
    images: int

    def failures(self, threshold: Threshold) -> list[str]:
        messages = {
            "drop": f"accuracy drop could reach {self.drop_bound_pp:.2f} pp (95% bound: of {self.images} images, "
            f"{self.discordant} are right in only one model; observed {-self.delta_pp:+.2f} pp), over "
            f"{threshold.max_drop_pp:g} pp",
            "confident": f"confident top-1 agreement {100 * self.confident_agreement:.2f}% of "
            f"{self.confident_images} images is below {100 * threshold.min_confident_agreement:g}%",
            "drift": f"probability drift {self.drift_p99:.3f} (99th percentile) exceeds {threshold.max_drift:g}",
        }
        failed = threshold.failed_checks(self.drop_bound_pp, self.confident_agreement, self.drift_p99)
        return [messages[check] for check in failed]


@dataclass
class ParityResult(Figures):
    """An artifact's figures against the float model, and whether they pass."""

    name: str
    path: str
    format: str
    precision: str
    quantization: str
    bytes: int
    per_class_delta_pp: list[float]
    threshold: Threshold
    failures: list[str] = field(default_factory=list)
    remedy: dict = field(default_factory=dict)
    layer_errors: list[dict] = field(default_factory=list)
    target: dict = field(default_factory=dict)  # the format's figures on its target (export.formats)
    working_bytes: int | None = None  # memory to run one image beyond the runtime (Format.working_memory)

    @property
    def passed(self) -> bool:
        return not self.failures


def measure(
    probabilities: np.ndarray, reference: np.ndarray, targets: np.ndarray, source: np.ndarray | None = None
) -> Figures:
    """Accuracy figures against ``reference`` (the float model); fidelity figures against
    ``source`` (what the artifact was converted from: the float model unless QAT)."""
    converted_from = reference if source is None else source
    predicted, expected = probabilities.argmax(1), reference.argmax(1)
    artifact_right, float_right = predicted == targets, expected == targets
    same = predicted == converted_from.argmax(1)
    confident = top_margin(converted_from) >= CONFIDENT_MARGIN
    drift = np.max(np.abs(probabilities - converted_from), axis=1) if len(probabilities) else np.zeros(1)
    return Figures(
        accuracy=float(np.mean(artifact_right)),
        delta_pp=100.0 * float(np.mean(artifact_right) - np.mean(float_right)),
        drop_bound_pp=drop_upper_bound_pp(float_right, artifact_right),
        agreement=float(np.mean(same)),
        confident_agreement=float(np.mean(same[confident])) if confident.any() else 1.0,
        confident_images=int(confident.sum()),
        drift_p99=float(np.percentile(drift, DRIFT_PERCENTILE)),
        max_abs_diff=float(np.max(drift)),
        discordant=int(np.sum(float_right != artifact_right)),
        images=len(targets),
    )


def compare(
    probabilities: np.ndarray,
    reference: np.ndarray,
    targets: np.ndarray,
    threshold: Threshold,
    source: np.ndarray | None = None,
    **artifact,
) -> ParityResult:
    """Measure one artifact against the float model's probabilities on the same images and
    apply the gate (see the module docstring)."""
    figures = measure(probabilities, reference, targets, source)
    k = reference.shape[1]
    predicted, expected = probabilities.argmax(1), reference.argmax(1)
    per_class = 100.0 * (per_class_accuracy(predicted, targets, k) - per_class_accuracy(expected, targets, k))
    return ParityResult(
        **vars(figures),
        per_class_delta_pp=[round(float(v), 4) for v in per_class],
        threshold=threshold,
        failures=figures.failures(threshold),
        **artifact,
    )
