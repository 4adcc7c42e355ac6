"""edge_airbench's initialization (Jordan 2024): patch whitening from data, identity convolutions.

* Patch whitening (after Coates & Ng): the first layer sees every 2x2 patch; its filters are the
  eigenvectors of the patches' covariance, each divided by the square root of its eigenvalue,
  and their negatives (so a ReLU after it keeps every direction). The input reaches the first
  trained layer decorrelated and at unit scale. Computed once from training images, never trained.
* Identity (Dirac) start: in every 3x3 convolution, the first ``min(in, out)`` filters start as
  the identity on their input channel, so at initialization each layer passes its input on and
  the network trains like a shallow one first.
"""

from __future__ import annotations

import keras
import numpy as np

EPSILON = 5e-4  # airbench's, relative to the patches' mean variance


def whitening_weights(images: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Kernel (size, size, C, 2*size*size*C) and bias for uint8 NxHxWxC images scaled to [0, 1].

    The bias subtracts the patch mean, so the layer sees centred patches though the model is fed
    plain [0, 1] pixels.
    """
    pixels = images.astype(np.float64) / 255.0
    patches = np.lib.stride_tricks.sliding_window_view(pixels, (size, size), axis=(1, 2))  # N,H',W',C,kh,kw
    patches = patches.transpose(0, 1, 2, 4, 5, 3).reshape(-1, size * size * pixels.shape[-1])  # (kh, kw, C)
    mean = patches.mean(axis=0)
    covariance = np.cov(patches, rowvar=False)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    epsilon = EPSILON * float(np.mean(np.diag(covariance)))
    filters = eigenvectors / np.sqrt(np.maximum(eigenvalues, 0.0) + epsilon)  # columns: one filter each
    filters = np.concatenate([filters, -filters], axis=1)
    kernel = filters.reshape(size, size, pixels.shape[-1], -1)
    bias = -(mean @ filters)
    return kernel.astype(np.float32), bias.astype(np.float32)


def init_whitening(layer: keras.layers.Conv2D, images: np.ndarray, samples: int = 5000, seed: int = 0) -> None:
    """Set ``layer`` from a seeded sample of training images."""
    chosen = np.random.default_rng(seed).permutation(len(images))[:samples]
    kernel, bias = whitening_weights(images[np.sort(chosen)], layer.kernel_size[0])
    layer.set_weights([kernel, bias])


def init_identity(layer: keras.layers.Conv2D) -> None:
    """Make the first ``min(in, out)`` filters of a square-kernel convolution pass their input channel on."""
    kernel, *rest = layer.get_weights()
    size, _, channels_in, channels_out = kernel.shape
    for channel in range(min(channels_in, channels_out)):
        kernel[..., channel] = 0.0
        kernel[size // 2, size // 2, channel, channel] = 1.0
    layer.set_weights([kernel, *rest])


def init_airbench(
    model: keras.Model, images: np.ndarray, whiten_layer: str, seed: int, whiten: bool = True, identity: bool = True
) -> None:
    """Whitening for ``whiten_layer``, identity starts for every other trainable 3x3 convolution.

    Without ``whiten`` the first layer keeps its random start and trains like the others (the
    ablation's variant); without ``identity`` the convolutions keep theirs."""
    for layer in model.layers:
        if layer.name == whiten_layer:
            if whiten:
                init_whitening(layer, images, seed=seed)
            else:
                layer.trainable = True
        elif identity and type(layer) is keras.layers.Conv2D and layer.trainable and layer.kernel_size == (3, 3):
            init_identity(layer)
