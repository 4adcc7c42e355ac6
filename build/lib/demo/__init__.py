"""A Gradio web demo of the shipped artifacts, running on ``runtime`` (ONNX Runtime) only."""
