"""The parity gate's rule, on probabilities built to the cases it must tell apart."""

from __future__ import annotations

import json

import numpy as np
import pytest

from export.parity import (
    CONFIDENT_MARGIN,
    DEFAULT_THRESHOLDS,
    Threshold,
    compare,
    drop_upper_bound_pp,
    measure,
    parse_thresholds,
    reliable_discordance,
    top_margin,
    wilson_upper,
)

SPEC = dict(name="a", path="a.onnx", format="onnx", precision="int8", quantization="ptq", bytes=1)
N, K = 10_000, 10


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def weak_model():
    """A 57%-accurate 10-class float model with many near-ties, as in the report that motivated the rule."""
    rng = np.random.default_rng(0)
    targets = rng.integers(0, K, N)
    logits = rng.normal(0, 1.0, (N, K))
    logits[np.arange(N), targets] += 1.6
    probabilities = softmax(logits)
    return probabilities, targets


def flip_near_ties(probabilities: np.ndarray, share: float, seed: int = 1) -> np.ndarray:
    """Swap top-1 and runner-up on ``share`` of the images, choosing only near-ties (margin < 0.02)."""
    rng = np.random.default_rng(seed)
    out = probabilities.copy()
    ties = np.flatnonzero(top_margin(probabilities) < 0.02)
    chosen = rng.choice(ties, int(share * len(out)), replace=False)
    order = np.argsort(-out[chosen], axis=1)
    top, second = order[:, 0], order[:, 1]
    out[chosen, top], out[chosen, second] = probabilities[chosen, second], probabilities[chosen, top]
    return out


def test_near_ties_flipped_by_rounding_pass(weak_model):
    probabilities, targets = weak_model
    assert 0.5 < np.mean(probabilities.argmax(1) == targets) < 0.65
    artifact = flip_near_ties(probabilities, 0.036)
    result = compare(artifact, probabilities, targets, DEFAULT_THRESHOLDS["int8"], **SPEC)
    assert result.agreement == pytest.approx(0.964, abs=1e-3)  # the old fixed 99% rule failed this
    assert abs(result.delta_pp) < 0.5 and result.confident_agreement == 1.0
    assert result.passed, result.failures


def test_changed_confident_answers_fail(weak_model):
    probabilities, targets = weak_model
    rng = np.random.default_rng(2)
    artifact = probabilities.copy()
    confident = np.flatnonzero(top_margin(probabilities) >= CONFIDENT_MARGIN)
    chosen = rng.choice(confident, len(confident) // 50, replace=False)  # 2% of confident answers moved
    artifact[chosen] = np.roll(artifact[chosen], 1, axis=1)
    result = compare(artifact, probabilities, targets, DEFAULT_THRESHOLDS["int8"], **SPEC)
    assert not result.passed
    assert any("confident top-1 agreement" in failure for failure in result.failures)


def test_a_real_accuracy_loss_fails_even_when_confident_answers_stay(weak_model):
    """Near-ties resolved systematically against the truth: no confident change, but 1 pp lost."""
    probabilities, targets = weak_model
    artifact = probabilities.copy()
    ties = np.flatnonzero((top_margin(probabilities) < 0.1) & (probabilities.argmax(1) == targets))[:100]
    wrong = (targets[ties] + 1) % K
    artifact[ties, wrong] = artifact[ties].max(axis=1) + 0.01
    result = compare(artifact, probabilities, targets, DEFAULT_THRESHOLDS["int8"], **SPEC)
    assert result.confident_agreement == 1.0 and result.delta_pp == pytest.approx(-1.0)
    assert len(result.failures) == 1 and "accuracy drop could reach" in result.failures[0]


def test_a_shifted_output_fails_on_drift(weak_model):
    probabilities, targets = weak_model
    artifact = 0.6 * probabilities + 0.4 / K  # same ranking, flattened probabilities
    result = compare(artifact, probabilities, targets, DEFAULT_THRESHOLDS["int8"], **SPEC)
    assert result.agreement == 1.0
    assert [f for f in result.failures if "drift" in f] and len(result.failures) == 1


def test_drop_bound_is_exact_without_disagreement_and_widens_with_it():
    right = np.ones(1000, bool)
    assert drop_upper_bound_pp(right, right) == 0.0
    artifact = right.copy()
    artifact[:3] = False  # three losses, no gains: the drop cannot exceed what was seen
    assert drop_upper_bound_pp(right, artifact) == pytest.approx(0.3)
    mixed_float, mixed_artifact = right.copy(), right.copy()
    mixed_float[:50] = False  # 50 wins and 50 losses: no change, but an uncertain one
    mixed_artifact[50:100] = False
    assert 1.0 < drop_upper_bound_pp(mixed_float, mixed_artifact) < 2.0  # about 1.645 standard errors of 1 pp
    assert wilson_upper(0, 0) == 0.0 and wilson_upper(5, 5) == pytest.approx(1.0) and 0.5 < wilson_upper(50, 100) < 0.6


def lossless_pass_rate(share: float, runs: int = 2000) -> float:
    """How often the drop check on N images passes an artifact that loses nothing: its ``share`` of
    images right in only one model split evenly in expectation, by chance in each run."""
    rng = np.random.default_rng(0)
    differing = round(share * N)
    passes = 0
    for _ in range(runs):
        losses = rng.binomial(differing, 0.5)
        float_right, artifact_right = np.ones(N, bool), np.ones(N, bool)
        artifact_right[:losses] = False
        float_right[losses:differing] = False
        passes += drop_upper_bound_pp(float_right, artifact_right) <= 0.5
    return passes / runs


def test_the_reliable_discordance_is_where_a_lossless_artifact_passes_95_percent_of_the_time():
    share = reliable_discordance(N, 0.5)
    assert share == pytest.approx(0.0231, abs=1e-4)
    assert 0.93 <= lossless_pass_rate(share) <= 0.97
    assert lossless_pass_rate(0.05) < 0.8  # a weak model's 8-bit artifact: a coin weighted 3 to 1


def test_measure_reports_counts(weak_model):
    probabilities, targets = weak_model
    figures = measure(flip_near_ties(probabilities, 0.01), probabilities, targets)
    assert figures.images == N and 0 < figures.discordant <= 100
    assert figures.confident_images == int(np.sum(top_margin(probabilities) >= CONFIDENT_MARGIN))


def test_thresholds_parse_and_refuse_what_would_disable_the_gate():
    assert parse_thresholds("int8=1.0:0.99")["int8"] == Threshold(1.0, 0.99, DEFAULT_THRESHOLDS["int8"].max_drift)
    assert parse_thresholds("fp16=0.2:0.998:0.05")["fp16"] == Threshold(0.2, 0.998, 0.05)
    assert parse_thresholds("")["fp32"] == DEFAULT_THRESHOLDS["fp32"]
    for bad in ("int8=nan:-1", "int8=inf:0.99", "int8=0.5:1.5", "int8=-1:0.9", "int8=0.5:0.9:2", "int8=lots", "x=1:1"):
        with pytest.raises(ValueError, match="PRECISION=MAX_DROP_PP:MIN_CONFIDENT_AGREEMENT"):
            parse_thresholds(bad)


def test_nan_thresholds_are_a_usage_error_on_the_command_line(capsys):
    from export.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main(["--dataset", "fashion_mnist", "--thresholds", "int8=nan:-1"])
    assert stop.value.code == 2
    assert "figures must be finite" in capsys.readouterr().err


def test_reports_are_strict_json(weak_model):
    from export.report import parity_json

    probabilities, targets = weak_model
    result = compare(probabilities, probabilities, targets, DEFAULT_THRESHOLDS["int8"], **SPEC)
    result.per_class_delta_pp[0] = float("nan")  # a class absent from a small test split
    result.layer_errors = [{"name": "t", "sqnr_db": float("inf")}]
    text = parity_json([result], [], {"dataset": "d"}, {"a.onnx": float("nan")})
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
