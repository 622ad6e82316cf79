"""Turning a model's next-token logits into text: temperature, top-k, top-p (nucleus) sampling, streaming.

Models that generate expose `step(tokens, state) -> (logits, state)`: the state carries what they have read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """logits (N, V) -> token ids (N,). temperature 0 or top_k 1 is greedy."""
    if temperature <= 0 or top_k == 1:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token once the tokens ranked above it already hold top_p of the mass (the first always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: nn.Module, prompt: Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             on_token: Callable[[Tensor], Any] | None = None) -> Tensor:
    """prompt (N, P) -> (N, P + max_new_tokens). on_token(ids) is called with each new column as it is made."""
    model.eval()
    logits, state = model.step(prompt, None)
    out = [prompt]
    for _ in range(max_new_tokens):
        nxt = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
        out.append(nxt[:, None])
        if on_token is not None:
            on_token(nxt)
        logits, state = model.step(nxt[:, None], state)
    return torch.cat(out, 1)
