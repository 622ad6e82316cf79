"""Turning a model's next-token logits into text: temperature, top-k, top-p (nucleus) sampling, streaming.

Models that generate expose `step(tokens, state) -> (logits, state)`: the state carries what they have read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from dlcli.base.tokens import BOS, EOS, PAD


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
def generate_tokens(model: nn.Module, prompt: Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None,
                    generator: torch.Generator | None = None) -> Iterator[Tensor]:
    """prompt (N, P) -> each new column of token ids (N,), yielded as it is made. Between steps only the model's
    state is kept (recurrent models carry theirs; transformers crop theirs to the training window), never the
    earlier logits or tokens: memory does not grow with max_new_tokens."""
    model.eval()
    logits, state = model.step(prompt, None)
    for i in range(max_new_tokens):
        nxt = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
        yield nxt
        if i + 1 < max_new_tokens:  # the last token needs no logits after it
            logits, state = model.step(nxt[:, None], state)


def generate(model: nn.Module, prompt: Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             on_token: Callable[[Tensor], Any] | None = None) -> Tensor:
    """prompt (N, P) -> (N, P + max_new_tokens). on_token(ids) is called with each new column as it is made."""
    out = [prompt]
    for nxt in generate_tokens(model, prompt, max_new_tokens, temperature, top_k, top_p, generator):
        out.append(nxt[:, None])
        if on_token is not None:
            on_token(nxt)
    return torch.cat(out, 1)


# ------------------------------------------------------------------------------------------- encoder-decoder models
# Models with encode(src) -> memory, decode_step(tokens, memory, state) -> (logits, state, attention or None) and
# reorder_state(state, index). Token ids PAD, BOS, EOS: dlcli/data/pairs.py.


def _stack_attention(steps: list[Tensor | None]) -> Tensor | None:
    """Per-step weights (N, [heads,] 1, S) -> (N, [heads,] T, S)."""
    if not steps or steps[0] is None:
        return None
    return torch.cat(steps, -2)


@torch.no_grad()
def greedy_decode(model: nn.Module, src: Tensor, max_len: int,
                  keep_attention: bool = True) -> tuple[Tensor, Tensor | None]:
    """src (N, S) -> output ids (N, L) (EOS included, PAD after it) and the attention weights, if any (and
    keep_attention: they grow with the output, so a run that draws no plot leaves them out)."""
    was_training = model.training
    model.eval()
    memory = model.encode(src)
    token = torch.full((len(src), 1), BOS, dtype=torch.long, device=src.device)
    done = torch.zeros(len(src), dtype=torch.bool, device=src.device)
    state, out, attn = None, [], []
    for _ in range(max_len):
        logits, state, weights = model.decode_step(token, memory, state)
        token = logits[:, -1].argmax(-1).masked_fill(done, PAD)[:, None]
        out.append(token)
        attn.append(weights if keep_attention else None)
        done |= token[:, 0] == EOS
        if bool(done.all()):
            break
    model.train(was_training)
    return torch.cat(out, 1), _stack_attention(attn)


def length_penalty(length: Tensor, alpha: float) -> Tensor:
    """GNMT's ((5 + |Y|) / 6) ** alpha: alpha 0 ranks by total log-probability, larger alpha favours longer outputs."""
    return ((5.0 + length.float()) / 6.0) ** alpha


def beam_search(model: nn.Module, src: Tensor, beam_size: int, max_len: int,
                alpha: float = 0.6) -> tuple[Tensor, Tensor | None]:
    """Keep the `beam_size` likeliest prefixes per source; finished ones stay in the beam (extended by PAD at no
    cost) and the winner is picked by log-probability / length_penalty. beam_size 1 is greedy decoding."""
    seqs, attn, _ = beam_search_scored(model, src, beam_size, max_len, alpha)
    return seqs, attn


@torch.no_grad()
def beam_search_scored(model: nn.Module, src: Tensor, beam_size: int, max_len: int, alpha: float = 0.6,
                       keep_attention: bool = True) -> tuple[Tensor, Tensor | None, Tensor]:
    """beam_search, with each winner's score (N,): its log-probability / length_penalty, what ranked it."""
    was_training = model.training
    model.eval()
    n, k = len(src), beam_size
    memory = model.encode(src.repeat_interleave(k, 0))  # beams of one source share identical memory rows
    device = src.device
    score = torch.zeros(n, k, device=device)
    score[:, 1:] = float("-inf")  # all beams start equal: keep one until the first expansion
    token = torch.full((n * k, 1), BOS, dtype=torch.long, device=device)
    done = torch.zeros(n * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(n * k, dtype=torch.long, device=device)
    seqs = torch.zeros(n * k, 0, dtype=torch.long, device=device)
    attn: Tensor | None = None
    state = None
    offsets = (torch.arange(n, device=device) * k)[:, None]
    for _ in range(max_len):
        logits, state, weights = model.decode_step(token, memory, state)
        logp = logits[:, -1].float().log_softmax(-1)
        finished_row = torch.full_like(logp, float("-inf"))
        finished_row[:, PAD] = 0.0
        logp = torch.where(done[:, None], finished_row, logp)
        vocab = logp.shape[-1]
        total = (score.view(n * k, 1) + logp).view(n, k * vocab)
        score, flat = total.topk(k, dim=-1)
        beam, word = flat // vocab, flat % vocab
        index = (beam + offsets).view(-1)
        state = model.reorder_state(state, index)
        token = word.view(-1, 1)
        seqs = torch.cat([seqs.index_select(0, index), token], 1)
        if weights is not None and keep_attention:
            attn = weights if attn is None else torch.cat([attn.index_select(0, index), weights], -2)
        done = done.index_select(0, index)
        lengths = lengths.index_select(0, index) + (~done).long()
        done = done | (token[:, 0] == EOS)
        if bool(done.all()):
            break
    ranked = score / length_penalty(lengths.view(n, k), alpha)
    winner = ranked.argmax(-1)
    best_score = ranked.gather(1, winner[:, None])[:, 0]
    best = winner + offsets[:, 0]
    model.train(was_training)
    return seqs.index_select(0, best), attn.index_select(0, best) if attn is not None else None, best_score
