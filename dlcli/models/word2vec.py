"""word2vec (Mikolov et al. 2013): skip-gram and CBOW with negative sampling, as in the original C tool and gensim.

Two tables: `input` holds the word vectors (word2vec's syn0, what is exported), `output` the vectors words have as
prediction targets (syn1neg, zero at the start). Both use sparse gradients, so an SGD step touches only the rows a
batch used. A batch (dlcli/data/corpus.py) is centers [n], contexts [n, 2*window] (-1: none) and negatives [G, S]:
each group of `negative_group` training rows shares S negatives, so its negative scores are one matrix product.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlcli.errors import UserError

OBJECTIVES = ("skipgram", "cbow")


class Word2Vec(nn.Module):
    def __init__(self, vocab_size: int, vector_size: int, objective: str, negative: int = 5, group: int = 192):
        super().__init__()
        self.objective = objective
        self.negative = negative
        self.group = group  # rows sharing one draw of negatives
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

        Rows (skip-gram: one per (context, center) pair; cbow: one per center) come in groups of
        `negative_group` that share S negatives: per row -log σ(x·v₊) - (k/S) Σ_s log σ(-x·v_s), the same
        expected gradient as word2vec's k negatives per pair, as one matrix product per group."""
        if centers.numel() == 0:  # every word of a short chunk was subsampled away
            return self.input(centers).sum(), centers.new_zeros(())
        mask = contexts >= 0
        if self.objective == "skipgram":  # each context word predicts its center (word2vec's pairing)
            center_of = torch.arange(len(centers), device=centers.device)[:, None].expand_as(contexts)[mask]
            target = centers[center_of]
            x = self.input(contexts[mask])                                   # [P, d]
        else:  # cbow: the mean of the context vectors predicts the center
            has = mask.any(1)
            centers, contexts, mask = centers[has], contexts[has], mask[has]
            m = mask.to(self.input.weight.dtype)
            total = (self.input(contexts.clamp(min=0)) * m[..., None]).sum(1)
            mean = total / m.sum(1)[:, None]
            # value: the mean; gradient: each context word gets the full error, as word2vec and gensim
            # (cbow_mean=1) do
            x = total + (mean - total).detach()                              # [n, d]
            target = centers
        rows, shared = len(x), negatives.shape[1]
        if rows == 0:
            return self.input(centers[:0]).sum(), centers.new_zeros(())
        groups = min(len(negatives), -(-rows // self.group))
        per_group = -(-rows // groups)
        pad = groups * per_group - rows
        # one lookup for both (a table used twice would have its two sparse gradients added before the step)
        out = self.output(torch.cat([target, negatives[:groups].reshape(-1)]))
        pos = (x * out[:rows]).sum(-1)                                      # [rows]
        noise = out[rows:].view(groups, shared, -1)                         # [G, S, d]
        neg = torch.bmm(F.pad(x, (0, 0, 0, pad)).view(groups, per_group, -1), noise.transpose(1, 2))
        # word2vec skips a negative that is the center word itself
        own = F.pad(target, (0, pad), value=-1).view(groups, per_group, 1) == negatives[:groups, None, :]
        neg_loss = (-F.logsigmoid(-neg)).masked_fill_(own, 0.0).sum(-1).view(-1)[:rows]
        loss = -F.logsigmoid(pos).sum() + neg_loss.sum() * (self.negative / shared)
        return loss, centers.new_tensor(rows)

    def vectors(self) -> Tensor:
        return self.input.weight.detach()


def build(cfg: Any, meta: dict) -> Word2Vec:
    if cfg.name not in OBJECTIVES:
        raise UserError(f"model.name={cfg.name}: word2vec models are {', '.join(OBJECTIVES)}")
    size = cfg.vector_size
    if not isinstance(size, int) or size < 1:
        raise UserError(f"model.vector_size={size}: a positive integer (word2vec uses 100-300)")
    return Word2Vec(int(meta["vocab_size"]), size, str(cfg.name), negative=int(cfg.negative),
                    group=int(cfg.negative_group))
