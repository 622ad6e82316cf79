"""`dl sample CKPT` for encoder-decoder models: translate --input TEXT, the lines of --input FILE (or of stdin), or show
test examples; greedy or beam search; --attention-plot draws the cross-attention weights. With --out or --json, one
row per source: `id` (the line number, or "test #i"), `source`, [`target`,] `translation`, [`score`: beam search's
log-probability / length penalty]."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from dlcli.base.console import make_console
from dlcli.base.errors import UserError
from dlcli.base.targets import model_name
from dlcli.base.tokens import SPECIALS, unknown_tokens
from dlcli.commands import predictions
from dlcli.commands.restore import test_examples
from dlcli.data.pairs import encode, ids_to_text, max_output_len, output_tokens, tokens_of, visible_tokens
from dlcli.data.translation import normalize
from dlcli.models.decoding import beam_search_scored, greedy_decode
from dlcli.reports.plots import attention_heatmaps


@dataclass
class Source:
    id: int | str
    text: str  # as the user wrote it (test examples: their tokens joined)
    tokens: list[str]
    target: str | None = None


def source_tokens(text: str, meta: dict, what: str = "--input") -> list[str]:
    """User text -> source tokens the model knows, normalised as its training data was; one line on bad input."""
    if meta.get("direction"):  # eng_fra: the same normalisation as training
        text = normalize(text)
    tokens = tokens_of(text.strip(), meta["src_level"])
    if not tokens:
        raise UserError(f"{what} is empty: give a sentence to translate, e.g. --input \"abcde\"")
    problem = unknown_tokens(tokens, meta["src_vocab"][len(SPECIALS):], meta["src_level"], what, "source vocabulary")
    if problem:
        raise UserError(problem)
    return tokens


def decode(model: torch.nn.Module, src: torch.Tensor, meta: dict, beam: int, length_penalty: float = 0.6,
           max_len: int | None = None, keep_attention: bool = True) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
    """Output ids, attention (if kept) and, for beam search, each winner's score."""
    if beam < 1:
        raise UserError(f"--beam {beam}: the beam size must be at least 1 (1 = greedy)")
    if max_len is not None and max_len < 1:
        raise UserError(f"--max-new-tokens {max_len}: the longest output must be at least 1 token")
    if length_penalty < 0:
        raise UserError(f"--length-penalty {length_penalty}: must be >= 0 (0 = no length normalisation)")
    max_len = max_len or max_output_len(meta)
    if beam == 1:
        return (*greedy_decode(model, src, max_len, keep_attention), None)
    return beam_search_scored(model, src, beam, max_len, alpha=length_penalty, keep_attention=keep_attention)


def sample_seq2seq(r: Any, input_text: str | None, num: int | None, seed: int, beam: int = 1,
                   attention_plot: str | None = None, length_penalty: float = 0.6, max_len: int | None = None,
                   out: str | None = None, as_json: bool = False) -> int:
    """Translate and print (or write rows); returns how many sources were translated."""
    sources, total = _sources(r, input_text, num, seed)
    decoded = _translate(r, sources, beam, length_penalty, max_len, attention_plot)
    if predictions.wanted(out, as_json):
        return predictions.write_rows(out, as_json, (_row(s, text, score) for s, text, score in decoded), total,
                                      "translations")
    if input_text is None and total is not None:  # test examples: a table with their targets
        done = list(decoded)
        _table(r, [s.tokens for s, _, _ in done], [s.target or "" for s, _, _ in done], [t for _, t, _ in done],
               r.ckpt["meta"], beam)
        return len(done)
    count = 0
    for _, text, _ in decoded:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        count += 1
    return count


def _row(s: Source, text: str, score: float | None) -> dict:
    row: dict[str, Any] = {"id": s.id, "source": s.text}
    if s.target is not None:
        row["target"] = s.target
    row["translation"] = text
    if score is not None:
        row["score"] = round(score, 6)
    return row


def _sources(r: Any, input_text: str | None, num: int | None, seed: int) -> tuple[Iterable[Source], int | None]:
    """What to translate, as a stream, and how many (None: not known before the end, as on stdin)."""
    meta = r.ckpt["meta"]
    given = predictions.text_inputs(
        input_text, lambda n, text: source_tokens(text, meta, f"--input={input_text} line {n}"))
    if given is not None:
        texts, total = given
        return (Source(n, text.strip(), source_tokens(text, meta, where)) for n, text, where in texts), total
    src, tgt, labels = test_examples(r, 10 if num is None else num, seed)
    sep = "" if meta["src_level"] == "char" else " "
    examples = []
    for label, s, t in zip(labels, src.tolist(), tgt.tolist()):
        tokens = visible_tokens(s, meta["src_vocab"])
        examples.append(Source(label, sep.join(tokens), tokens, ids_to_text(t, meta["tgt_vocab"], meta["tgt_level"])))
    return examples, len(examples)


def _translate(r: Any, sources: Iterable[Source], beam: int, length_penalty: float, max_len: int | None,
               attention_plot: str | None) -> Iterator[tuple[Source, str, float | None]]:
    """Sources decoded in batches of trainer.eval_batch_size sentences (beam search: that many sentence x beam
    rows), greedy and beam search alike; each batch's outputs are handed on before the next batch is read."""
    meta, device = r.ckpt["meta"], r.runtime.device
    batch = max(1, int(r.cfg.trainer.eval_batch_size) // beam)
    for i, chunk in enumerate(predictions.chunked(sources, batch)):
        src = encode([s.tokens for s in chunk], meta["src_vocab"], bos_eos=False).to(device)
        plot = attention_plot is not None and i == 0  # the plot shows the first inputs: only they keep attention
        ids, attn, scores = decode(r.model, src, meta, beam, length_penalty, max_len, keep_attention=plot)
        if plot:
            _attention_plot(r, [s.tokens for s in chunk], ids, attn, Path(attention_plot))
        texts = [ids_to_text(row, meta["tgt_vocab"], meta["tgt_level"]) for row in ids.tolist()]
        score_list = scores.tolist() if scores is not None else [None] * len(chunk)
        yield from zip(chunk, texts, score_list)


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
