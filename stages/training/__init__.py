"""Training: model presets, devices and seeds, the resume state, and the MLflow run of a training."""
