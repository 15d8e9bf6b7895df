from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from parity.config import ModelConfig


class Runner(ABC):
    """Runs batches of one model version on one device."""

    def __init__(self, config: ModelConfig, path: Path):
        self.config = config
        self.path = path
        self.input_names = [t.name for t in config.inputs]
        self.output_names = [t.name for t in config.outputs]

    @abstractmethod
    def load(self) -> None:
        """Load the artifact (slow; called off the event loop)."""

    @abstractmethod
    def run(self, inputs: list[np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """Run one batch; `outputs` names the outputs wanted, in the order returned."""

    def close(self) -> None:
        """Release the model's memory and device resources."""

    @property
    def device(self) -> str:
        return self.config.runtime.device
