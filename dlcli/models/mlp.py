"""Multi-layer perceptron: (Linear -> [norm] -> activation -> [dropout]) per hidden layer, then a Linear head.
On texts (token ids), a bag of embeddings in front of it (fastText): the mean of a text's word vectors."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from dlcli.base.errors import UserError
from dlcli.models.common import WordDropout, activation, int_list, masked_mean
from dlcli.models.family import Family
from dlcli.models.pretrained import WordVectors

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


class BagOfEmbeddings(nn.Module):
    """fastText-style: right-padded token ids -> the mean of the text's word vectors (pads left out) -> the MLP."""

    def __init__(self, embed: nn.Module, pad_id: int, mlp: MLP, word_dropout: nn.Module):
        super().__init__()
        self.pad_id = pad_id
        self.embed = embed
        self.mlp = mlp
        self.word_dropout = word_dropout

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(masked_mean(self.embed(self.word_dropout(x)), x != self.pad_id))


def build(cfg: Any, meta: dict) -> nn.Module:
    out = meta.get("num_classes") or meta["output_size"]
    hidden = int_list(cfg.hidden_sizes, "model.hidden_sizes") if cfg.hidden_sizes else []
    size = int(cfg.get("embedding_size", 64))
    if "pad_id" in meta and size < 1:
        raise UserError(f"model.embedding_size={size}: must be a positive integer")
    vectors = WordVectors(cfg, meta, size, "model.embedding_size")  # pretrained ones, if any
    if "pad_id" in meta:  # texts
        mlp = MLP(vectors.width, out, hidden, cfg.activation, float(cfg.dropout), cfg.norm)  # first, as before
        return vectors.fill(BagOfEmbeddings(vectors.table("vocab"), int(meta["pad_id"]), mlp,
                                            WordDropout(float(cfg.get("word_dropout", 0.0)), meta)))
    return vectors.fill(MLP(math.prod(meta["input_shape"]), out, hidden, cfg.activation, float(cfg.dropout),
                            cfg.norm))


FAMILIES = {"mlp": Family(build, {("classify", "vector"), ("regress", "vector"), ("classify", "image"),
                                  ("regress", "image"), ("auto", "vector"), ("classify", "text")},
                          "multi-layer perceptron: Linear -> [norm] -> activation -> [dropout] per hidden layer; "
                          "a bag of word embeddings for texts")}
