"""CPU latency benchmarks of the exported artifacts against the float Keras model.

``python -m benchmarks`` measures every contender (Keras, LiteRT, ONNX Runtime through the
runtime and bare) per batch size and thread count, plus peak memory and cold start, and writes
``reports/bench-<dataset>.json``, ``.md`` and ``.png``.
"""
