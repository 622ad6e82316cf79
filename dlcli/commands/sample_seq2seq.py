"""`dl sample CKPT` for encoder-decoder models: translate --input TEXT (or lines on stdin), or show test examples;
greedy or beam search; --attention-plot draws the cross-attention weights."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from dlcli.base.console import make_console
from dlcli.base.errors import UserError
from dlcli.base.targets import model_name
from dlcli.base.tokens import SPECIALS, unknown_tokens
from dlcli.commands.restore import test_examples
from dlcli.data.pairs import encode, ids_to_text, max_output_len, output_tokens, tokens_of, visible_tokens
from dlcli.data.translation import normalize
from dlcli.models.decoding import beam_search, greedy_decode
from dlcli.reports.plots import attention_heatmaps


def source_tokens(text: str, meta: dict) -> list[str]:
    """User text -> source tokens the model knows, normalised as its training data was; one line on bad input."""
    if meta.get("direction"):  # eng_fra: the same normalisation as training
        text = normalize(text)
    tokens = tokens_of(text.strip(), meta["src_level"])
    if not tokens:
        raise UserError("--input is empty: give a sentence to translate, e.g. --input \"abcde\"")
    problem = unknown_tokens(tokens, meta["src_vocab"][len(SPECIALS):], meta["src_level"], "--input",
                             "source vocabulary")
    if problem:
        raise UserError(problem)
    return tokens


def decode(model: torch.nn.Module, src: torch.Tensor, meta: dict, beam: int, length_penalty: float = 0.6,
           max_len: int | None = None) -> tuple[torch.Tensor, Any]:
    if beam < 1:
        raise UserError(f"--beam {beam}: the beam size must be at least 1 (1 = greedy)")
    if max_len is not None and max_len < 1:
        raise UserError(f"--max-new-tokens {max_len}: the longest output must be at least 1 token")
    if length_penalty < 0:
        raise UserError(f"--length-penalty {length_penalty}: must be >= 0 (0 = no length normalisation)")
    max_len = max_len or max_output_len(meta)
    if beam == 1:
        return greedy_decode(model, src, max_len)
    return beam_search(model, src, beam, max_len, alpha=length_penalty)


def sample_seq2seq(r: Any, input_text: str | None, num: int | None, seed: int, beam: int = 1,
                   attention_plot: str | None = None, length_penalty: float = 0.6,
                   max_len: int | None = None) -> list[str]:

    meta = r.ckpt["meta"]
    device = r.runtime.device
    lines = [input_text] if input_text is not None else _stdin_lines()
    targets = None
    if lines:
        sources = [source_tokens(line, meta) for line in lines]
        src = encode(sources, meta["src_vocab"], bos_eos=False).to(device)
    else:
        src, tgt, _ = test_examples(r, 10 if num is None else num, seed)
        sources = [visible_tokens(row, meta["src_vocab"]) for row in src.tolist()]
        targets = [ids_to_text(row, meta["tgt_vocab"], meta["tgt_level"]) for row in tgt.tolist()]
    ids, attn = decode(r.model, src, meta, beam, length_penalty, max_len)
    outputs = [ids_to_text(row, meta["tgt_vocab"], meta["tgt_level"]) for row in ids.tolist()]
    if targets is None:
        for line in outputs:
            sys.stdout.write(line + "\n")
    else:
        _table(r, sources, targets, outputs, meta, beam)
    if attention_plot:
        _attention_plot(r, sources, ids, attn, Path(attention_plot))
    return outputs


def _stdin_lines() -> list[str]:
    if sys.stdin is None or sys.stdin.isatty():
        return []
    return [line.rstrip("\n") for line in sys.stdin if line.strip()]


def _table(r: Any, sources: list[list[str]], targets: list[str], outputs: list[str], meta: dict, beam: int) -> None:
    sep = "" if meta["src_level"] == "char" else " "
    how = "greedy" if beam == 1 else f"beam {beam}"
    table = Table(title=f"{r.title}: test examples ({how})", title_justify="left")
    for col in ("source", "target", "output"):
        table.add_column(col)
    for s, t, o in zip(sources, targets, outputs):
        table.add_row(sep.join(s), t, o + (" ✓" if o == t else " ✗"))
    console = make_console()
    console.print(table)
    console.print(f"{sum(o == t for o, t in zip(outputs, targets))}/{len(outputs)} exactly right")


def _attention_plot(r: Any, sources: list[list[str]], ids: torch.Tensor, attn: Any, path: Path) -> None:
    if attn is None:
        raise UserError(f"--attention-plot: model={model_name(r.cfg.model)} has no attention to draw "
                        "(the fixed-context seq2seq); use a model=attention or model=transformer checkpoint")
    if path.suffix.lower() != ".png":
        raise UserError(f"--attention-plot {path}: name a .png file")
    shown = min(len(sources), 4)
    examples = [(sources[i], output_tokens(ids[i].tolist(), r.ckpt["meta"]["tgt_vocab"]), attn[i].cpu())
                for i in range(shown)]
    attention_heatmaps(examples, path, f"{model_name(r.cfg.model)}: cross-attention")
    make_console(stderr=True).print(f"attention plot: {path}" + (f" (first {shown} inputs)" if shown < len(sources)
                                                                   else ""))
