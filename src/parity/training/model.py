"""The reference model for tabular features: a multilayer perceptron.

`TabularMLP` maps the feature matrix `[batch, N]` (float32, the feature service's features in its
order) to one logit per row.  `ScoringModel` wraps it into what is exported and served:

- NaN inputs become 0.  A feature VALUE may be NaN (the example's `risk_score` is NaN for some
  merchants; a null, by contrast, is a missing feature and follows the service's `on_missing`), and
  the server passes it to the model as it is; doing the replacement inside the graph (ONNX
  `IsNaN` + `Where`) means training, ONNX Runtime and the server all see the same thing;
- the output is `sigmoid(logit)`, a probability, for a binary label; the raw value for regression.

No preprocessing is fitted outside the model: the features come from the feature store's shared
transforms, which already scale what needs scaling, and the served model takes exactly them.  With
`model.input_norm: batchnorm` the first layer is a `BatchNorm1d` over the inputs -- a layer of the
model, learned in training and exported in the graph (ONNX `BatchNormalization` with the running
statistics), so the server applies it too; the default is `none`.
"""

from __future__ import annotations

import torch
from torch import nn


class TabularMLP(nn.Module):
    def __init__(self, n_features: int, hidden: tuple[int, ...] = (64, 32), dropout: float = 0.0, input_norm: str = "none"):
        super().__init__()
        layers: list[nn.Module] = []
        if input_norm == "batchnorm":
            # a layer of the model, learned in training and exported in the graph (ONNX
            # BatchNormalization with the running statistics): the served model still takes the
            # service's features exactly as the feature store computes them
            layers.append(nn.BatchNorm1d(n_features))
        elif input_norm != "none":
            raise ValueError(f"input_norm must be 'batchnorm' or 'none', not {input_norm!r}")
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.n_features = n_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
        return self.net(x)


class ScoringModel(nn.Module):
    """What is exported: features `[batch, N]` -> score `[batch, 1]` (a probability for a binary task)."""

    def __init__(self, mlp: TabularMLP, task: str):
        super().__init__()
        self.mlp = mlp
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mlp(x)
        return torch.sigmoid(out) if self.task == "binary" else out


__all__ = ["ScoringModel", "TabularMLP"]
