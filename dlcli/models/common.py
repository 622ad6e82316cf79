"""Small pieces shared by the model families."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from dlcli.base.errors import UserError, choices

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU}


def activation(name: str, key: str = "model.activation") -> nn.Module:
    if name not in ACTIVATIONS:
        raise UserError(f"{key}={name}: unknown activation{choices(name, ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def int_list(value: Any, key: str) -> list[int]:
    values = list(value) if not isinstance(value, (int, str)) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise UserError(f"{key}={values}: needs positive integers, e.g. [64,64]")
    return values


def masked_mean(h: Tensor, keep: Tensor) -> Tensor:
    """The mean over the steps of (N, T, d) states where keep (N, T) is True: a padded text's own tokens only."""
    w = keep.unsqueeze(-1).to(h.dtype)
    return (h * w).sum(1) / w.sum(1).clamp(min=1)
