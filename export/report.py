"""Reports a reviewer reads: the status table, parity.json, parity.md, and two charts.

The status table (format, precision, status, size, accuracy, delta, the gate's figures, batch-1
latency) is printed at the end of an export and heads ``parity.md``; rows of artifacts kept from
an earlier run of the same model are marked as such. Int8 artifacts that were diagnosed get a
per-layer quantization error section and ``quantization_error.png``; repaired ones say how.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from export.diagnose import short_name  # noqa: E402
from export.parity import CONFIDENT_MARGIN, ParityResult  # noqa: E402
from runtime.artifacts import json_safe  # noqa: E402

HEADER = (
    "artifact",
    "format",
    "precision",
    "status",
    "size KiB",
    "vs fp32",
    "accuracy",
    "delta pp",
    "drop bound pp",
    "confident agr.",
    "agreement",
    "drift p99",
    "memory KiB",
    "batch-1 ms",
)
WORST_LAYERS = 8
SQNR_PLOT_CEILING = 80.0  # dB: lossless tensors are drawn at this height


def _sixteen_bit(remedy: dict) -> bool:
    """Whether accuracy control chose 16-bit activations (int8 weights) for the artifact."""
    return remedy.get("recipe", {}).get("activation_bits") == 16


def _precision(row: ParityResult | dict) -> str:
    get = row.get if isinstance(row, dict) else lambda key: getattr(row, key)
    label = get("precision") + (" (QAT)" if get("quantization") == "qat" else "")
    remedy = get("remedy") or {}
    if _sixteen_bit(remedy):
        label += "w, int16a"  # int8 weights, 16-bit activations: not the plain int8 the row name suggests
    return label + (" (repaired)" if remedy.get("chosen") not in (None, "none") else "")


def status_rows(results: list[ParityResult], carried: list[dict], latency: dict[str, float]) -> list[list[str]]:
    """One row per artifact of this run, then one per artifact kept from an earlier run."""
    fp32_size = {r.format: r.bytes for r in results if r.precision == "fp32"}
    fp32_size.update({e["format"]: e["bytes"] for e in carried if e.get("precision") == "fp32"})
    rows = []
    for r in results:
        share = f"{100 * r.bytes / fp32_size[r.format]:.0f}%" if fp32_size.get(r.format) else "–"  # 0: not built
        ms = latency.get(r.path, math.nan)
        rows.append(
            [
                r.path,
                r.format,
                _precision(r),
                "pass" if r.passed else ("FAIL" if r.images else "FAIL (not built)"),
                f"{r.bytes / 1024:,.0f}",
                share if r.bytes else "–",
                _figure(r.accuracy, "{:.2%}"),
                _figure(r.delta_pp, "{:+.2f}"),
                _figure(r.drop_bound_pp, "{:.2f}"),
                _figure(r.confident_agreement, "{:.2%}"),
                _figure(r.agreement, "{:.2%}"),
                _figure(r.drift_p99, "{:.3f}"),
                _figure(None if r.working_bytes is None else r.working_bytes / 1024, "{:,.0f}"),
                "–" if math.isnan(ms) else f"{ms:.3f}",
            ]
        )
    for e in carried:
        share = f"{100 * e['bytes'] / fp32_size[e['format']]:.0f}%" if fp32_size.get(e["format"]) else "–"
        rows.append(
            [
                e["path"],
                e["format"],
                _precision(e),
                "pass (earlier run)",
                f"{e['bytes'] / 1024:,.0f}",
                share,
                _figure(e.get("accuracy"), "{:.2%}"),
                _figure(e.get("delta_pp"), "{:+.2f}"),
                _figure(e.get("drop_bound_pp"), "{:.2f}"),
                _figure(e.get("confident_agreement"), "{:.2%}"),
                _figure(e.get("agreement"), "{:.2%}"),
                _figure(e.get("drift_p99"), "{:.3f}"),
                _figure(e["working_memory_bytes"] / 1024 if "working_memory_bytes" in e else None, "{:,.0f}"),
                "–",
            ]
        )
    return rows


def _figure(value, template: str) -> str:
    """A manifest figure, or a dash where an entry from an older release lacks it."""
    return template.format(value) if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def status_text(rows: list[list[str]]) -> str:
    """The status table as aligned plain text, for the terminal."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(HEADER, *rows)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(HEADER, widths))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _markdown_table(header, rows) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
    ]


def parity_json(results: list[ParityResult], carried: list[dict], context: dict, latency: dict[str, float]) -> str:
    rows = [{**asdict(r), "passed": r.passed, "batch1_ms": _finite(latency.get(r.path))} for r in results]
    payload = {**context, "artifacts": rows, "kept_from_earlier_run": carried}
    return json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n"


def _finite(value: float | None) -> float | None:
    return round(value, 4) if value is not None and math.isfinite(value) else None


def parity_markdown(results: list[ParityResult], carried: list[dict], context: dict, latency: dict[str, float]) -> str:
    """The status table, the gate's rule and thresholds, failures, and int8 diagnoses."""
    lines = [
        f"# Parity: {context['dataset']}",
        "",
        f"Float Keras model `{context['source']['path']}`: test accuracy **{100 * context['float_accuracy']:.2f}%** "
        f"on {context['test_images']} test images. Calibration: {context['calibration']['samples']} training images, "
        f"{context['calibration']['method']}."
        + (
            f" **Test-time augmentation in every artifact ({context['tta']})**: the float reference includes it, and "
            "batch-1 latency below is that of the averaged model."
            if context.get("tta", "none") != "none"
            else ""
        ),
        "",
        *_markdown_table(HEADER, status_rows(results, carried, latency)),
        "",
        f"Memory profile: {context['macs_per_image'] / 1e6:,.1f} M multiply-accumulates per image (every artifact "
        "computes the same graph). *memory KiB* is what running one image takes beyond the runtime library: the "
        "measured tensor arena for TFLite Micro (the smallest that runs it), and for ONNX Runtime and LiteRT the peak "
        "resident memory above the library's own in a process running only that artifact, one thread. *batch-1 ms* "
        "is the median latency on this host, one thread.",
        "",
        "The gate (for every artifact): the 95% upper bound on the accuracy drop from the images the two models "
        "disagree on (McNemar pairs, Wilson bound) within the tolerance; top-1 agreement on the images where the "
        f"float model's top probability beats its runner-up by at least {CONFIDENT_MARGIN}; and the 99th "
        "percentile of the largest probability change within bounds. Overall agreement is information only.",
        "",
        "| precision | max drop bound pp | min confident agreement | max drift p99 |",
        "|---|---:|---:|---:|",
        *(
            f"| {p} | {t['max_drop_pp']:g} | {100 * t['min_confident_agreement']:g}% | {t['max_drift']:g} |"
            for p, t in context["thresholds"].items()
        ),
        "",
    ]
    if any(r.quantization == "qat" for r in results):
        lines += [
            "QAT rows: the accuracy figures are against the float model (a gain is no failure); agreement and "
            "drift are against the fine-tuned QAT Keras model each artifact was converted from.",
            "",
        ]
    failed = [r for r in results if not r.passed]
    if failed:
        lines += ["## Failures", ""] + [f"- `{r.path}`: {'; '.join(r.failures)}" for r in failed] + [""]
    for r in results:
        if r.remedy:
            lines += _remedy_section(r)
        if r.layer_errors:
            lines += _layer_section(r)
    return "\n".join(lines)


def _remedy_section(r: ParityResult) -> list[str]:
    remedy = r.remedy
    lines = [f"## Accuracy control: `{r.path}`", ""]
    before = remedy.get("before", {})
    if before:
        lines.append(
            f"Plain post-training int8: accuracy {100 * before['accuracy']:.2f}% ({before['delta_pp']:+.2f} pp), "
            f"confident agreement {100 * before['confident_agreement']:.2f}%"
            + (f", drift {before['drift_p99']:.3f}" if "drift_p99" in before else "")
            + " on the test split; "
            f"failed: {'; '.join(remedy.get('failures_before', []))}."
        )
        lines.append("")
    lines += [
        "Remedies tried in order of cost (16-bit activations first where plain int8 is far off), "
        "each measured on a validation sample of training images:",
        "",
    ]
    rows = [
        [
            step["remedy"],
            f"{100 * step['accuracy']:.2f}%",
            f"{step['delta_pp']:+.2f}",
            f"{100 * step['confident_agreement']:.2f}%",
            f"{step['drift_p99']:.3f}",
            "would pass" if step["passes"] else "would fail",
            f"{step['seconds']:.0f}" if "seconds" in step else "",
        ]
        for step in remedy.get("tried", [])
    ]
    lines += _markdown_table(("remedy", "val accuracy", "delta pp", "confident agr.", "drift p99", "gate", "s"), rows)
    chosen = remedy.get("chosen", "none")
    float_ops = remedy.get("float_ops", [])
    lines += [
        "",
        f"Chosen: **{chosen}**"
        + (
            f", with {len(float_ops)} op(s) kept in float: " + ", ".join(f"`{op}`" for op in float_ops)
            if float_ops
            else ""
        )
        + ". The artifact then faced the normal gate on the "
        "full test split (table above).",
        "",
    ]
    if _sixteen_bit(remedy):
        lines += [
            "Its activations are 16-bit (int8 weights): the file stays small and integer-only, but runtimes "
            "without 16-bit kernels run it slower than plain int8, often slower than fp32 (batch-1 ms above).",
            "",
        ]
    if "most_discordant" in remedy:
        lines += [
            "Plain int8 would pass on the validation sample but failed on the test split, so that sample's noise "
            "decided its verdict: candidates then had to differ from the float model on at most "
            f"{100 * remedy['most_discordant']:.1f}% of the images, where one that loses no accuracy passes the "
            "test split's drop check 95% of the time.",
            "",
        ]
    skipped = remedy.get("skipped", [])
    lines += [f"- not tried: {step['remedy']}: {step['reason']}" for step in skipped] + ([""] if skipped else [])
    if "seconds" in remedy:
        lines += [f"Accuracy control took {remedy['seconds']:.0f} s of its {remedy['budget_s']:.0f} s budget.", ""]
    return lines


def _layer_section(r: ParityResult) -> list[str]:
    worst = sorted(r.layer_errors, key=lambda e: e["sqnr_db"])[:WORST_LAYERS]
    rows = [
        [f"`{short_name(e['name'])}`", e.get("op", ""), _db(e["sqnr_db"]), _db(e.get("tensor_sqnr_db"))] for e in worst
    ]
    return [
        f"## Per-layer quantization error: `{r.path}`",
        "",
        "Each activation quantizer alone (the float model's values, quantized with the int8 model's scale and zero "
        "point), on training images: quantization noise against the median channel's signal, so that one outlier "
        "channel cannot hide behind its own loudness (the whole-tensor figure, beside it, would). Higher is better; "
        "worst first:",
        "",
        *_markdown_table(("tensor", "op", "SQNR dB (typical channel)", "whole-tensor SQNR dB"), rows),
        "",
    ]


def _db(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "–"
    return "lossless" if value == math.inf else f"{value:.1f}"


def plot_layer_errors(results: list[ParityResult], path: Path) -> bool:
    """A bar chart of every diagnosed artifact's per-layer SQNR; False when there is none."""
    diagnosed = [r for r in results if r.layer_errors]
    if not diagnosed:
        return False
    fig, axes = plt.subplots(len(diagnosed), 1, figsize=(10, 3.2 * len(diagnosed)), squeeze=False)
    for ax, r in zip(axes[:, 0], diagnosed):
        values = [
            float(np.clip(e["sqnr_db"] if e["sqnr_db"] is not None else 0.0, -10.0, SQNR_PLOT_CEILING))
            for e in r.layer_errors
        ]
        worst = set(np.argsort(values)[:3])
        ax.bar(range(len(values)), values, color=["#d62728" if i in worst else "#1f77b4" for i in range(len(values))])
        ax.set_xticks(
            range(len(values)),
            [short_name(e["name"])[-32:] for e in r.layer_errors],
            rotation=60,
            ha="right",
            fontsize=6,
        )
        ax.set_ylabel("SQNR dB")
        ax.set_title(f"{r.path}: quantization error per tensor (red: worst three)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


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
