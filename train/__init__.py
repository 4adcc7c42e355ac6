"""edgepack's training stage: dataset registry, CNN architectures and the training loop.

``from train import train_model`` is the Python API (``train.api``). It is loaded on first use, so
that importing a light module of this package (the dataset registry) does not load TensorFlow.
"""

from __future__ import annotations

__all__ = ["TrainReport", "train_model"]


def __getattr__(name: str):
    if name in __all__:
        from train import api

        return getattr(api, name)
    raise AttributeError(f"module 'train' has no attribute {name!r}")
