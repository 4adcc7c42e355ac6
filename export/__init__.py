"""edgepack's export stage: gated ONNX and TFLite artifacts from a trained Keras model.

``from export import export_model`` is the Python API (``export.api``). It is loaded on first use,
so that importing a light module of this package (the format registry) does not load TensorFlow.
"""

from __future__ import annotations

__all__ = ["ExportReport", "export_model", "export_release"]


def __getattr__(name: str):
    if name in __all__:
        from export import api

        return getattr(api, name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
