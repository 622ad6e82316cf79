"""`dl sample CKPT` for text classifiers (dataset=text_classes, reviews): the class of --input TEXT, of each line of
--input FILE or of stdin, or of test examples (shown as their tokens). A table shows the --top-k likeliest classes;
with --out or --json, one row per text: `id` (the line number, or "test #i"), `text`, `unknown`, [`true`,]
`predicted`, `probability`, `prob_<class>` for every class.

Texts are read as training read them: the dataset's own tokenizer with the checkpoint's settings (level, lowercase,
punctuation), cut to its max_len tokens, looked up in the stored vocabulary. A token the model never saw is <unk>:
counted in `unknown`, never an error. A blank line, or one with no tokens once tokenized (only punctuation, with
punctuation=drop), is skipped, the other lines keeping their numbers as ids; one line on stderr names the skipped ones.
Texts go through the model trainer.eval_batch_size at a time, each batch padded to its longest text with <pad>.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from dlcli.base.console import make_console
from dlcli.base.errors import UserError
from dlcli.commands import predictions
from dlcli.commands.restore import test_examples
from dlcli.data.pairs import encode
from dlcli.data.text_classes import text_tokenizer


@dataclass
class Text:
    id: int | str
    text: str  # as the user wrote it (test examples: their tokens joined)
    tokens: list[str]  # what the model reads: at most max_len of them
    unknown: int  # tokens outside the vocabulary (<unk> to the model)
    true: int | None = None


@dataclass
class Notes:
    """What the texts read so far had to be changed or skipped for: said once, after the predictions."""

    skipped: list[str] = field(default_factory=list)
    cut: int = 0


def is_text_classifier(meta: dict) -> bool:
    """A classifier of texts: its vocabulary, tokenizer settings and pad id are stored with it."""
    return meta.get("kind") == "classify" and {"vocab", "pad_id", "level", "lowercase", "punctuation",
                                               "max_len"} <= meta.keys()


def sample_text_classes(r: Any, input_text: str | None, num: int, seed: int, top_k: int, out: str | None,
                        as_json: bool) -> int:
    """The table of predictions, or the rows of --out/--json; returns how many texts were classified."""
    notes = Notes()
    given = predictions.text_inputs(input_text)
    if given is None:
        texts: Iterable[Text] = _test_texts(r, num, seed)
        total: int | None = len(texts)
    else:
        lines, total = given
        texts = _user_texts(lines, r.ckpt["meta"], notes)
    scored = _classify(r, texts)
    if predictions.wanted(out, as_json):
        count = predictions.write_rows(out, as_json, _rows(scored, r.ckpt["meta"]), total, "predictions")
    else:
        count = _table(r, list(scored), top_k, lines_given=input_text is None or predictions.names_a_file(input_text))
    _say(notes, r.ckpt["meta"])
    return count


# ------------------------------------------------------------------------------------------------------ input
def encoder(meta: dict) -> Callable[[str], tuple[list[str], int, bool]]:
    """text -> (tokens as the model reads them, how many it never saw, whether the text was cut): dataset=text_classes's
    tokenizer with the settings the model was trained with."""
    tokenize = text_tokenizer(str(meta["level"]), bool(meta["lowercase"]), str(meta["punctuation"]))
    known, max_len = set(meta["vocab"]), int(meta["max_len"])

    def encode_text(text: str) -> tuple[list[str], int, bool]:
        tokens = tokenize(text)
        kept = tokens[:max_len]
        return kept, sum(t not in known for t in kept), len(tokens) > max_len

    return encode_text


def _user_texts(lines: Iterable[tuple[int, str, str]], meta: dict, notes: Notes) -> Iterator[Text]:
    encode_text = encoder(meta)
    for n, text, where in lines:
        if not text.strip() and where == "--input":
            raise UserError('--input is empty: give a text to classify, e.g. --input "the film was great"')
        tokens, unknown, cut = encode_text(text)
        if not tokens:
            if where == "--input":
                raise UserError(f"--input {text!r} has no tokens once tokenized (dataset.punctuation="
                                f"{meta['punctuation']}); give a text with words in it")
            notes.skipped.append(where)
            continue
        notes.cut += cut
        yield Text(n, text.strip(), tokens, unknown)


def _test_texts(r: Any, num: int, seed: int) -> list[Text]:
    """`num` test examples drawn with `seed`, their ids shown as tokens (<unk> where the train split lacked one)."""
    meta = r.ckpt["meta"]
    x, y, labels = test_examples(r, num, seed)
    vocab, pad, unk = meta["vocab"], int(meta["pad_id"]), int(meta["unk_id"])
    sep = "" if meta["level"] == "char" else " "
    texts = []
    for label, row, true in zip(labels, x.tolist(), y.tolist()):
        tokens = [vocab[i] for i in row if i != pad]
        texts.append(Text(label, sep.join(tokens), tokens, sum(i == unk for i in row), int(true)))
    return texts


# ------------------------------------------------------------------------------------------------------ the model
def _classify(r: Any, texts: Iterable[Text]) -> Iterator[tuple[list[Text], torch.Tensor]]:
    """(texts, their logits), trainer.eval_batch_size texts at a time, each batch encoded as training encoded the
    splits (right-padded with <pad> to its longest text); each batch is handed on before the next is read."""
    meta, device = r.ckpt["meta"], r.runtime.device
    size = max(1, int(r.cfg.trainer.eval_batch_size))
    for chunk in predictions.chunked(texts, size):
        x = encode([t.tokens for t in chunk], meta["vocab"], False).to(device)
        yield chunk, predictions.predict(r.model, x, size)


def _rows(scored: Iterable[tuple[list[Text], torch.Tensor]], meta: dict) -> Iterator[dict]:
    for chunk, logits in scored:
        true = None if chunk[0].true is None else torch.tensor([t.true for t in chunk])
        for t, row in zip(chunk, predictions.rows("classify", logits, [t.id for t in chunk], meta, true)):
            yield {"id": row.pop("id"), "text": t.text, "unknown": t.unknown, **row}


def _table(r: Any, scored: list[tuple[list[Text], torch.Tensor]], top_k: int, lines_given: bool) -> int:
    texts = [t for chunk, _ in scored for t in chunk]
    if not texts:
        raise UserError("--input: every line is blank or has no tokens once tokenized; nothing to classify")
    probs = torch.cat([logits for _, logits in scored]).softmax(-1)
    columns = {"input": [t.id if isinstance(t.id, str) else f"line {t.id}" for t in texts]} if lines_given else {}
    columns["text"] = [t.text if len(t.text) <= 120 else t.text[:119] + "…" for t in texts]
    columns["unknown"] = [f"{t.unknown}/{len(t.tokens)}" for t in texts]
    true = None if texts[0].true is None else [int(t.true) for t in texts if t.true is not None]
    predictions.show_classes(f"{r.title}: predictions", probs, r.ckpt["meta"]["class_names"], top_k, columns, true)
    return len(texts)


def _say(notes: Notes, meta: dict) -> None:
    console = make_console(stderr=True)
    if notes.skipped:
        shown = ", ".join(notes.skipped[:5]) + (f" and {len(notes.skipped) - 5} more" if len(notes.skipped) > 5 else "")
        console.print(f"skipped {len(notes.skipped)} text(s) with no tokens once tokenized: {shown}", highlight=False)
    if notes.cut:
        console.print(f"{notes.cut} text(s) longer than max_len={meta['max_len']} tokens were cut to their first "
                      f"{meta['max_len']}, as in training", highlight=False)
