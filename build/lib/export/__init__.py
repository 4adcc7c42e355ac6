"""edgepack's export stage: gated ONNX and TFLite artifacts from a trained Keras model."""
