"""Recurrent nets: `rnn`, `lstm`, `gru` — one class on PyTorch's cuDNN-backed nn.RNN / nn.LSTM / nn.GRU.

Inputs are token ids (an embedding) or real-valued vectors per step (a linear projection). Heads by task kind:
many-to-one (classify/regress: from the last state or pooled states) and many-to-many (tag, lm: one output per step).
Texts (meta pad_id: rows of ids right-padded to one width) are packed (pack_padded_sequence with each row's length,
taken from the pads), so no step reads a pad: pool=last takes each row's own last step, mean/max leave pads out.
Two variants from the seeds have no cuDNN kernel and run an explicit (slower) time-step loop: leaky units
(h_t = α·h_{t-1} + (1-α)·tanh(W x_t + U h_{t-1} + b)) and echo-state networks (fixed random recurrent weights
scaled to a spectral radius; only the readout learns).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from dlcli.base.errors import UserError
from dlcli.models.common import WordDropout, masked_mean
from dlcli.models.family import Family
from dlcli.models.pretrained import WordVectors

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
POOLS = ("last", "mean", "max")


class LoopRNN(nn.Module):
    """A tanh/relu RNN written as a time-step loop, for leaky units and echo-state reservoirs."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, nonlinearity: str, alpha: float,
                 echo_state: bool, spectral_radius: float, seed: int):
        super().__init__()
        self.hidden_size, self.num_layers, self.alpha = hidden_size, num_layers, alpha
        self.act = torch.tanh if nonlinearity == "tanh" else torch.relu
        self.inp = nn.ModuleList(nn.Linear(input_size if i == 0 else hidden_size, hidden_size)
                                 for i in range(num_layers))
        self.rec = nn.ModuleList(nn.Linear(hidden_size, hidden_size, bias=False) for _ in range(num_layers))
        if echo_state:
            gen = torch.Generator().manual_seed(seed)
            for rec in self.rec:
                w = torch.randn(hidden_size, hidden_size, generator=gen)
                w *= spectral_radius / torch.linalg.eigvals(w).abs().max()
                rec.weight.data.copy_(w)
            for p in self.parameters():
                p.requires_grad_(False)

    def forward(self, x: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        n, steps, _ = x.shape
        if h is None:
            h = x.new_zeros(self.num_layers, n, self.hidden_size)
        states = list(h.unbind(0))
        outputs = []
        for t in range(steps):
            inp = x[:, t]
            for layer in range(self.num_layers):
                new = self.act(self.inp[layer](inp) + self.rec[layer](states[layer]))
                states[layer] = self.alpha * states[layer] + (1 - self.alpha) * new
                inp = states[layer]
            outputs.append(inp)
        return torch.stack(outputs, 1), torch.stack(states)


class RecurrentNet(nn.Module):
    def __init__(self, cfg: Any, meta: dict):
        super().__init__()
        cell = cfg.name
        self.kind = meta["kind"]
        self.per_step = self.kind in ("tag", "lm")
        self.bidirectional = bool(cfg.bidirectional)
        self.pad_id = meta.get("pad_id")  # texts: right-padded ids, each row read to its own length
        self.pool = cfg.get("pool", "last")
        if self.pool == "auto":  # texts: the mean over the words (author task: test acc 0.452 vs 0.372 for last)
            self.pool = "mean" if self.pad_id is not None else "last"
        hidden, layers = int(cfg.hidden_size), int(cfg.num_layers)
        alpha = float(cfg.get("leak_alpha", 0.0))
        echo = bool(cfg.get("echo_state", False))
        if self.kind == "lm" and self.bidirectional:
            raise UserError(f"model.bidirectional=true cannot do language modelling: a {cell} that reads the "
                            "future would see the next token it must predict; use bidirectional=false")
        if self.pool not in POOLS:
            raise UserError(f"model.pool={self.pool}: choose one of: auto, {', '.join(POOLS)}")
        if not 0.0 <= alpha < 1.0:
            raise UserError(f"model.leak_alpha={alpha}: must be in [0, 1) (0 = a plain RNN)")
        if (alpha > 0 or echo) and self.bidirectional:
            raise UserError("model.leak_alpha / model.echo_state run a one-direction loop: set bidirectional=false")
        vectors = WordVectors(cfg, meta, int(cfg.embedding_size), "model.embedding_size")  # pretrained ones, if any
        in_size = vectors.width
        if "vocab_size" in meta:
            self.embed = vectors.table("vocab")
        else:
            self.embed = nn.Linear(meta["input_size"], in_size)
        dropout = float(cfg.dropout)
        self.word_dropout = WordDropout(float(cfg.get("word_dropout", 0.0)), meta)
        self.loop = alpha > 0 or echo
        if self.loop:
            self.rnn = LoopRNN(in_size, hidden, layers, cfg.get("nonlinearity", "tanh"), alpha, echo,
                               float(cfg.get("spectral_radius", 0.9)), int(cfg.get("reservoir_seed", 0)))
            if echo:
                self.embed.requires_grad_(False)
        else:
            extra = {"nonlinearity": cfg.nonlinearity} if cell == "rnn" else {}
            self.rnn = CELLS[cell](in_size, hidden, num_layers=layers, batch_first=True,
                                   dropout=dropout if layers > 1 else 0.0, bidirectional=self.bidirectional,
                                   **extra)
            if cell == "lstm":
                self._set_forget_bias(float(cfg.get("forget_bias", 0.0)))
        self.drop = nn.Dropout(dropout)
        if self.kind == "lm":
            out_features = meta["vocab_size"]
        else:
            out_features = meta.get("num_classes") or meta["output_size"]
        width = hidden * (2 if self.bidirectional else 1)
        self.head = nn.Linear(width, out_features)
        if cfg.get("tie_weights"):
            if self.kind != "lm" or not isinstance(self.embed, nn.Embedding):
                raise UserError("model.tie_weights=true shares the input embedding with the output layer: "
                                "only for language modelling")
            if in_size != width:
                raise UserError(f"model.tie_weights=true needs model.embedding_size == model.hidden_size "
                                f"({in_size}{' (the pretrained vectors)' if vectors.active else ''} != {width})")
            self.head.weight = vectors.tied(self.embed, "model.tie_weights")
        vectors.fill(self)

    def _set_forget_bias(self, value: float) -> None:
        """PyTorch orders LSTM gates (input, forget, cell, output); a positive forget bias keeps memory early on."""
        with torch.no_grad():
            for name, p in self.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    h = p.shape[0] // 4
                    p[h:2 * h].fill_(value)
                elif name.startswith("bias_hh"):
                    p[p.shape[0] // 4:p.shape[0] // 2].zero_()

    def step(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """Outputs for x given the carried state, and the new state: incremental decoding for `dl sample`."""
        out, state = self.rnn(self.embed(x), state)
        return self.head(self.drop(out)), state

    def unrolled(self, x: Tensor) -> tuple[Tensor, list[Tensor], list[tuple[Tensor, ...]]]:
        """The same network called one step at a time, so every h_t is a node of the graph (for the
        dLoss/dh_t picture; training uses the fused kernel). Returns outputs and, per step, the top layer's
        output and carried state: h_t (and the LSTM's cell c_t), retain_grad set on all of them."""
        emb = self.embed(x)
        state, outs, carried = None, [], []
        for t in range(emb.shape[1]):
            out, state = self.rnn(emb[:, t:t + 1], state)
            parts = state if isinstance(state, tuple) else (state,)  # LSTM carries (h, c)
            if out.requires_grad:  # not in an echo-state reservoir, where nothing before the readout learns
                out.retain_grad()
                for part in parts:
                    part.retain_grad()
            outs.append(out)
            carried.append(parts)
        return torch.cat(outs, 1), outs, carried

    def forward(self, x: Tensor) -> Tensor:
        if self.pad_id is not None:
            lengths = (x != self.pad_id).sum(1).clamp(min=1)
            return self.readout(self.run_padded(x, lengths), lengths)
        out, _ = self.rnn(self.embed(x))
        return self.readout(out)

    def run_padded(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Each right-padded row run to its own length: packed, so no direction reads a pad (the outputs past a
        row's end are zeros). The step loop (leaky, echo-state) reads one direction only: a step never sees the
        pads after it."""
        emb = self.embed(self.word_dropout(x))
        if self.loop:
            return self.rnn(emb)[0]
        packed = pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=x.shape[1])[0]

    def readout(self, out: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Per-step logits (tag, lm) or one output from the pooled steps (classify, regress); `lengths`: padded
        rows, pooled over their own steps only."""
        if self.per_step:
            return self.head(self.drop(out))
        if lengths is not None:
            return self.head(self.drop(self.pool_padded(out, lengths)))
        if self.pool == "mean":
            feat = out.mean(1)
        elif self.pool == "max":
            feat = out.amax(1)
        elif self.bidirectional:  # forward direction's last step + backward direction's first step
            h = out.shape[-1] // 2
            feat = torch.cat([out[:, -1, :h], out[:, 0, h:]], -1)
        else:
            feat = out[:, -1]
        return self.head(self.drop(feat))

    def pool_padded(self, out: Tensor, lengths: Tensor) -> Tensor:
        """One vector per row from its first lengths[i] steps only (gather, not Python indexing: a traced or
        exported model keeps any batch size)."""
        keep = torch.arange(out.shape[1], device=out.device) < lengths[:, None]
        if self.pool == "mean":
            return masked_mean(out, keep)
        if self.pool == "max":
            return out.masked_fill(~keep.unsqueeze(-1), float("-inf")).amax(1)
        last = out.gather(1, (lengths - 1)[:, None, None].expand(-1, 1, out.shape[-1])).squeeze(1)  # own last step
        if self.bidirectional:  # forward direction's own last step + backward direction's first step
            h = out.shape[-1] // 2
            return torch.cat([last[:, :h], out[:, 0, h:]], -1)
        return last


def build(cfg: Any, meta: dict) -> RecurrentNet:
    return RecurrentNet(cfg, meta)


SEQUENCES = {("regress", "sequence"), ("classify", "sequence"), ("tag", "sequence"), ("lm", "text"),
             ("classify", "text")}
FAMILIES = {
    "rnn": Family(build, SEQUENCES, "Elman RNN (cuDNN nn.RNN): sequence and text classification, regression, "
                                    "tagging, LMs"),
    "lstm": Family(build, SEQUENCES, "LSTM (cuDNN nn.LSTM): sequence and text classification, regression, "
                                     "tagging, LMs"),
    "gru": Family(build, SEQUENCES, "GRU (cuDNN nn.GRU): sequence and text classification, regression, "
                                    "tagging, LMs"),
}
