"""edgepack's runtime: classify images with an exported ONNX model, using ONNX Runtime only.

This package ships to devices. It depends on onnxruntime, numpy and Pillow, and never imports
TensorFlow or any other part of the project.
"""

from runtime.classifier import Classifier
from runtime.errors import InputError, ModelError, RuntimeFailure

__all__ = ["Classifier", "InputError", "ModelError", "RuntimeFailure"]
