"""word2vec (Mikolov et al. 2013): skip-gram and CBOW with negative sampling, as in the original C tool and gensim.

Two tables: `input` holds the word vectors (word2vec's syn0, what is exported), `output` the vectors words have as
prediction targets (syn1neg, zero at the start). Both use sparse gradients, so an SGD step touches only the rows a
batch used. A batch (dlcli/data/corpus.py) is centers [n], contexts [n, 2*window] (-1: none) and negatives [n, k]
shared by the context words of one center: the scores of a center are one small matrix product.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlcli.errors import UserError

OBJECTIVES = ("skipgram", "cbow")


class Word2Vec(nn.Module):
    def __init__(self, vocab_size: int, vector_size: int, objective: str, negative: int = 5):
        super().__init__()
        self.objective = objective
        self.negative = negative
        self.input = nn.Embedding(vocab_size, vector_size, sparse=True)
        self.output = nn.Embedding(vocab_size, vector_size, sparse=True)
        with torch.no_grad():  # word2vec's initialisation: small uniform word vectors, zero output vectors
            self.input.weight.uniform_(-0.5 / vector_size, 0.5 / vector_size)
            self.output.weight.zero_()

    def forward(self, words: Tensor) -> Tensor:
        """The word vectors of `words`."""
        return self.input(words)

    def loss(self, centers: Tensor, contexts: Tensor, negatives: Tensor) -> tuple[Tensor, Tensor]:
        """(summed negative-sampling loss, number of training pairs).

        Per pair: -log σ(u·v₊) - k · mean_s log σ(-u·v_s) over the S negatives its group of centers shares: the
        same expected gradient as word2vec's k negatives per pair, computed as one matrix product per group."""
        n, slots = contexts.shape
        if n == 0:  # every word of a short chunk was subsampled away
            return self.input(centers).sum(), centers.new_zeros(())
        groups, shared = negatives.shape
        per_group = -(-n // groups)
        pad = groups * per_group - n
        mask = contexts >= 0
        m = mask.to(self.input.weight.dtype)
        context_ids = contexts.clamp(min=0)
        skipgram = self.objective == "skipgram"
        pairs = m.sum(1) if skipgram else (m.sum(1) > 0).to(m.dtype)  # training pairs per center
        k_over_s = self.negative / shared
        inputs = self.input(context_ids)          # [n, 2w, d]
        positives = self.output(centers)          # [n, d]
        noise = self.output(negatives)            # [G, S, d]
        if skipgram:  # each context word predicts its center (word2vec's pairing)
            x, rows, weight = inputs, slots, m
        else:  # cbow: the mean of the context vectors predicts the center
            total = (inputs * m[..., None]).sum(1)
            mean = total / m.sum(1).clamp(min=1)[:, None]
            # value: the mean; gradient: each context word gets the full error, as word2vec and gensim
            # (cbow_mean=1) do
            x, rows, weight = (total + (mean - total).detach())[:, None, :], 1, pairs[:, None]
        pos = (x * positives[:, None, :]).sum(-1)                             # [n, rows]
        xg = F.pad(x, (0, 0, 0, 0, 0, pad)).reshape(groups, per_group * rows, -1)
        neg = torch.bmm(xg, noise.transpose(1, 2))                            # [G, g*rows, S]
        # word2vec skips a negative that is the center word itself
        own = F.pad(centers, (0, pad), value=-1).view(groups, per_group, 1, 1) == negatives.view(groups, 1, 1, shared)
        own = own.expand(groups, per_group, rows, shared).reshape(groups, per_group * rows, shared)
        neg_loss = (-F.logsigmoid(-neg)).masked_fill(own, 0.0).sum(-1) * k_over_s
        neg_loss = neg_loss.reshape(-1)[: n * rows].view(n, rows)
        losses = (-F.logsigmoid(pos) + neg_loss) * weight
        return losses.sum(), pairs.sum()

    def vectors(self) -> Tensor:
        return self.input.weight.detach()


def build(cfg: Any, meta: dict) -> Word2Vec:
    if cfg.name not in OBJECTIVES:
        raise UserError(f"model.name={cfg.name}: word2vec models are {', '.join(OBJECTIVES)}")
    size = cfg.vector_size
    if not isinstance(size, int) or size < 1:
        raise UserError(f"model.vector_size={size}: a positive integer (word2vec uses 100-300)")
    return Word2Vec(int(meta["vocab_size"]), size, str(cfg.name), negative=int(cfg.negative))
