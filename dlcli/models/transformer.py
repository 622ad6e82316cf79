"""`transformer`: decoder-only language models, encoder-decoder seq2seq and encoder text classifiers on
F.scaled_dot_product_attention.

Every piece of the block is a switch (conf/model/transformer.yaml): d_model, heads, layers, ff_size, dropout,
pre-/post-norm, residual connections on/off, positional encoding sinusoidal | learned | none, tied embeddings,
relu | gelu, and the causal mask itself. Label smoothing is `loss.label_smoothing`, warm-up is `scheduler=noam`
(or warmup_cosine). Training runs SDPA (flash / memory-efficient kernels on GPU); generation carries a KV cache.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlcli.base.errors import UserError, choices
from dlcli.base.tokens import BOS, PAD
from dlcli.models.common import masked_mean
from dlcli.models.family import Family
from dlcli.models.pretrained import WordVectors, table_of

NORMS = ("pre", "post")
POSITIONALS = ("sinusoidal", "learned", "none")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
POOLS = ("mean", "cls")  # text classifiers: the mean over a text's tokens | the state of a <bos> put in front


@dataclass
class Settings:
    d_model: int
    heads: int
    layers: int
    ff_size: int
    dropout: float
    norm: str
    residual: bool
    positional: str
    max_len: int
    tie_embeddings: bool
    activation: str
    causal: bool
    vectors: WordVectors  # model.pretrained_embeddings (models/pretrained.py): the token tables, d_model may follow


def settings(cfg: Any, meta: dict) -> Settings:
    """Read and check cfg.model: every mistake is one line naming the key, the value and the valid choices."""
    vectors = WordVectors(cfg, meta, int(cfg.d_model), "model.d_model")
    s = Settings(vectors.width, int(cfg.heads), int(cfg.layers), int(cfg.ff_size), float(cfg.dropout),
                 str(cfg.norm), bool(cfg.residual), str(cfg.positional), int(cfg.max_len),
                 bool(cfg.tie_embeddings), str(cfg.activation), bool(cfg.get("causal", True)), vectors)
    for key in ("d_model", "heads", "layers", "ff_size", "max_len"):
        if getattr(s, key) < 1:
            raise UserError(f"model.{key}={getattr(s, key)}: must be a positive integer")
    if s.d_model % s.heads:
        valid = [h for h in range(1, min(s.d_model, 64) + 1) if s.d_model % h == 0]
        follows = " (the pretrained vectors' width; model.embedding_projection=true keeps yours)" \
            if s.d_model != int(cfg.d_model) else ""
        raise UserError(f"model.heads={s.heads}: model.d_model={s.d_model}{follows} must split evenly into heads; "
                        f"choose one of: {', '.join(map(str, valid))} (or change d_model)")
    if not 0.0 <= s.dropout < 1.0:
        raise UserError(f"model.dropout={s.dropout}: must be in [0, 1)")
    for key, valid in (("norm", NORMS), ("positional", POSITIONALS), ("activation", ACTIVATIONS)):
        if getattr(s, key) not in valid:
            raise UserError(f"model.{key}={getattr(s, key)}: no such option{choices(getattr(s, key), valid)}")
    return s


def sinusoidal(positions: Tensor, d: int) -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...): computed for any position, no table."""
    freq = torch.exp(torch.arange(0, d, 2, device=positions.device) * (-math.log(10000.0) / d))
    angles = positions.float()[:, None] * freq
    # sin, cos interleaved (built, not written into a zeros table: a traced or exported model keeps any length)
    return torch.stack([angles.sin(), angles.cos()], -1).flatten(1)[:, :d]


class Embedding(nn.Module):
    """Token embedding (scaled by sqrt(d_model), as in the paper) + positional encoding, then dropout."""

    def __init__(self, side: str, s: Settings):
        super().__init__()
        self.tokens = s.vectors.table(side)  # vocabulary `side` of the task's meta (vocab, src_vocab, tgt_vocab)
        self.kind, self.scale = s.positional, math.sqrt(s.d_model)
        self.positions = nn.Embedding(s.max_len, s.d_model) if s.positional == "learned" else None
        self.drop = nn.Dropout(s.dropout)

    def forward(self, tokens: Tensor, start: int = 0) -> Tensor:
        x = self.tokens(tokens) * self.scale
        pos = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        if self.positions is not None:  # past the table (only reachable while decoding): reuse the last row
            x = x + self.positions(pos.clamp(max=self.positions.num_embeddings - 1))
        elif self.kind == "sinusoidal":
            x = x + sinusoidal(pos, x.shape[-1]).to(x.dtype)
        return self.drop(x)


class Attention(nn.Module):
    """Multi-head attention. Self-attention projects q, k, v in one matmul; cross-attention gets (k, v) of the
    encoder memory from `project_kv` (computed once per source). `mask` is boolean, True = may attend."""

    def __init__(self, s: Settings, cross: bool):
        super().__init__()
        self.heads, self.dropout = s.heads, s.dropout
        if cross:  # queries from the decoder, keys and values from the encoder's memory
            self.q, self.kv = nn.Linear(s.d_model, s.d_model), nn.Linear(s.d_model, 2 * s.d_model)
        else:
            self.qkv = nn.Linear(s.d_model, 3 * s.d_model)
        self.proj = nn.Linear(s.d_model, s.d_model)
        self.proj.residual = True  # scaled init (GPT-2)

    def split(self, x: Tensor) -> Tensor:  # (N, L, d) -> (N, heads, L, d / heads)
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def project_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv(memory).chunk(2, -1)
        return self.split(k), self.split(v)

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor] | None = None, mask: Tensor | None = None,
                causal: bool = False, cache: tuple[Tensor, Tensor] | None = None,
                weights: bool = False) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor | None]:
        """Returns (output, (k, v) including the cache: the new cache, attention weights if asked)."""
        if kv is None:
            q, k, v = map(self.split, self.qkv(x).chunk(3, -1))
            if cache is not None:
                k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        else:
            q, (k, v) = self.split(self.q(x)), kv
        w = None
        if weights:  # explicit softmax(q k^T / sqrt(d_k)) so the weights can be returned (decoding, pictures)
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            if causal:
                mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            w = scores.float().softmax(-1).to(q.dtype)
            out = F.dropout(w, self.dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                                 dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).flatten(2)), (k, v), w


class Block(nn.Module):
    """Self-attention [+ cross-attention] + feed-forward, each wrapped as x + Dropout(F(LN(x))) (pre-norm) or
    LN(x + Dropout(F(x))) (post-norm, the 2017 paper); residual=false drops the `x +`."""

    def __init__(self, s: Settings, cross: bool):
        super().__init__()
        self.pre, self.residual = s.norm == "pre", s.residual
        self.self_attn = Attention(s, cross=False)
        self.cross_attn = Attention(s, cross=True) if cross else None
        self.ff = nn.Sequential(nn.Linear(s.d_model, s.ff_size), ACTIVATIONS[s.activation](),
                                nn.Linear(s.ff_size, s.d_model))
        self.ff[2].residual = True
        self.norms = nn.ModuleList(nn.LayerNorm(s.d_model) for _ in range(3 if cross else 2))
        self.drop = nn.Dropout(s.dropout)

    def _in(self, i: int, x: Tensor) -> Tensor:
        return self.norms[i](x) if self.pre else x

    def _out(self, i: int, x: Tensor, h: Tensor) -> Tensor:
        h = self.drop(h)
        if self.residual:
            h = x + h
        return h if self.pre else self.norms[i](h)

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False,
                cache: tuple[Tensor, Tensor] | None = None, memory: Memory | None = None, layer: int = 0,
                weights: bool = False) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor | None]:
        h, kv, _ = self.self_attn(self._in(0, x), mask=mask, causal=causal, cache=cache)
        x = self._out(0, x, h)
        w = None
        if self.cross_attn is not None and memory is not None:
            h, _, w = self.cross_attn(self._in(1, x), kv=memory.kv[layer], mask=memory.mask, weights=weights)
            x = self._out(1, x, h)
        return self._out(-1, x, self.ff(self._in(-1, x))), kv, w


def step_mask(new: int, past: int, device: torch.device) -> Tensor | None:
    """Causal mask for `new` queries after `past` cached keys (None when one query may see everything)."""
    if new == 1:
        return None
    return torch.ones(new, past + new, dtype=torch.bool, device=device).tril(past)


def init_weights(model: nn.Module, layers: int) -> None:
    """GPT-2: N(0, 0.02) weights, zero biases, residual output projections scaled by 1/sqrt(2 * layers)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            std = 0.02 / math.sqrt(2 * layers) if getattr(m, "residual", False) else 0.02
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)
    for m in model.modules():  # token vectors: N(0, 1/d) x sqrt(d) = unit scale, on a par with sinusoids (T2T)
        if isinstance(m, Embedding):
            nn.init.normal_(table_of(m.tokens).weight, 0.0, m.scale ** -1)


class TransformerLM(nn.Module):
    """Decoder-only (GPT-style) language model: causal self-attention blocks, logits for every position."""

    def __init__(self, s: Settings, vocab_size: int, block_size: int):
        super().__init__()
        if s.positional == "learned" and block_size > s.max_len:
            raise UserError(f"model.max_len={s.max_len}: the learned position table must cover "
                            f"dataset.block_size={block_size}; set model.max_len>={block_size}")
        if not s.causal:
            print("warning: model.causal=false lets every position see the tokens it must predict: the training "
                  "loss will look excellent and generated text will not", file=sys.stderr)
        self.causal = s.causal
        self.window = min(block_size, s.max_len) if s.positional == "learned" else block_size
        self.embed = Embedding("vocab", s)
        self.blocks = nn.ModuleList(Block(s, cross=False) for _ in range(s.layers))
        self.norm = nn.LayerNorm(s.d_model) if s.norm == "pre" else nn.Identity()
        self.head = nn.Linear(s.d_model, vocab_size, bias=False)
        init_weights(self, s.layers)
        if s.tie_embeddings:
            self.head.weight = s.vectors.tied(self.embed.tokens, "model.tie_embeddings")

    def run(self, x: Tensor, caches: list | None = None, start: int = 0) -> tuple[Tensor, list]:
        h = self.embed(x, start)
        mask = step_mask(x.shape[1], start, x.device) if caches is not None and self.causal else None
        new = []
        for i, block in enumerate(self.blocks):
            h, kv, _ = block(h, mask=mask, causal=self.causal and caches is None,
                             cache=None if caches is None else caches[i])
            new.append(kv)
        return self.head(self.norm(h)), new

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x)[0]

    def step(self, tokens: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        """Incremental generation with a KV cache. Once the context would pass the training window
        (dataset.block_size), the last window-1 tokens are encoded afresh, so positions stay within what the model
        saw in training. A prompt longer than the window gives logits for its last `window` tokens only."""
        seen = tokens[:, :0] if state is None else state["tokens"]
        history = torch.cat([seen, tokens], 1)
        if state is not None and history.shape[1] <= self.window:
            logits, caches = self.run(tokens, state["caches"], seen.shape[1])
        else:
            keep = self.window if state is None else self.window - 1
            history = history[:, -keep:]
            logits, caches = self.run(history)
            logits = logits[:, -min(tokens.shape[1], history.shape[1]):]
        return logits, {"tokens": history, "caches": caches}


@dataclass
class Memory:
    """The encoded source: states (N, S, d), the attend-mask (N, 1, 1, S) and each decoder layer's cross (k, v)."""

    states: Tensor
    mask: Tensor
    kv: list[tuple[Tensor, Tensor]]

    def index_select(self, index: Tensor) -> Memory:
        """Rows of the batch (e.g. repeat each sentence for its beams)."""
        return Memory(self.states.index_select(0, index), self.mask.index_select(0, index),
                      [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.kv])


class TransformerSeq2Seq(nn.Module):
    """Encoder-decoder (Vaswani et al. 2017): padded source positions are masked out of every attention over the
    source; the decoder's self-attention is causal."""

    def __init__(self, s: Settings, meta: dict):
        super().__init__()
        for key in ("max_src_len", "max_tgt_len"):
            if s.positional == "learned" and int(meta.get(key, 0)) > s.max_len:
                raise UserError(f"model.max_len={s.max_len}: the learned position table must cover the longest "
                                f"sequence ({key}={meta[key]}); set model.max_len>={meta[key]}")
        self.causal = s.causal
        self.src_embed = Embedding("src_vocab", s)
        same_vocab = list(meta.get("src_vocab", [])) == list(meta.get("tgt_vocab", [None]))
        self.tgt_embed = self.src_embed if s.tie_embeddings and same_vocab else Embedding("tgt_vocab", s)
        self.encoder = nn.ModuleList(Block(s, cross=False) for _ in range(s.layers))
        self.decoder = nn.ModuleList(Block(s, cross=True) for _ in range(s.layers))
        self.enc_norm = nn.LayerNorm(s.d_model) if s.norm == "pre" else nn.Identity()
        self.dec_norm = nn.LayerNorm(s.d_model) if s.norm == "pre" else nn.Identity()
        self.head = nn.Linear(s.d_model, int(meta["tgt_vocab_size"]), bias=False)
        init_weights(self, 2 * s.layers)
        if s.tie_embeddings:
            self.head.weight = s.vectors.tied(self.tgt_embed.tokens, "model.tie_embeddings")

    def encode(self, src: Tensor) -> Memory:
        h, mask = encode_padded(self.src_embed, self.encoder, self.enc_norm, src)
        return Memory(h, mask, [block.cross_attn.project_kv(h) for block in self.decoder])

    def decode(self, tokens: Tensor, memory: Memory, caches: list | None = None, start: int = 0,
               weights: bool = False) -> tuple[Tensor, list, Tensor | None]:
        h = self.tgt_embed(tokens, start)
        mask = step_mask(tokens.shape[1], start, tokens.device) if caches is not None and self.causal else None
        new, w = [], None
        for i, block in enumerate(self.decoder):
            h, kv, w = block(h, mask=mask, causal=self.causal and caches is None,
                             cache=caches[i] if caches else None, memory=memory, layer=i,
                             weights=weights and i == len(self.decoder) - 1)
            new.append(kv)
        return self.head(self.dec_norm(h)), new, w

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        return self.decode(tgt_in, self.encode(src))[0]

    def decode_step(self, tokens: Tensor, memory: Memory, state: dict | None = None
                    ) -> tuple[Tensor, dict, Tensor]:
        """tokens: the NEW target tokens (N, t) (bos first). Returns logits (N, t, V), the KV-cache state and the
        last decoder layer's cross-attention weights (N, heads, t, S), exactly 0 on padded source positions."""
        start = 0 if state is None else state["length"]
        logits, caches, w = self.decode(tokens, memory, [] if state is None else state["caches"], start, True)
        return logits, {"caches": caches, "length": start + tokens.shape[1]}, w

    def reorder_state(self, state: dict, index: Tensor) -> dict:
        return {"caches": [(k.index_select(0, index), v.index_select(0, index)) for k, v in state["caches"]],
                "length": state["length"]}


class TransformerClassifier(nn.Module):
    """Encoder over right-padded token ids (texts) -> one vector -> a Linear head. Pads are masked out of every
    attention and of the pooling, so a text scores the same whatever it is padded to. pool=mean: the mean of the
    top states over the text's tokens; pool=cls: a <bos> put in front of every text, its top state (BERT's [CLS])."""

    def __init__(self, s: Settings, meta: dict, pool: str):
        super().__init__()
        if pool not in POOLS:
            raise UserError(f"model.pool={pool}: no such pooling for a text classifier{choices(pool, POOLS)}")
        longest = int(meta["max_len"]) + (pool == "cls")
        if s.positional == "learned" and longest > s.max_len:
            raise UserError(f"model.max_len={s.max_len}: the learned position table must cover the longest text "
                            f"(dataset.max_len={meta['max_len']}{' + the <bos> of pool=cls' if pool == 'cls' else ''}"
                            f"); set model.max_len>={longest}")
        self.pool, self.pad_id = pool, int(meta["pad_id"])
        self.embed = Embedding("vocab", s)
        self.blocks = nn.ModuleList(Block(s, cross=False) for _ in range(s.layers))
        self.norm = nn.LayerNorm(s.d_model) if s.norm == "pre" else nn.Identity()
        self.head = nn.Linear(s.d_model, int(meta["num_classes"]))
        init_weights(self, s.layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.pool == "cls":
            x = torch.cat([torch.full_like(x[:, :1], BOS), x], 1)
        h, mask = encode_padded(self.embed, self.blocks, self.norm, x, self.pad_id)
        return self.head(h[:, 0] if self.pool == "cls" else masked_mean(h, mask[:, 0, 0]))


def encode_padded(embed: Embedding, blocks: nn.ModuleList, norm: nn.Module, tokens: Tensor,
                  pad: int = PAD) -> tuple[Tensor, Tensor]:
    """Self-attention blocks (no causal mask) over right-padded rows, the padded positions masked out as keys.
    Returns the top states (N, S, d) and the attend-mask (N, 1, 1, S), True = a token."""
    keep = tokens != pad
    # an all-padding row would make softmax over nothing (NaN): its first position stays (no in-place |=: ONNX)
    keep = keep | (~keep.any(1, keepdim=True) & (torch.arange(keep.shape[1], device=keep.device) == 0))
    mask = keep[:, None, None, :]
    h = embed(tokens)
    for block in blocks:
        h, _, _ = block(h, mask=mask)
    return norm(h), mask


def build(cfg: Any, meta: dict) -> nn.Module:
    s = settings(cfg, meta)
    if meta["kind"] == "lm":  # the vectors' rows go in after each model's own init
        return s.vectors.fill(TransformerLM(s, int(meta["vocab_size"]), int(meta["block_size"])))
    if meta["kind"] == "seq2seq":
        return s.vectors.fill(TransformerSeq2Seq(s, meta))
    if meta["kind"] == "classify" and "pad_id" in meta:
        return s.vectors.fill(TransformerClassifier(s, meta, str(cfg.get("pool", "mean"))))
    raise UserError(f"model=transformer cannot learn a {meta['kind']} task on these inputs; it does lm, seq2seq "
                    "and text classification")


FAMILIES = {"transformer": Family(build, {("seq2seq", "pairs"), ("lm", "text"), ("classify", "text")},
                                  "Transformer (Vaswani 2017): encoder-decoder for pairs, decoder-only for LMs, "
                                  "encoder for text classes")}
