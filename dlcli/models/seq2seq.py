"""Recurrent encoder-decoders: `seq2seq` (the decoder sees only the encoder's final state, the fixed "context
vector") and `attention` (the decoder also attends over every encoder state: additive (Bahdanau), dot or general
(Luong) scores).

The encoder is a cuDNN GRU/LSTM over packed sequences (pads are never read), optionally bidirectional; a bridge
maps its final states to the decoder's initial state. With full teacher forcing the decoder also runs as one fused
call over the whole target, and attention is computed for all steps at once (Luong-style: attend from the RNN
output, combine [h; context] through tanh). A teacher-forcing ratio below 1 decodes step by step, feeding the
model's own argmax back in with probability 1 - ratio (optionally scheduled from `teacher_forcing` to
`teacher_forcing_end` over the epochs).

Decoding API (dlcli/models/decoding.py): encode(src) -> Memory; decode_step(tokens, memory, state) -> (logits, state,
attention weights or None); reorder_state(state, index).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from dlcli.base.errors import UserError
from dlcli.base.tokens import PAD
from dlcli.models.family import Family
from dlcli.models.pretrained import WordVectors

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}
SCORES = ("additive", "dot", "general")


class Memory(NamedTuple):
    outputs: Tensor     # (N, S, enc_width): every encoder state
    keys: Tensor        # the outputs as the attention scores need them (projected once, not at every step)
    mask: Tensor        # (N, S): True on real source tokens
    init: Any           # the decoder's initial state: h (layers, N, H), or (h, c) for an LSTM
    context: Tensor     # (N, H): the fixed context vector (the bridged final state of the top layer)


class Attention(nn.Module):
    """score(h_t, e_s) -> softmax over the real source positions -> weights (N, T, S)."""

    def __init__(self, kind: str, query_size: int, key_size: int):
        super().__init__()
        if kind not in SCORES:
            raise UserError(f"model.attention.type={kind}: choose one of: {', '.join(SCORES)}")
        self.kind = kind
        if kind == "additive":
            self.w_query = nn.Linear(query_size, query_size, bias=False)
            self.w_key = nn.Linear(key_size, query_size)
            self.v = nn.Linear(query_size, 1, bias=False)
        elif kind == "general" or key_size != query_size:  # dot needs equal sizes: project the keys
            self.w_key = nn.Linear(key_size, query_size, bias=False)

    def project_keys(self, outputs: Tensor) -> Tensor:
        return self.w_key(outputs) if hasattr(self, "w_key") else outputs

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """query (N, T, H), projected keys (N, S, H), mask (N, S) -> weights (N, T, S)."""
        if self.kind == "additive":
            scores = self.v(torch.tanh(self.w_query(query)[:, :, None] + keys[:, None])).squeeze(-1)
        else:
            scores = query @ keys.transpose(1, 2)
        return scores.masked_fill(~mask[:, None], float("-inf")).softmax(-1)


class EncoderDecoder(nn.Module):
    def __init__(self, cfg: Any, meta: dict):
        super().__init__()
        if cfg.cell not in CELLS:
            raise UserError(f"model.cell={cfg.cell}: choose one of: {', '.join(CELLS)}")
        hidden, layers, emb = int(cfg.hidden_size), int(cfg.num_layers), int(cfg.embedding_size)
        dropout = float(cfg.dropout)
        self.cell, self.layers, self.hidden = cfg.cell, layers, hidden
        self.bidirectional, self.packed = bool(cfg.bidirectional), bool(cfg.get("packed", True))
        self.tf_start = float(cfg.teacher_forcing)
        self.tf_end = float(cfg.teacher_forcing_end) if cfg.get("teacher_forcing_end") is not None else None
        for key, v in (("teacher_forcing", self.tf_start), ("teacher_forcing_end", self.tf_end)):
            if v is not None and not 0.0 <= v <= 1.0:
                raise UserError(f"model.{key}={v}: a probability in [0, 1] (1 = always feed the true token)")
        self.tf_ratio = self.tf_start
        rnn = CELLS[cfg.cell]
        between = dropout if layers > 1 else 0.0
        vectors = WordVectors(cfg, meta, emb, "model.embedding_size")  # pretrained ones (both sides), if any
        emb = vectors.width
        self.src_embed = vectors.table("src_vocab", padding_idx=PAD)
        self.encoder = rnn(emb, hidden, layers, batch_first=True, dropout=between, bidirectional=self.bidirectional)
        enc_width = hidden * (2 if self.bidirectional else 1)
        self.bridge_h = nn.Linear(enc_width, hidden)
        self.bridge_c = nn.Linear(enc_width, hidden) if cfg.cell == "lstm" else None
        self.use_attention = cfg.name == "attention"
        self.tgt_embed = vectors.table("tgt_vocab", padding_idx=PAD)
        # seq2seq: the context vector is also fed to every decoder step (Cho et al. 2014), not only as h_0
        self.decoder = rnn(emb + (0 if self.use_attention else hidden), hidden, layers, batch_first=True,
                           dropout=between)
        if self.use_attention:
            self.attention = Attention(str(cfg.attention.type), hidden, enc_width)
            self.combine = nn.Linear(hidden + enc_width, hidden)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, meta["tgt_vocab_size"])
        vectors.fill(self)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the loop at the start of each epoch: the teacher-forcing schedule."""
        if self.tf_end is not None:
            self.tf_ratio = self.tf_start + (self.tf_end - self.tf_start) * (epoch - 1) / max(epochs - 1, 1)

    def encode(self, src: Tensor) -> Memory:
        mask = src != PAD
        x = self.drop(self.src_embed(src))
        if self.packed:
            lengths = mask.sum(1).clamp(min=1).cpu()
            out, final = self.encoder(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        else:
            out, final = self.encoder(x)
        h, c = final if isinstance(final, tuple) else (final, None)
        init_h = torch.tanh(self.bridge_h(self._per_layer(h)))
        init = (init_h, self.bridge_c(self._per_layer(c))) if c is not None else init_h
        keys = self.attention.project_keys(out) if self.use_attention else out
        return Memory(out, keys, mask, init, init_h[-1])

    def _per_layer(self, state: Tensor) -> Tensor:
        """(layers * directions, N, H) -> (layers, N, directions * H): both directions' final states side by side."""
        if not self.bidirectional:
            return state
        n = state.shape[1]
        return state.view(self.layers, 2, n, self.hidden).transpose(1, 2).reshape(self.layers, n, 2 * self.hidden)

    def decode_step(self, tokens: Tensor, memory: Memory, state: Any = None) -> tuple[Tensor, Any, Tensor | None]:
        """Logits for the next token after each of `tokens` (N, t), given the decoder state (None: start)."""
        x = self.drop(self.tgt_embed(tokens))
        if not self.use_attention:
            x = torch.cat([x, memory.context[:, None].expand(-1, x.shape[1], -1)], -1)
        out, state = self.decoder(x, memory.init if state is None else state)
        weights = None
        if self.use_attention:
            weights = self.attention(out, memory.keys, memory.mask)
            context = weights @ memory.outputs
            out = torch.tanh(self.combine(torch.cat([out, context], -1)))
        return self.head(self.drop(out)), state, weights

    @staticmethod
    def reorder_state(state: Any, index: Tensor) -> Any:
        if isinstance(state, tuple):
            return tuple(s.index_select(1, index) for s in state)
        return state.index_select(1, index)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        memory = self.encode(src)
        if not self.training or self.tf_ratio >= 1.0:
            return self.decode_step(tgt_in, memory)[0]
        # scheduled sampling: per example and step, feed the true token with probability tf_ratio, else our guess
        logits, state, token = [], None, tgt_in[:, :1]
        for t in range(tgt_in.shape[1]):
            step_logits, state, _ = self.decode_step(token, memory, state)
            logits.append(step_logits)
            if t + 1 < tgt_in.shape[1]:
                teacher = torch.rand(len(src), 1, device=src.device) < self.tf_ratio
                token = torch.where(teacher, tgt_in[:, t + 1:t + 2], step_logits.argmax(-1))
        return torch.cat(logits, 1)


def build(cfg: Any, meta: dict) -> EncoderDecoder:
    return EncoderDecoder(cfg, meta)


FAMILIES = {
    "seq2seq": Family(build, {("seq2seq", "pairs")},
                      "RNN encoder-decoder conditioned on the encoder's final state (Sutskever 2014)"),
    "attention": Family(build, {("seq2seq", "pairs")},
                        "RNN encoder-decoder with attention over the encoder states (Bahdanau 2015, Luong 2015)"),
}
