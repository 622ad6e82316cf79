"""Multi-layer perceptron: (Linear -> [norm] -> activation -> [dropout]) per hidden layer, then a Linear head."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from dlcli.base.errors import UserError
from dlcli.models.common import activation, int_list
from dlcli.models.family import Family

NORMS = {"none": None, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


class MLP(nn.Module):
    def __init__(self, in_features: int, out_features: int, hidden_sizes: list[int], act: str = "relu",
                 dropout: float = 0.0, norm: str = "none"):
        super().__init__()
        if norm not in NORMS:
            raise UserError(f"model.norm={norm}: choose one of: {', '.join(NORMS)}")
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"model.dropout={dropout}: must be in [0, 1)")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden_sizes:
            layers.append(nn.Linear(width, h))
            if NORMS[norm] is not None:
                layers.append(NORMS[norm](h))
            layers.append(activation(act))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x.flatten(1)))


def build(cfg: Any, meta: dict) -> MLP:
    out = meta.get("num_classes") or meta["output_size"]
    return MLP(math.prod(meta["input_shape"]), out, int_list(cfg.hidden_sizes, "model.hidden_sizes") if
               cfg.hidden_sizes else [], cfg.activation, float(cfg.dropout), cfg.norm)


FAMILIES = {"mlp": Family(build, {("classify", "vector"), ("regress", "vector"), ("classify", "image"),
                                  ("regress", "image"), ("auto", "vector")},
                          "multi-layer perceptron: Linear -> [norm] -> activation -> [dropout] per hidden layer")}
