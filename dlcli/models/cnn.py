"""Convolutional net: conv blocks (conv -> [batch norm] -> activation, convs_per_block times, then [pool]), flatten
(or average each feature map to one number: global_pool), then an MLP head.

With max pooling and a non-decreasing activation a block runs conv -> [batch norm] -> pool -> activation: the same
function, cheaper (see CNN.__init__)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dlcli.base.errors import UserError
from dlcli.models.common import activation, int_list
from dlcli.models.family import Family
from dlcli.models.mlp import MLP

POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d, "none": None}
MONOTONIC = ("relu", "leaky_relu", "tanh", "sigmoid")  # non-decreasing (gelu dips below zero: not one)


def per_block(cfg: Any, key: str, i: int, n: int) -> Any:
    """A per-block setting: one value for every block, or a list with one value per block."""
    value = cfg[key]
    if isinstance(value, (str, int, float, bool)):
        return value
    value = list(value)
    if len(value) != n:
        raise UserError(f"model.{key}={value}: give one value, or one per block ({n} blocks: model.channels)")
    return value[i]


class CNN(nn.Module):
    def __init__(self, input_shape: list[int], num_classes: int, cfg: Any):
        super().__init__()
        channels = int_list(cfg.channels, "model.channels")
        blocks: list[nn.Module] = []
        in_ch = input_shape[0]
        convs = int(cfg.get("convs_per_block", 1))  # range: config/schema.py
        for i, out_ch in enumerate(channels):
            k = int(per_block(cfg, "kernel_size", i, len(channels)))
            stride = int(per_block(cfg, "stride", i, len(channels)))
            pad = per_block(cfg, "padding", i, len(channels))
            pad = k // 2 if pad == "same" else 0 if pad == "valid" else pad
            if not isinstance(pad, int):
                raise UserError(f"model.padding={pad}: use same, valid or an integer")
            pool = per_block(cfg, "pool", i, len(channels))
            if pool not in POOLS:
                raise UserError(f"model.pool={pool}: choose one of: {', '.join(POOLS)}")
            bn = bool(per_block(cfg, "batch_norm", i, len(channels)))
            act_name = per_block(cfg, "activation", i, len(channels))
            block: list[nn.Module] = []
            for j in range(convs):  # VGG-style: the block's first conv changes the channels (and strides)
                if j:
                    block.append(activation(act_name))
                block.append(nn.Conv2d(out_ch if j else in_ch, out_ch, k, stride=1 if j else stride, padding=pad,
                                       bias=not bn))
                if bn:
                    block.append(nn.BatchNorm2d(out_ch))
            act = [activation(act_name)]
            pooling = [POOLS[pool](int(per_block(cfg, "pool_size", i, len(channels))))] if POOLS[pool] else []
            # Max pooling commutes with a non-decreasing activation: pooling first is the same function (outputs
            # and gradients), with the activation and its backward on 1/pool_size^2 of the values (~10% of a CPU
            # step of the MNIST CNN). No parameters move: checkpoints load either way.
            block += pooling + act if pool == "max" and act_name in MONOTONIC else act + pooling
            blocks.append(nn.Sequential(*block))
            in_ch = out_ch
        if cfg.get("global_pool", False):  # each feature map averaged to one number: the head sees channels[-1]
            blocks.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*blocks)
        self.features.eval()  # the shape probe below runs one image: batch norm must not need batch statistics
        with torch.no_grad():
            shape = list(input_shape)
            for i, block in enumerate(self.features):
                try:
                    out = block(torch.zeros(1, *shape))
                except RuntimeError:  # pooling/conv larger than what is left of the image
                    out = torch.zeros(0)
                if out.numel() == 0:
                    raise UserError(f"model.channels={channels}: block {i + 1} shrinks the {shape[1]}x{shape[2]} "
                                    "image to nothing; use fewer blocks, padding=same or pool=none")
                shape = list(out.shape[1:])
        self.features.train()
        self.flat_size = shape[0] * shape[1] * shape[2]
        hidden = int_list(cfg.hidden_sizes, "model.hidden_sizes") if cfg.hidden_sizes else []
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(float(cfg.dropout)),
                                  MLP(self.flat_size, num_classes, hidden, cfg.activation, float(cfg.dropout)))
        self.channels_last = bool(cfg.get("channels_last", False))
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:  # NHWC: conv + batch norm run ~1.5x faster on CPU (oneDNN) and use tensor cores on GPU
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.features(x))


def build(cfg: Any, meta: dict) -> CNN:
    return CNN(meta["input_shape"], meta["num_classes"], cfg)


FAMILIES = {"cnn": Family(build, {("classify", "image")},
                          "convolutional net: conv -> [batch norm] -> activation -> [pool] blocks, then an MLP head")}
