"""Training: the labelled corpus, one Keras model per variant, tracked in MLflow."""
