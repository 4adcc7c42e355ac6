"""A full-integer model's input and output as TFLite defines them: ``real = scale * (q - zero)``.

LiteRT and TFLite Micro run the same files, so both wrappers convert through these two functions.
"""

from __future__ import annotations

import numpy as np


def to_integers(values: np.ndarray, scale: float, zero: int, dtype) -> np.ndarray:
    """Real values as the integer tensor ``dtype`` holds them, rounded and clipped to its range."""
    limits = np.iinfo(dtype)
    return np.clip(np.rint(values / scale + zero), limits.min, limits.max).astype(dtype)


def to_reals(values: np.ndarray, scale: float, zero: int) -> np.ndarray:
    """An integer tensor's values as the real numbers they stand for."""
    return (values.astype(np.float32) - zero) * np.float32(scale)
