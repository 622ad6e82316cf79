"""`dl sample CKPT` for language models: prompt, temperature, top-k/top-p, tokens streamed as they come."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from dlcli.base.console import make_console
from dlcli.base.errors import UserError
from dlcli.base.tokens import unknown_tokens
from dlcli.data.language import detokenize, grammar_validity, tokenize
from dlcli.models.decoding import generate


def encode_prompt(text: str, meta: dict) -> list[int]:
    vocab = meta["vocab"]
    index = {t: i for i, t in enumerate(vocab)}
    tokens = tokenize(text, meta.get("level", "char"))
    problem = None if meta.get("unk") else unknown_tokens(tokens, vocab, meta.get("level", "char"), "--prompt")
    if problem:
        raise UserError(problem)
    return [index.get(t, index.get(meta.get("unk"), 0)) for t in tokens]


def sample_text(r: Any, prompt: str | None = None, prompt_file: str | None = None, max_new_tokens: int = 300,
                temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                num_samples: int = 1, seed: int = 0) -> list[str]:
    meta = r.ckpt["meta"]
    if prompt_file:
        if not Path(prompt_file).is_file():
            raise UserError(f"--prompt-file {prompt_file}: no such file")
        prompt = Path(prompt_file).read_text(encoding="utf-8")
    if prompt is None:
        prompt = "\n" if "\n" in meta["vocab"] else meta["vocab"][0]
    # the options' ranges: sample_options.py
    ids = encode_prompt(prompt, meta)
    if not ids:
        raise UserError("--prompt is empty")
    device = r.runtime.device
    gen = torch.Generator(device=device).manual_seed(seed)
    vocab, level = meta["vocab"], meta.get("level", "char")
    sep = "" if level == "char" else " "
    texts = []
    for i in range(num_samples):
        if num_samples > 1:
            sys.stdout.write(f"--- sample {i + 1}/{num_samples} ---\n")
        sys.stdout.write(prompt)

        def show(tok: torch.Tensor) -> None:
            sys.stdout.write(sep + vocab[int(tok[0])] if sep and vocab[int(tok[0])] != "\n" else vocab[int(tok[0])])
            sys.stdout.flush()

        out = generate(r.model, torch.tensor([ids], device=device), max_new_tokens, temperature, top_k, top_p,
                       gen, on_token=show)
        sys.stdout.write("\n")
        texts.append(detokenize([vocab[t] for t in out[0].tolist()], level))
    if meta.get("validator") == "grammar":
        valid, total = grammar_validity(texts)
        share = f"{valid / total:.1%}" if total else "n/a"
        make_console(stderr=True).print(f"grammatical: {valid}/{total} complete sentences ({share})")
    return texts
