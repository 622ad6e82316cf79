"""Run by tests/test_distributed.py under torchrun (2 gloo processes): one DDP step for every model family, compared
with one process stepping on the whole global batch. Writes {family: {"diff": .., "spread": .., "moved": ..}} (rank 0).

diff: the largest |DDP weight - one-process weight| after the step; spread: the largest difference between the two
ranks' weights; moved: the largest weight change of the step (so a diff of 0 is not a step that did nothing).
"""

from __future__ import annotations

import copy
import json
import sys

import torch
import torch.distributed as dist
from hydra import compose, initialize_config_module

from dlcli.data import build_task
from dlcli.engine import distributed
from dlcli.models import build_model

CPU = torch.device("cpu")
FIXED_PAIRS = ["dataset=reverse", "dataset.n_train=64", "dataset.n_val=16", "dataset.n_test=16", "dataset.min_len=5",
               "dataset.max_len=5", "model.dropout=0.0"]
FAMILIES = {  # small data, no dropout (the two sides would draw different masks), fixed lengths for seq2seq
    "mlp": ["dataset.n_samples=200"],
    "cnn": ["dataset.n_samples=100", "model.batch_norm=false", "model.dropout=0.0"],
    "cnn_bn": ["dataset.n_samples=100", "model.dropout=0.0"],  # BatchNorm: per-rank batch stats on CPU
    "rnn": ["dataset.n_sentences=200"],
    "lstm": ["dataset.n_sentences=200"],
    "gru": ["dataset=adding", "dataset.n_samples=200", "dataset.seq_len=10"],
    # padded texts of many lengths (word dropout off: like dropout, the two sides would draw different masks)
    "lstm_text": ["dataset=reviews", "dataset.n_samples=200", "model.hidden_size=32", "model.word_dropout=0.0"],
    "seq2seq": FIXED_PAIRS,
    "attention": FIXED_PAIRS,
    "transformer": FIXED_PAIRS,
    # one negative group: both sides pair each row with the same shared negatives
    "skipgram": ["dataset.sentences=300", "model.negative_group=100000"],
    "cbow": ["dataset.sentences=300", "model.negative_group=100000"],
}


def compare_one_step(model: torch.nn.Module, task, device: torch.device, make_step=None) -> dict:
    """One SGD step of dl's DDP step (make_step, default distributed.train_step: this rank's slice) against a copy
    stepping on the whole batch: {"diff", "spread" (between ranks), "moved"}."""
    single = copy.deepcopy(model)
    before = [p.detach().clone() for p in model.parameters()]
    batch = next(task.batches("train", 200 if task.kind == "embedding" else 16, shuffle=True, seed=1))
    step = (make_step or distributed.train_step)(model, task)
    for m, whole in ((model, False), (single, True)):
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        loss, _ = task.step(m, batch) if whole else step(batch)
        loss.backward()
        opt.step()
    diff = max(float((p - q).detach().abs().max()) for p, q in zip(model.parameters(), single.parameters()))
    moved = max(float((p - b).detach().abs().max()) for p, b in zip(model.parameters(), before))
    spread = 0.0
    for p in model.parameters():
        theirs = p.detach().clone()
        dist.broadcast(theirs, src=0)
        spread = max(spread, float((p.detach() - theirs).abs().max()))
    spread_t = torch.tensor([spread], device=device)
    dist.all_reduce(spread_t, op=dist.ReduceOp.MAX)
    return {"diff": diff, "spread": float(spread_t), "moved": moved}


def main(out: str) -> None:
    distributed.init(CPU)
    results = {}
    with initialize_config_module(config_module="dlcli.conf", version_base="1.3"):
        for family, overrides in FAMILIES.items():
            cfg = compose("config", overrides=[f"model={family.split('_')[0]}", *overrides])
            torch.manual_seed(0)
            task = build_task(cfg.dataset, cfg.loss, CPU)
            model = build_model(cfg.model, task.meta)
            results[family] = compare_one_step(model, task, CPU)
    if distributed.is_main():
        with open(out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
