"""Quantization-aware fine-tuning with tensorflow-model-optimization.

tfmot only supports tf_keras (Keras 2), so the trained Keras 3 model is rebuilt layer for layer
in tf_keras from the same architecture builder, its weights carried over, then wrapped with fake
quantization and fine-tuned briefly at a small learning rate on the training split (the images
training held out, as its ``metrics.json`` records them, are left out again).
"""

from __future__ import annotations

import logging

import keras
import numpy as np

from export.source import Training
from train.datasets import Dataset, train_val_split
from train.models import build_model

log = logging.getLogger(__name__)


def quantization_aware_model(
    model: keras.Model,
    trained: Training,
    data: Dataset,
    epochs: int = 1,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
):
    """A tf_keras model with fake-quantized weights and activations, fine-tuned from ``model``."""
    import tensorflow_model_optimization as tfmot
    import tf_keras

    tf_keras.utils.set_random_seed(trained.seed)
    twin = build_model(trained.arch, data.input_shape, data.num_classes, tf_keras)
    twin.set_weights(model.get_weights())
    probe = data.x_test[:16].astype(np.float32) / 255.0
    drift = float(np.max(np.abs(twin(probe, training=False).numpy() - model(probe, training=False).numpy())))
    if drift > 1e-4:
        raise RuntimeError(
            f"the tf_keras rebuild of {trained.arch} differs from the Keras 3 model (max diff {drift:.2g})"
        )
    quantized = tfmot.quantization.keras.quantize_model(twin)
    quantized.compile(
        optimizer=tf_keras.optimizers.SGD(learning_rate, momentum=0.9),
        loss=tf_keras.losses.CategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    (x_train, y_train), _ = train_val_split(data.x_train, data.y_train, trained.val_fraction, trained.seed)
    log.info("quantization-aware fine-tuning: %d epoch(s) on %d images", epochs, len(x_train))
    quantized.fit(
        x_train.astype(np.float32) / 255.0,
        np.eye(data.num_classes, dtype=np.float32)[y_train],
        batch_size=batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=2,
    )
    return quantized
