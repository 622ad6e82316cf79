"""Recurrent LM throughput: `dl train model=lstm|gru` (dlcli's RecurrentNet through dlcli.engine.loop.fit) vs a bare
hand-written embedding -> cuDNN nn.LSTM/nn.GRU -> linear loop, same shape, data, optimizer and clipping.

Shape on CUDA: 2 layers x 512, batch 64, T (block) 256, as the issue asks; on CPU 2 x 128, batch 32, T 64 (the
GPU shape takes ~10 s a step on 2 cores). Tokens/s = batch x T x steps / seconds. Goal: dl >= 0.95x bare.
Data: tiny-shakespeare from $DL_DATA_DIR (else the generated grammar); throughput does not depend on the text.

    python -m bench recurrent [--device cuda] [--quick]
"""

from __future__ import annotations

import torch
from torch import nn

from bench.common import Context, Result, compose, data_dir, paired_ratio
from bench.loop import race

# (layers, hidden, batch, block, steps per repetition)
SHAPES = {"cuda": (2, 512, 64, 256, 50), "cpu": (2, 128, 32, 64, 20), "cpu-quick": (2, 128, 32, 64, 8)}


class BareLM(nn.Module):
    """What a person writes by hand: embedding -> nn.LSTM / nn.GRU -> linear."""

    def __init__(self, cell: str, vocab: int, emb: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](emb, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(x))[0])


def measure(cell: str, ctx: Context) -> Result:
    key = "cuda" if ctx.device.type == "cuda" else ("cpu-quick" if ctx.quick else "cpu")
    layers, hidden, batch, block, steps = SHAPES[key]
    has_text = (data_dir() / "tinyshakespeare" / "input.txt").is_file()
    cfg = compose([f"model={cell}", f"dataset={'shakespeare' if has_text else 'grammar'}",
                   f"device={'cuda' if ctx.device.type == 'cuda' else 'cpu'}", f"model.num_layers={layers}",
                   f"model.hidden_size={hidden}", f"dataset.block_size={block}", f"trainer.batch_size={batch}",
                   "trainer.epochs=1"])
    emb = int(cfg.model.embedding_size)
    r = race(cfg, 1, steps, ctx, bare_model=lambda task: BareLM(cell, task.meta["vocab_size"], emb, hidden, layers))
    tokens = batch * block
    dl, bare = [x * tokens for x in r["dl"]], [x * tokens for x in r["bare"]]
    ratio = max(dl) / max(bare)  # the fastest round of each
    return Result(
        case=f"recurrent/{cell}", metric="tokens/s", dl=max(dl), baseline=max(bare),
        baseline_name=f"bare nn.{cell.upper()} loop", ratio=ratio, ratio_name="dl / bare tokens/s", goal=">= 0.95",
        met=ratio >= 0.95,
        details={"shape": f"{layers}x{hidden}, batch {batch}, T {block}", "dataset": r["dataset"],
                 "steps_per_rep": r["steps"],
                 "ratio_cpu": 1 / r["cpu_ratio"], "ratio_paired_median": paired_ratio(dl, bare), "reps": len(dl),
                 "dl_tokens_per_s": dl, "bare_tokens_per_s": bare,
                 "precision": r["precision"]})


def run(ctx: Context, names: list[str] | None = None) -> list[Result]:
    return [measure(cell, ctx) for cell in (names or ["lstm", "gru"])]
