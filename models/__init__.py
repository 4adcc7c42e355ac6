"""The shipped release: ``<dataset>/manifest.json`` and the artifacts it lists.

A package only so that ``pip install .`` carries the int8 ONNX models and their manifests to a
device; ``runtime`` finds them here by default (``runtime.artifacts.default_models_dir``).
"""
