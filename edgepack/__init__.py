"""edgepack: Keras image classifiers to quantized, accuracy-gated ONNX and TFLite artifacts.

The stages are packages of their own (``train``, ``export``, ``runtime``, ``benchmarks``,
``demo``); this one holds the ``edgepack`` command that runs any of them.
"""
