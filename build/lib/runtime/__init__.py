"""edgepack's runtime: classify images with an exported ONNX model, using ONNX Runtime only.

This package ships to devices. It depends on onnxruntime, numpy and Pillow, and never imports
TensorFlow or any other part of the project.
"""

from runtime.errors import InputError, ModelError, RuntimeFailure

__all__ = ["Classifier", "InputError", "ModelError", "RuntimeFailure"]


def __getattr__(name: str):
    """Import the Classifier (and with it onnxruntime) on first use only, so that the light
    modules (preprocessing, metadata, manifests) stay cheap to import for other tools."""
    if name == "Classifier":
        from runtime.classifier import Classifier

        return Classifier
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
