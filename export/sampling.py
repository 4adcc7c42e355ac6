"""The seeded samples that export draws: calibration and validation from the training split, and
the gate's subset of the test split for runtimes too slow for all of it.

Both come from one seeded order of the training split: calibration samples of any size are its
head, the validation sample is its tail. Every calibration sample a remedy asks for (the
export's own, or the larger one of the "N calibration images" remedy) is therefore disjoint from
the validation sample by construction, as long as the two fit in the split together; a split
too small for both shares images between them, which only the smallest datasets do (the
comparison is between two versions of one model, so shared images still show what
quantization changes). Nothing tuned ever sees the test split: its subset only measures.
"""

from __future__ import annotations

import numpy as np


def training_order(count: int, seed: int) -> np.ndarray:
    """The seeded order of ``count`` training images that every sample is cut from."""
    return np.random.default_rng(seed).permutation(count)


def calibration_indices(count: int, samples: int, seed: int) -> np.ndarray:
    """The first ``samples`` images of the order, sorted (the calibrators read them in file order)."""
    return np.sort(training_order(count, seed)[:samples])


def validation_indices(count: int, samples: int, seed: int) -> np.ndarray:
    """The last ``samples`` images of the order, sorted: disjoint from every calibration sample of
    at most ``count - samples`` images."""
    return np.sort(training_order(count, seed)[::-1][:samples])


def gate_subset(count: int, samples: int, seed: int) -> np.ndarray:
    """A seeded sample of ``samples`` of the ``count`` test images, sorted: the gate's images on a
    runtime too slow for the whole split (every class in its share, up to sampling noise)."""
    return np.sort(np.random.default_rng([seed, count]).permutation(count)[:samples])
