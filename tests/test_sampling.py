"""Calibration and validation samples: one seeded order, disjoint by construction."""

from __future__ import annotations

import numpy as np
import pytest

from export.accuracy_control import ControlSettings, _calibration_choices
from export.formats import ARTIFACTS
from export.quantize import Int8Recipe
from export.sampling import calibration_indices, validation_indices

INT8 = [name for name, spec in ARTIFACTS.items() if spec.post_training_int8]  # every format's


@pytest.mark.parametrize("count", [50_000, 60_000])  # CIFAR-10's and Fashion-MNIST's training splits
@pytest.mark.parametrize("samples", [1, 500, 1000, 5000])
@pytest.mark.parametrize("artifact", INT8)
def test_every_calibration_sample_a_remedy_draws_is_disjoint_from_the_validation_sample(count, samples, artifact):
    validation = set(validation_indices(count, ControlSettings.validation_samples, seed=0).tolist())
    remedies = _calibration_choices(ARTIFACTS[artifact], Int8Recipe(), samples, count)
    sizes = [samples] + [recipe.samples for _, recipe in remedies if recipe.samples]
    assert len(sizes) == 2  # the export's own sample and the larger one of the "N calibration images" remedy
    for size in sizes:
        calibration = calibration_indices(count, size, seed=0)
        assert len(set(calibration.tolist())) == size and not validation & set(calibration.tolist())
    assert len(validation) == ControlSettings.validation_samples


def test_samples_are_seeded_sorted_and_grow_by_keeping_what_they_had():
    small, large = calibration_indices(1000, 100, seed=3), calibration_indices(1000, 200, seed=3)
    assert np.array_equal(small, calibration_indices(1000, 100, seed=3)) and set(small) <= set(large)
    assert np.all(np.diff(small) > 0) and np.all(np.diff(validation_indices(1000, 300, seed=3)) > 0)
    assert not np.array_equal(small, calibration_indices(1000, 100, seed=4))


def test_a_split_too_small_for_both_shares_images_rather_than_failing():
    validation, calibration = validation_indices(100, 100, seed=0), calibration_indices(100, 50, seed=0)
    assert len(validation) == 100 and set(calibration.tolist()) <= set(validation.tolist())
