"""Small pieces shared by the model families."""

from __future__ import annotations

from typing import Any

import torch
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


class WordDropout(nn.Module):
    """Word dropout (Iyyer et al. 2015): in training, each of a text's tokens becomes <unk> with probability p, so a
    text classifier cannot lean on a few rare words of its training texts (a book's names); pads stay pads. model.
    word_dropout; an identity at evaluation and for inputs that are not padded texts."""

    def __init__(self, p: float, meta: dict):
        super().__init__()
        self.p, self.pad_id, self.unk_id = p, meta.get("pad_id"), meta.get("unk_id")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p <= 0 or self.pad_id is None or self.unk_id is None:
            return x
        hit = (torch.rand(x.shape, device=x.device) < self.p) & (x != self.pad_id)
        return x.masked_fill(hit, self.unk_id)
