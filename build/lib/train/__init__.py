"""edgepack's training stage: dataset registry, CNN architectures and the training loop."""
