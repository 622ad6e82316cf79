"""`dl sample CKPT` for language models: prompt, temperature, top-k/top-p, tokens streamed as they come; with --out or
--json, one row per prompt (a --prompt-file line) and sample: `id`, [`sample`,] `prompt`, `generation`."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dlcli.base.console import make_console
from dlcli.base.errors import UserError
from dlcli.base.tokens import unknown_tokens
from dlcli.commands import predictions
from dlcli.data.language import detokenize, grammar_validity, tokenize
from dlcli.models.decoding import generate, generate_tokens


@dataclass
class Sampling:
    """How each token is drawn (the options' ranges: sample_options.py)."""

    max_new_tokens: int = 300
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0


def encode_prompt(text: str, meta: dict, what: str = "--prompt") -> list[int]:
    vocab = meta["vocab"]
    index = {t: i for i, t in enumerate(vocab)}
    tokens = tokenize(text, meta.get("level", "char"))
    problem = None if meta.get("unk") else unknown_tokens(tokens, vocab, meta.get("level", "char"), what)
    if problem:
        raise UserError(problem)
    if not tokens:
        raise UserError(f"{what} is empty")
    return [index.get(t, index.get(meta.get("unk"), 0)) for t in tokens]


def default_prompt(meta: dict) -> str:
    """Where generation starts without a prompt: a new line, if the model knows one."""
    return "\n" if "\n" in meta["vocab"] else meta["vocab"][0]


def sample_text(r: Any, prompt: str | None = None, prompt_file: str | None = None, max_new_tokens: int = 300,
                temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                num_samples: int = 1, seed: int = 0) -> list[str]:
    """To the terminal: the prompt (a --prompt-file's whole text: one prompt), then each token as it is made."""
    meta = r.ckpt["meta"]
    if prompt_file:
        if not Path(prompt_file).is_file():
            raise UserError(f"--prompt-file {prompt_file}: no such file")
        prompt = Path(prompt_file).read_text(encoding="utf-8")
    if prompt is None:
        prompt = default_prompt(meta)
    ids = encode_prompt(prompt, meta)
    device = r.runtime.device
    gen = torch.Generator(device=device).manual_seed(seed)
    vocab, level = meta["vocab"], meta.get("level", "char")
    sep = "" if level == "char" else " "
    texts, keep = [], meta.get("validator") == "grammar"  # the text is kept only to be checked
    for i in range(num_samples):
        if num_samples > 1:
            sys.stdout.write(f"--- sample {i + 1}/{num_samples} ---\n")
        sys.stdout.write(prompt)
        made = []
        for tok in generate_tokens(r.model, torch.tensor([ids], device=device), max_new_tokens, temperature, top_k,
                                   top_p, gen):
            word = vocab[int(tok[0])]
            sys.stdout.write(sep + word if sep and word != "\n" else word)
            sys.stdout.flush()
            if keep:
                made.append(word)
        sys.stdout.write("\n")
        if keep:
            texts.append(detokenize([*tokenize(prompt, level), *made], level))
    _say_grammar(meta, texts)
    return texts


def write_text_rows(r: Any, prompt: str | None, prompt_file: str | None, how: Sampling, num_samples: int,
                    out: str | None, as_json: bool) -> int:
    """--out/--json: a row per prompt and sample. A --prompt-file holds one prompt per line, read as a stream after
    a first pass has checked every line (tokens the model never saw: one line naming the line)."""
    meta = r.ckpt["meta"]
    total = None
    prompts: Iterable[tuple[int, str, str]]  # line number, prompt, how an error names it
    if prompt_file:
        def where(n: int) -> str:
            return f"--prompt-file={prompt_file} line {n}"

        total = predictions.scan(prompt_file, "--prompt-file", lambda n, text: encode_prompt(text, meta, where(n)))
        prompts = ((n, text, where(n)) for n, text in predictions.lines(prompt_file, "--prompt-file"))
    else:
        prompts = [(1, default_prompt(meta) if prompt is None else prompt, "--prompt")]
    grammar = [0, 0]
    rows = _rows(r, prompts, how, num_samples, grammar)
    count = predictions.write_rows(out, as_json, rows, total and total * num_samples, "generations")
    if meta.get("validator") == "grammar":
        _say_grammar(meta, [], grammar)
    return count


def _rows(r: Any, prompts: Iterable[tuple[int, str, str]], how: Sampling, num_samples: int,
          grammar: list[int]) -> Iterator[dict]:
    """Each prompt's samples are made as one batch (up to trainer.eval_batch_size rows); prompts one after another,
    as the models have no padding mask for prompts of different lengths. grammar: [valid, total] so far."""
    meta, device = r.ckpt["meta"], r.runtime.device
    vocab, level = meta["vocab"], meta.get("level", "char")
    gen = torch.Generator(device=device).manual_seed(how.seed)
    batch = max(1, int(r.cfg.trainer.eval_batch_size))
    for n, text, what in prompts:
        ids = encode_prompt(text, meta, what)
        for start in range(0, num_samples, batch):
            size = min(batch, num_samples - start)
            made = generate(r.model, torch.tensor([ids] * size, device=device), how.max_new_tokens, how.temperature,
                            how.top_k, how.top_p, gen)[:, len(ids):]
            for j, row in enumerate(made.tolist()):
                generation = detokenize([vocab[t] for t in row], level)
                if meta.get("validator") == "grammar":
                    valid, complete = grammar_validity([text + generation])
                    grammar[0], grammar[1] = grammar[0] + valid, grammar[1] + complete
                yield {"id": n, **({"sample": start + j + 1} if num_samples > 1 else {}), "prompt": text,
                       "generation": generation}


def _say_grammar(meta: dict, texts: list[str], counts: list[int] | None = None) -> None:
    if meta.get("validator") != "grammar":
        return
    valid, total = counts if counts is not None else grammar_validity(texts)
    share = f"{valid / total:.1%}" if total else "n/a"
    make_console(stderr=True).print(f"grammatical: {valid}/{total} complete sentences ({share})")
