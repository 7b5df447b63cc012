"""The model registry: a version per training, promotion to champion behind a gate."""
