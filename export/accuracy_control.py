"""Accuracy-aware int8: when a post-training int8 artifact fails the gate, find out why and repair it.

(Dynamic-range TFLite artifacts, int8 weights with activations quantized on the fly, get the one
remedy that applies to them: cross-layer equalization.)

The loop NNCF's ``quantize_with_accuracy_control`` runs, for both formats and under our gate:

1. **Diagnose**: the quantization error of every quantized tensor (``export.diagnose``).
2. **Calibration choices**, cheapest first: other methods (percentile, entropy), symmetric
   activations, a larger calibration sample.
3. **Cross-layer equalization** (``export.equalize``), alone and with the best calibration.
4. **16-bit activations** on the best candidate's model (equalized or not), with min-max ranges
   (:func:`sixteen_bit`): int8 weights, int16 activations (the 16x8 scheme, see
   ``export.quantize``). The cure when the loss is spread over every activation (squeeze-excite
   and hard-swish networks), where no handful of float ops helps: the file stays small and
   integer-only, at a speed cost on runtimes without 16-bit kernels that the report shows.
5. **Float fallback** (on the best 8-bit candidate): keep the quantizer groups (a tensor's
   producer and consumers) with the worst error in float, one at a time, re-measuring after
   each; a group that does not help is put back. Stops when the gate would pass, at
   ``max_float_ops`` ops or ``max_size_share`` of the fp32 file, or after ``patience`` groups in
   a row that brought it no closer.

When plain int8 is far from the float model (it keeps under ``FAR_FROM_FLOAT`` of the confident
answers on the validation sample), 16-bit activations are tried first: on the zoo no 8-bit
calibration or equalization ever repaired such a model, and trying them cost EfficientNetB0 a
minute. Should 16-bit activations not pass, the search goes on in the usual order.

Each artifact has a time budget (``budget_s``, ``--control-budget``): once it is spent, no
further remedy starts, the best candidate so far is kept, and the report says so. Steps 2 and 3
start only within the first half of it when step 4 is to follow, so that 16-bit activations,
the remedy that repaired every zoo model the 8-bit ones could not, always get their turn. A weak model
that no remedy can rescue then costs minutes, not the hour an exhaustive search would take.

A remedy that cannot apply to a model (a converter or equalization failing on its graph) is
skipped, its reason logged and recorded in the report; it never ends the export.

Every candidate is measured against the float model on a validation sample of *training* images
that the calibration sample does not contain, with the same gate rule; the test split is left
alone until the chosen artifact faces the normal gate on it. Where plain int8 would pass on that
sample yet failed on the test split, the sample's noise is deciding, and candidates must then also
be close enough to the float model to pass the test split reliably
(:meth:`Trials.demand_reliable_passes`). A run whose int8 artifacts pass plainly never gets here and
pays nothing for it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from export.diagnose import LayerError, short_name, worst_first
from export.formats import ARTIFACTS, format_of, fp32_of
from export.formats.base import ArtifactSpec
from export.formats.base import Builder as FormatBuilder
from export.parity import Figures, ParityResult, Threshold, measure, reliable_discordance
from export.quantize import Int8Recipe
from export.sampling import validation_indices
from runtime.text import one_line

log = logging.getLogger(__name__)


REMEDIES = ("calibration", "equalization", "activations", "fallback")
# The 8-bit remedies (calibration, equalization) stop at this share of the budget when 16-bit
# activations may follow: on the zoo's NASNetMobile and DenseNet121 (2-core CPU) they had spent all
# 600 s, one entropy calibration taking 220 s, before the remedy that repaired every such model.
EIGHT_BIT_SHARE = 0.5
KEPT_FOR = "16-bit activations"
# Plain int8 keeping fewer confident answers than this goes to 16-bit activations first. The zoo's
# six int8 artifacts under it (EfficientNetB0 and B1, ResNet50: 69-79% on the test split) all ended
# with 16-bit activations, after 8-bit calibrations that kept at most 91%. Above it the order of
# cost stands: an 8-bit artifact that passes runs faster than a 16-bit one.
FAR_FROM_FLOAT = 0.8


class SampleSettings(Protocol):
    seed: int
    calibration_samples: int | None


class Builder(FormatBuilder, Protocol):
    """What accuracy control needs from an export run (``export.pipeline.Builder`` is one): what
    formats build from, a staging folder, and a way to rebuild an artifact from another recipe."""

    config: SampleSettings
    staging: Path

    def build(self, name: str, int8: Int8Recipe | None = None) -> Path: ...

    def default_int8(self) -> Int8Recipe: ...


CANNOT_RUN = "its runtime cannot run it"  # a file converters wrote with ops its interpreter lacks


@dataclass(frozen=True)
class ControlSettings:
    enabled: bool = True  # --no-accuracy-control turns it off
    remedies: tuple[str, ...] = REMEDIES  # --remedies: which to try (always in this order)
    diagnose: bool = False  # --diagnose: the per-layer report even for artifacts that pass
    max_float_ops: int = 8
    max_size_share: float = 0.35  # of the fp32 artifact of the same format ...
    min_size_headroom: float = 0.10  # ... or plain int8 plus this share of fp32, if plain int8 is already larger
    validation_samples: int = 3000
    budget_s: float = 600.0  # --control-budget: per artifact; no remedy starts once it is spent
    patience: int = 3  # float fallback stops after this many groups in a row that did not help


class BudgetSpent(Exception):
    """The artifact's time budget ran out before the next remedy could start."""


@dataclass
class Trial:
    remedy: str
    recipe: Int8Recipe
    figures: Figures
    passes: bool
    bytes: int
    seconds: float  # to build and measure: what this remedy costs an export

    def record(self) -> dict:
        return {
            "remedy": self.remedy,
            "accuracy": self.figures.accuracy,
            "delta_pp": round(self.figures.delta_pp, 4),
            "confident_agreement": self.figures.confident_agreement,
            "drift_p99": round(self.figures.drift_p99, 5),
            "passes": self.passes,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 1),
        }


class Validation:
    """Training images outside every calibration sample (``export.sampling``), with the float
    model's answers."""

    def __init__(self, builder: Builder, samples: int) -> None:
        data = builder.source.data
        chosen = validation_indices(len(data.x_train), min(samples, len(data.x_train)), builder.config.seed)
        self.images = data.x_train[chosen]
        self.targets = data.y_train[chosen]
        self.reference = builder.source.probabilities(builder.source.pixels(self.images))


def layer_errors(builder: Builder, name: str, path: Path, recipe: Int8Recipe) -> list[LayerError]:
    """The per-layer report of the int8 artifact ``name`` built from ``recipe`` at ``path``."""
    spec = ARTIFACTS[name]
    return format_of(spec).layer_errors(builder, spec, recipe, path, builder.calibration_for(recipe.samples))


def safe_layer_errors(builder: Builder, name: str, path: Path, recipe: Int8Recipe) -> list[LayerError]:
    """:func:`layer_errors`, or none (with a warning) if the debugging tools fail on this model."""
    try:
        return layer_errors(builder, name, path, recipe)
    except Exception as exc:  # the report is information: never fail an export on it
        log.warning("%s: per-layer report not available (%s: %s)", path.name, type(exc).__name__, exc)
        return []


def diagnose(builder: Builder, name: str, path: Path, result: ParityResult) -> None:
    """Attach the per-layer report to ``result`` (``--diagnose``, or a failing int8 artifact)."""
    result.layer_errors = [e.as_dict() for e in safe_layer_errors(builder, name, path, builder.default_int8())]


class Trials:
    """Builds and measures candidates of one artifact on the validation sample, within the
    artifact's time budget; remembers the remedies that could not apply, and why."""

    def __init__(self, builder: Builder, name: str, threshold: Threshold, settings: ControlSettings) -> None:
        self.builder, self.name, self.spec = builder, name, ARTIFACTS[name]
        self.path = builder.staging / self.spec.filename
        self.threshold, self.settings = threshold, settings
        self.validation = Validation(builder, settings.validation_samples)
        self.skipped: list[dict] = []
        self.started = time.monotonic()
        self.most_discordant = 1.0  # share of images right in only one model a passing candidate may have

    def demand_reliable_passes(self, plain: Trial, failed: ParityResult) -> None:
        """Plain int8 would pass on the validation sample but failed on the test split: for this
        model the sample's noise decides its verdict (on the zoo's MobileNetV3Small minimalistic,
        plain int8 gained 0.63 pp on it and lost 0.31 pp on the test split; an entropy calibration
        chosen for a 0.30 pp gain then lost 0.19 pp). From here a candidate passes only if, beyond
        the validation sample's gate, it differs from the float model on few enough images that,
        losing no accuracy, it would pass the test split's drop check 95% of the time
        (``export.parity.reliable_discordance``): closer to float, not luckier."""
        self.most_discordant = reliable_discordance(failed.images, self.threshold.max_drop_pp)
        plain.passes = plain.passes and self.reliable(plain.figures)
        log.info(
            "  plain int8 would pass on the validation sample but failed on the test split: candidates must now "
            "differ from the float model on at most %.1f%% of the images (plain int8: %.1f%%)",
            100 * self.most_discordant,
            100 * plain.figures.discordant / plain.figures.images,
        )

    def reliable(self, figures: Figures) -> bool:
        return figures.discordant <= self.most_discordant * figures.images

    def run(self, remedy: str, recipe: Int8Recipe) -> Trial | None:
        """Build ``recipe`` and measure it; None (recorded as skipped) if it cannot be built, or
        built but not run by its runtime (LiteRT has no int16 SquaredDifference kernel for the 16x8
        file of a LayerNormalization, which the converter writes all the same)."""
        started = time.monotonic()
        validation = self.validation
        step = ""  # a build failure's reason is the converter's own line
        try:
            self.builder.build(self.name, recipe)
            step = CANNOT_RUN + ": "
            run = format_of(self.spec).predictor(self.path, self.builder.info_for(self.spec))
            predictions = run(validation.images)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a remedy that cannot apply to this graph: skipped, with its reason
            reason = step + one_line(exc, 300)
            log.warning("  %s: skipped (%s)", remedy, reason[:200])
            self.skipped.append({"remedy": remedy, "reason": reason})
            return None
        figures = measure(predictions, validation.reference, validation.targets)
        passes = not figures.failures(self.threshold) and self.reliable(figures)
        log.info(
            "  %s: validation accuracy %.2f%% (%+.2f pp), confident agreement %.2f%%: %s (%.0f s)",
            remedy,
            100 * figures.accuracy,
            figures.delta_pp,
            100 * figures.confident_agreement,
            "would pass" if passes else "would fail",
            time.monotonic() - started,
        )
        return Trial(remedy, recipe, figures, passes, self.path.stat().st_size, time.monotonic() - started)

    def within_budget(self, remedy: str, recipe: Int8Recipe, share: float = 1.0) -> Trial | None:
        """:meth:`run`, unless the budget is spent (then BudgetSpent ends the search) or, for a
        remedy allowed only ``share`` of it, that share is (then it is skipped, with the reason)."""
        if self.seconds() > self.settings.budget_s:
            raise BudgetSpent(remedy)
        if self.seconds() > share * self.settings.budget_s:
            reason = f"{share:.0%} of the {self.settings.budget_s:.0f} s budget spent; the rest is kept for {KEPT_FOR}"
            log.warning("  %s: not tried (%s)", remedy, reason)
            self.skipped.append({"remedy": remedy, "reason": reason})
            return None
        return self.run(remedy, recipe)

    def seconds(self) -> float:
        return time.monotonic() - self.started


def control_accuracy(
    builder: Builder, name: str, threshold: Threshold, settings: ControlSettings, failed: ParityResult
) -> dict:
    """Repair the failing int8 artifact ``name`` in place; returns what was tried and chosen."""
    trials = Trials(builder, name, threshold, settings)
    plain = builder.default_int8()
    errors = _diagnosed(builder, name, trials.path, plain)
    worst = worst_first(errors)
    tried = [trials.run("plain post-training int8", plain)]
    if tried[0].passes:
        trials.demand_reliable_passes(tried[0], failed)
    size_limit = _size_limit(builder, trials.spec, settings, tried[0].bytes)
    try:
        chosen = _sixteen_bit_first(trials, tried) or _search(
            builder, name, plain, settings, worst, size_limit, tried, trials.within_budget
        )
    except BudgetSpent as spent:
        chosen = None
        log.warning("  time budget of %.0f s spent: %s and later remedies not tried", settings.budget_s, spent)
        trials.skipped.append({"remedy": str(spent), "reason": f"time budget of {settings.budget_s:.0f} s spent"})
    final = chosen if chosen is not None else _best(tried)
    builder.build(name, final.recipe)
    return {
        "chosen": final.remedy if final.recipe != plain else "none",
        "float_ops": list(final.recipe.float_ops),
        "recipe": final.recipe.describe(),
        "tried": [t.record() for t in tried],
        "skipped": trials.skipped,
        "budget_s": settings.budget_s,
        "seconds": round(trials.seconds(), 1),
        "before": {
            "accuracy": failed.accuracy,
            "delta_pp": failed.delta_pp,
            "confident_agreement": failed.confident_agreement,
            "drift_p99": failed.drift_p99,
        },
        "failures_before": list(failed.failures),
        "validation_images": len(trials.validation.images),
        **({"most_discordant": trials.most_discordant} if trials.most_discordant < 1 else {}),
        "layer_errors": [e.as_dict() for e in errors],
    }


def _diagnosed(builder: Builder, name: str, path: Path, plain: Int8Recipe) -> list[LayerError]:
    """The per-layer report of the plain int8 artifact (post-training int8 only), its worst logged."""
    spec = ARTIFACTS[name]
    errors = safe_layer_errors(builder, name, path, plain) if spec.post_training_int8 else []
    worst = worst_first(errors)
    if worst:
        log.info(
            "%s: worst quantized tensors: %s",
            spec.filename,
            ", ".join(f"{short_name(e.name)} ({e.sqnr_db:.1f} dB)" for e in worst[:3]),
        )
    return errors


def _search(
    builder: Builder,
    name: str,
    plain: Int8Recipe,
    settings: ControlSettings,
    worst: list[LayerError],
    size_limit: float,
    tried: list[Trial],
    trial: Callable[..., Trial | None],
) -> Trial | None:
    """The remedies in order of cost, until one would pass (appending each to ``tried``)."""
    spec, chosen = ARTIFACTS[name], None
    remedies = _remedies(spec, settings)
    share = EIGHT_BIT_SHARE if "activations" in remedies else 1.0
    if "calibration" in remedies:
        available = len(builder.source.data.x_train)
        choices = _calibration_choices(spec, plain, builder.config.calibration_samples, available)
        for label, recipe in choices:
            outcome = trial(label, recipe, share)
            tried += [outcome] if outcome else []
            if outcome and outcome.passes:
                chosen = outcome
                break
    if chosen is None and "equalization" in remedies:
        base = _best(_eight_bit(tried))
        equalized = trial("cross-layer equalization", replace(plain, equalize=True), share)
        tried += [equalized] if equalized else []
        if equalized and not equalized.passes and base.recipe != plain:
            combined = trial(f"cross-layer equalization + {base.remedy}", replace(base.recipe, equalize=True), share)
            tried += [combined] if combined else []
        chosen = next((t for t in tried if t.passes), None)
    recipe = sixteen_bit(_best(_eight_bit(tried)).recipe, plain)
    if chosen is None and "activations" in remedies and recipe not in [t.recipe for t in tried]:
        wide = trial(("cross-layer equalization + " if recipe.equalize else "") + "16-bit activations", recipe)
        tried += [wide] if wide else []
        chosen = wide if wide and wide.passes else None
    if chosen is None and "fallback" in remedies:
        base = _best(_eight_bit(tried))  # the 16x8 quantizer keeps no op float
        if base.recipe.equalize != plain.equalize:  # another graph, whose ops have other names
            worst = _worst_of(builder, name, base.recipe)
        chosen = _fallback(trial, base, worst, settings, size_limit, tried)
    return chosen


def _remedies(spec: ArtifactSpec, settings: ControlSettings) -> list[str]:
    """The remedies asked for that the artifact's format offers, in their order."""
    return [r for r in settings.remedies if r in format_of(spec).remedies(spec)]


def _sixteen_bit_first(trials: Trials, tried: list[Trial]) -> Trial | None:
    """16-bit activations, tried before the 8-bit remedies when plain int8 (``tried[0]``) is far from
    the float model; the candidate if it would pass (the 8-bit remedies then recorded as not tried)."""
    kept = tried[0].figures.confident_agreement
    if "activations" not in _remedies(trials.spec, trials.settings) or kept >= FAR_FROM_FLOAT:
        return None
    log.info("  plain int8 keeps %.1f%% of the confident answers: 16-bit activations first", 100 * kept)
    wide = trials.within_budget("16-bit activations", sixteen_bit(tried[0].recipe, tried[0].recipe))
    tried += [wide] if wide else []
    if not (wide and wide.passes):
        return None
    reason = f"plain int8 kept {100 * kept:.1f}% of the confident answers (under {FAR_FROM_FLOAT:.0%})"
    trials.skipped.append({"remedy": "8-bit calibrations and equalization", "reason": f"{reason}; 16-bit went first"})
    return wide


def sixteen_bit(base: Int8Recipe, plain: Int8Recipe) -> Int8Recipe:
    """16-bit activations on ``base``'s model (equalized or not) with min-max ranges, as LiteRT's
    16x8 quantizer calibrates. The other calibrations trade range for resolution, which 65,536
    levels do not need: percentile clips outliers, entropy fits 128 bins, symmetric halves the
    levels. On the zoo's ResNet50V2, 16-bit activations on entropy's ranges kept 99.49% of the
    confident answers (under the gate's 99.5%); EfficientNetB1 drifted 0.067 on percentile's ranges
    and 0.057 on min-max ones."""
    return replace(plain, method="minmax", symmetric=False, equalize=base.equalize, activation_bits=16)


def _worst_of(builder: Builder, name: str, recipe: Int8Recipe) -> list[LayerError]:
    """The per-layer report of the artifact ``recipe`` builds, worst first: the float fallback
    on top of an equalized model must name the ops of the equalized graph."""
    path = builder.build(name, recipe)
    return worst_first(safe_layer_errors(builder, name, path, recipe))


def _calibration_choices(
    spec: ArtifactSpec, plain: Int8Recipe, samples: int, available: int
) -> list[tuple[str, Int8Recipe]]:
    """Calibration variants in order of cost: the format's own, then a larger sample."""
    larger = min(available, max(2 * samples, 2000))
    choices = format_of(spec).calibration_choices(plain)
    if larger > samples:
        choices.append((f"{larger} calibration images", replace(plain, samples=larger)))
    return choices


def _score(trial: Trial) -> tuple:
    """How close a trial is to passing: fewer failures, then more confident answers kept, then accuracy."""
    failures = (not trial.passes, trial.figures.drop_bound_pp > 0)
    return (*failures, -trial.figures.confident_agreement, -trial.figures.accuracy)


def _best(trials: list[Trial]) -> Trial:
    return min(trials, key=_score)


def _eight_bit(trials: list[Trial]) -> list[Trial]:
    """The candidates with 8-bit activations: those the 8-bit remedies build on (plain int8 among them)."""
    return [t for t in trials if t.recipe.activation_bits == 8]


def _on_top(base: Trial, tried: list[Trial], remedy: str) -> str:
    """The name of ``remedy`` applied on top of ``base`` (plain int8, ``tried[0]``, goes unnamed)."""
    return remedy if base is tried[0] else f"{base.remedy} + {remedy}"


def _fallback(
    trial: Callable[[str, Int8Recipe], Trial | None],
    base: Trial,
    worst: list[LayerError],
    settings: ControlSettings,
    size_limit: float,
    tried: list[Trial],
) -> Trial | None:
    """Greedy float fallback on top of ``base``: keep the worst quantizer groups in float one at a
    time; a group that brings the candidate no closer to passing goes back to int8, and
    ``settings.patience`` such groups in a row end the search."""
    max_float_ops = settings.max_float_ops
    current, useless = base, 0
    for error in worst:
        new_ops = tuple(op for op in error.group if op not in current.recipe.float_ops)
        if not new_ops:
            continue
        ops = current.recipe.float_ops + new_ops
        if len(ops) > max_float_ops:
            log.info("  float fallback stops: %d ops would exceed --max-float-ops %d", len(ops), max_float_ops)
            break
        candidate = trial(
            _on_top(base, tried, f"float fallback ({len(ops)} ops, last {short_name(error.name)})"),
            replace(current.recipe, float_ops=ops),
        )
        if candidate is None:
            break
        tried.append(candidate)
        if candidate.bytes > size_limit:
            log.info("  float fallback stops: the file would exceed %.0f KiB", size_limit / 1024)
            break
        if candidate.passes:
            return candidate
        if _score(candidate) < _score(current):
            current, useless = candidate, 0
            continue
        useless += 1
        if useless >= settings.patience:
            log.info("  float fallback stops: %d groups in a row brought it no closer", useless)
            break
    return None


def _size_limit(builder: Builder, spec: ArtifactSpec, settings: ControlSettings, plain_bytes: int) -> float:
    """How large float fallback may make the file (no limit where the format has no fallback)."""
    if "fallback" not in format_of(spec).remedies(spec):
        return math.inf
    fp32_bytes = _fp32_bytes(builder, spec)
    return max(settings.max_size_share, plain_bytes / fp32_bytes + settings.min_size_headroom) * fp32_bytes


def _fp32_bytes(builder: Builder, spec: ArtifactSpec) -> int:
    """The size of the fp32 artifact of this format (built if this run did not ask for it)."""
    fp32 = fp32_of(spec)
    path = builder.staging / fp32.filename
    if not path.is_file():
        builder.build(fp32.name)
    return path.stat().st_size
