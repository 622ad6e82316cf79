"""Transformer LM training throughput: tokens/s and model FLOPs utilisation (MFU) of dlcli's `transformer` model.

Default size is GPT-2 small (d_model 768, 12 heads, 12 layers, block 1024, vocab 50304, learned positions, tied
embeddings, no dropout) with bf16 autocast and fused AdamW on CUDA; `--compile` adds torch.compile. Random tokens
(throughput does not depend on the text). FLOPs are counted as nanoGPT's estimate_mfu does:
6 * N (parameters, position table excluded) + 12 * layers * d_model * block per token, forward + backward; MFU
divides the achieved FLOP/s by the device's dense bf16 peak (--peak-tflops, default 989: H100 / H200 SXM).

Usage:  python bench/transformer.py [--compile] [--batch 16] [--steps 30] [--json PATH]   (a GPU)
        python bench/transformer.py --tiny                     (CPU smoke test: d 64, 2 layers, block 64, vocab 256)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from dlcli.models.transformer import build


def model_flops_per_token(model: torch.nn.Module, layers: int, d_model: int, block: int) -> float:
    n = sum(p.numel() for p in model.parameters())
    n -= model.embed.positions.weight.numel() if model.embed.positions is not None else 0
    return 6 * n + 12 * layers * d_model * block


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--block", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=30, help="timed steps (after --warmup untimed ones)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the device (H100/H200: 989)")
    p.add_argument("--tiny", action="store_true", help="a tiny model for a CPU smoke test")
    p.add_argument("--json")
    args = p.parse_args()
    if args.tiny:
        args.d_model, args.heads, args.layers, args.block, args.vocab, args.batch = 64, 4, 2, 64, 256, 8
        args.steps, args.warmup = min(args.steps, 5), min(args.warmup, 2)
    device = torch.device(args.device)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(0)
    cfg = OmegaConf.create({"d_model": args.d_model, "heads": args.heads, "layers": args.layers,
                            "ff_size": 4 * args.d_model, "dropout": 0.0, "norm": "pre", "residual": True,
                            "positional": "learned", "max_len": args.block, "tie_embeddings": True,
                            "activation": "gelu", "causal": True})
    model = build(cfg, {"kind": "lm", "vocab_size": args.vocab, "block_size": args.block}).to(device)
    flops_per_token = model_flops_per_token(model, args.layers, args.d_model, args.block)
    decay = [q for q in model.parameters() if q.ndim >= 2]
    rest = [q for q in model.parameters() if q.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95), **({"fused": True} if device.type == "cuda" else {}))
    step_model = torch.compile(model) if args.compile else model
    data = torch.randint(0, args.vocab, (args.batch, args.block + 1), device=device)
    x, y = data[:, :-1], data[:, 1:]

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = step_model(x)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    for _ in range(args.warmup):  # compilation, cuDNN/cuBLAS autotuning, allocator warm-up
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    seconds = time.perf_counter() - start
    tokens_per_s = args.steps * args.batch * args.block / seconds
    achieved = tokens_per_s * flops_per_token
    mfu = achieved / (args.peak_tflops * 1e12)
    params = sum(q.numel() for q in model.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"transformer LM: {params / 1e6:.1f}M params, d_model {args.d_model}, {args.layers} layers, "
          f"{args.heads} heads, block {args.block}, batch {args.batch}, vocab {args.vocab}")
    print(f"device {name}, {'bf16 autocast' if bf16 else 'fp32'}, compile {args.compile}, {args.steps} timed steps "
          f"(final loss {loss.item():.3f})")
    print(f"  {tokens_per_s:12,.0f} tokens/s   {seconds / args.steps * 1000:8.1f} ms/step   "
          f"{achieved / 1e12:8.1f} TFLOP/s   MFU {mfu:.1%} of {args.peak_tflops:g} TFLOP/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "device": name, "params": params,
                                               "tokens_per_s": tokens_per_s, "flops_per_token": flops_per_token,
                                               "tflops": achieved / 1e12, "mfu": mfu}, indent=2))


if __name__ == "__main__":
    main()
