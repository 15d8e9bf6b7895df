"""Parity: an Open Inference Protocol model server with a feature store and a closed monitoring loop."""

__version__ = "0.1.0"
