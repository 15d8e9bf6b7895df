"""Training companions: the statistical promotion gate (parity.training.gate); the training
pipeline will live next to it.  See docs/gate.md."""
