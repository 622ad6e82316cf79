"""When the loop lets a task train the model itself (word2vec on the CPU: its own SGD, pair by pair, in C++).

The choice is the engine's: only a run that asks for exactly what such a trainer computes qualifies — the CPU, fp32,
one process, no gradient clipping, torch's plain SGD (no momentum, weight decay or maximize). The task then says
whether its model can (Task.in_place_training)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dlcli.base.task import InPlaceTrainer, Task
from dlcli.engine import distributed
from dlcli.engine.runtime import Runtime


def plain_sgd(optimizer: torch.optim.Optimizer) -> bool:
    return type(optimizer) is torch.optim.SGD and all(
        not g["momentum"] and not g["weight_decay"] and not g["maximize"] for g in optimizer.param_groups)


def choose_in_place(task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, tcfg: Any,
                    runtime: Runtime) -> InPlaceTrainer | None:
    """The task's in-place trainer when this run qualifies; None: the loop's backward and optimizer step."""
    if not (runtime.device.type == "cpu" and runtime.precision == "fp32" and distributed.world_size() == 1
            and not tcfg.get("clip_grad_norm") and not tcfg.get("clip_grad_value") and plain_sgd(optimizer)):
        return None
    return task.in_place_training(model, optimizer, deterministic=bool(tcfg.get("deterministic", False)))
