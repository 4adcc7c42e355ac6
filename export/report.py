"""Parity reports a reviewer reads: parity.json, parity.md and the int8 confusion matrix."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from export.parity import ParityResult  # noqa: E402


def parity_json(results: list[ParityResult], context: dict) -> str:
    rows = [{**asdict(r), "passed": r.passed} for r in results]
    return json.dumps({**context, "artifacts": rows}, indent=2) + "\n"


def parity_markdown(results: list[ParityResult], context: dict) -> str:
    """A table per artifact: size (and share of fp32), accuracy, delta, agreement, verdict."""
    fp32_size = {r.format: r.bytes for r in results if r.precision == "fp32"}
    lines = [
        f"# Parity: {context['dataset']}",
        "",
        f"Float Keras model: test accuracy **{100 * context['float_accuracy']:.2f}%** on "
        f"{context['test_images']} test images. Calibration: {context['calibration']['samples']} training images, "
        f"{context['calibration']['method']}.",
        "",
        "| artifact | format | precision | size KiB | vs fp32 | accuracy | delta pp | agreement | max abs diff "
        "| result |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        share = f"{100 * r.bytes / fp32_size[r.format]:.0f}%" if r.format in fp32_size else "–"
        verdict = "pass" if r.passed else "**FAIL**: " + "; ".join(r.failures)
        lines.append(
            f"| {r.path} | {r.format} | {r.precision}{' (QAT)' if r.quantization == 'qat' else ''} | "
            f"{r.bytes / 1024:.1f} | {share} | {100 * r.accuracy:.2f}% | {r.delta_pp:+.2f} | "
            f"{100 * r.agreement:.2f}% | {r.max_abs_diff:.4f} | {verdict} |"
        )
    lines += [
        "",
        "Thresholds: "
        + ", ".join(
            f"{p} |delta| <= {t.max_delta_pp} pp and agreement >= {100 * t.min_agreement:g}%"
            for p, t in context["thresholds"].items()
        )
        + ".",
        "",
    ]
    if any(r.quantization == "qat" for r in results):
        lines += [
            "QAT rows: the delta is against the float model and only a loss fails; agreement and max abs diff "
            "are against the fine-tuned QAT Keras model each artifact was converted from.",
            "",
        ]
    return "\n".join(lines)


def plot_confusion(predicted: np.ndarray, targets: np.ndarray, labels: tuple[str, ...], title: str, path: Path) -> None:
    """Confusion matrix with counts, rows the true class."""
    k = len(labels)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (targets, predicted), 1)
    fig, ax = plt.subplots(figsize=(0.6 * k + 2.5, 0.6 * k + 2))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = matrix.max() or 1
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                matrix[i, j],
                ha="center",
                va="center",
                fontsize=7,
                color="white" if matrix[i, j] > top / 2 else "black",
            )
    ax.set_title(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
