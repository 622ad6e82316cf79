"""Per-layer gradient norms for metrics.jsonl (trainer.log_grad_norms) and plots/grad_norms.png.

Layers are groups of parameters found by walking the module tree breadth first: the top-level modules, then their
children, as long as a level has at most MAX_GROUPS parameterised modules (an MLP gives body.0, body.2, head; a
2-layer transformer its embedding, each block's attention / feed-forward / norms, and the head).

Computed only on the steps whose loss is logged (every trainer.log_every_n_steps): on the device, before
clipping, read with one host sync at that step. A snapshot of that step's gradient, like the logged loss, rather
than a mean over the interval: other steps pay nothing, and a resumed run logs the same values bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

MAX_GROUPS = 12
WRAPPERS = ("_orig_mod.", "module.")  # torch.compile and DistributedDataParallel wrap the model


def _clean(name: str) -> str:
    for prefix in WRAPPERS:
        name = name.replace(prefix, "")
    return name.rstrip(".") or "(model)"


def layer_groups(model: nn.Module, max_groups: int = MAX_GROUPS) -> list[tuple[str, list[nn.Parameter]]]:
    """[(name, trainable parameters)] at the deepest level of the module tree with at most max_groups groups."""

    def trainable(m: nn.Module, recurse: bool = True) -> list[nn.Parameter]:
        return [p for p in m.parameters(recurse=recurse) if p.requires_grad]

    level: list[tuple[str, nn.Module, bool]] = [("", model, True)]  # (prefix, module, whole subtree?)
    while True:
        deeper: list[tuple[str, nn.Module, bool]] = []
        for prefix, module, whole in level:
            children = [(f"{prefix}{n}.", c, True) for n, c in module.named_children() if trainable(c)]
            if not whole or not children:
                deeper.append((prefix, module, whole))
                continue
            if trainable(module, recurse=False):  # parameters held by the module itself, beside its children
                deeper.append((prefix, module, False))
            deeper += children
        if len(deeper) > max_groups and len(level) == 1:  # one module with many layers (a long Sequential):
            return _buckets(deeper, max_groups, trainable)  # neighbouring layers share a line
        if len(deeper) > max_groups or deeper == level:
            break
        level = deeper
    groups = [(_clean(prefix), trainable(module, recurse=whole)) for prefix, module, whole in level]
    # A stacked nn.LSTM/GRU/RNN is one module: split it by layer (weight_ih_l0, weight_hh_l1...) when room is left,
    # so vanishing gradients show layer by layer.
    stacked = [m for _, m, whole in level if whole and isinstance(m, nn.RNNBase) and m.num_layers > 1]
    if stacked and len(groups) + sum(m.num_layers - 1 for m in stacked) <= max_groups:
        split: list[tuple[str, list[nn.Parameter]]] = []
        for (name, params), (_, module, _) in zip(groups, level):
            if module in stacked:
                named = list(module.named_parameters())
                split += [(f"{name}.l{k}", [p for n, p in named if p.requires_grad and
                                            n.split("_l")[-1].split("_")[0] == str(k)])
                          for k in range(module.num_layers)]
            else:
                split.append((name, params))
        groups = split
    return groups


def _buckets(level: list, max_groups: int, trainable: Any) -> list[tuple[str, list[nn.Parameter]]]:
    """Consecutive modules in max_groups runs, named first..last."""
    size = -(-len(level) // max_groups)
    out = []
    for i in range(0, len(level), size):
        chunk = level[i:i + size]
        name = _clean(chunk[0][0]) + (f"..{_clean(chunk[-1][0]).rsplit('.', 1)[-1]}" if len(chunk) > 1 else "")
        out.append((name, [p for _, m, whole in chunk for p in trainable(m, recurse=whole)]))
    return out


class GradNorms:
    """||grad|| per layer group; compute() on the device, read() once when the step is logged."""

    def __init__(self, model: nn.Module):
        groups = layer_groups(model)
        self.names = [name for name, _ in groups]
        self.params = [p for _, params in groups for p in params]
        self.group_of = [i for i, (_, params) in enumerate(groups) for _ in params]

    def compute(self) -> torch.Tensor | None:
        """The norm per group, a device tensor; None before any backward."""
        have = [(g, p.grad) for g, p in zip(self.group_of, self.params) if p.grad is not None]
        if not have:
            return None
        dense = [grad for _, grad in have if not grad.is_sparse]
        norms = iter(torch._foreach_norm(dense) if dense else [])  # one fused kernel on CUDA
        # sparse gradients (word2vec's embeddings): the norm of the summed rows
        per_param = torch.stack([next(norms) if not grad.is_sparse else grad.coalesce().values().norm()
                                 for _, grad in have]).float()
        index = torch.tensor([g for g, _ in have], device=per_param.device)
        squares = torch.zeros(len(self.names), device=per_param.device).index_add_(0, index, per_param.square())
        seen = torch.zeros(len(self.names), dtype=torch.bool, device=per_param.device)
        seen[index] = True
        return torch.where(seen, squares.sqrt(), -1.0)  # -1: no gradient reached this group (read() drops it)

    def read(self, computed: torch.Tensor | None) -> dict[str, float]:
        """{group: norm}, with the step's one host sync."""
        if computed is None:
            return {}
        return {name: v for name, v in zip(self.names, computed.tolist()) if not v < 0}
