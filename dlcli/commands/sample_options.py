"""dl sample's options, checked against the checkpoint: each applies to some task kinds only and has a range.
An option given for another kind (--prompt to a classifier, --beam to a language model) is an error naming the kinds it
applies to, never silently ignored."""

from __future__ import annotations

from typing import Any

from dlcli.base.errors import UserError
from dlcli.config.schema import Number

MAX_NEW_TOKENS = 10_000  # the longest generation dl sample makes (streamed as it goes)
KINDS = {"classify": "classifiers", "regress": "regressors", "tag": "sequence taggers", "lm": "language models",
         "seq2seq": "encoder-decoders", "embedding": "word embeddings"}
NOT_EMBEDDING = {"classify", "regress", "tag", "lm", "seq2seq"}
ROWS = {"classify", "regress", "lm", "seq2seq", "embedding"}  # the kinds that write rows: --out FILE, --json

# option -> (the kinds of checkpoint it applies to, its range or None)
OPTIONS: dict[str, tuple[set[str], Number | None]] = {
    "--input": ({"classify", "regress", "seq2seq", "embedding"}, None),
    "--num-samples": (NOT_EMBEDDING, Number(integer=True, low=1, high=10_000)),
    "--out": (ROWS, None),
    "--json": (ROWS, None),
    "--force": (ROWS, None),
    "--seed": (NOT_EMBEDDING, Number(integer=True, low=0, high=2**32 - 1)),
    "--prompt": ({"lm"}, None),
    "--prompt-file": ({"lm"}, None),
    "--max-new-tokens": ({"lm", "seq2seq"}, Number(integer=True, low=1, high=MAX_NEW_TOKENS)),
    "--temperature": ({"lm"}, Number(low=0, high=100)),
    "--top-k": ({"lm", "classify"}, Number(integer=True, low=1)),
    "--top-p": ({"lm"}, Number(low=0, high=1, low_open=True)),
    "--beam": ({"seq2seq"}, Number(integer=True, low=1, high=64)),
    "--length-penalty": ({"seq2seq"}, Number(low=0, high=10)),
    "--attention-plot": ({"seq2seq"}, None),
    "--word": ({"embedding"}, None),
    "--analogy": ({"embedding"}, None),
    "--topn": ({"embedding"}, Number(integer=True, low=1, high=10_000)),
}
# options that mean something different to each kind they apply to: what the refusal says instead of the kinds' names
MEANINGS = {"--top-k": "language models (sample from the k likeliest tokens) and classifiers (show the k likeliest "
                       "classes)"}
# what each kind uses when an option is not given
DEFAULTS: dict[str, dict[str, Any]] = {
    "classify": {"--top-k": 3},  # at most the number of classes
    "lm": {"--num-samples": 1, "--max-new-tokens": 300, "--temperature": 1.0},
    "seq2seq": {"--num-samples": 10, "--beam": 1, "--length-penalty": 0.6},
    "embedding": {"--topn": 10},
}


def check_ranges(given: dict[str, Any]) -> None:
    """Each numeric option on its own, before anything is loaded."""
    for option, value in given.items():
        rule = OPTIONS[option][1]
        if rule is not None and value is not None and rule.problem(value):
            raise UserError(f"{option} {value}: must be {rule.describe()}")


def options_for(kind: str, given: dict[str, Any]) -> dict[str, Any]:
    """The options for a checkpoint of this kind (given ones, then the kind's defaults); an option that does not
    apply to it is an error."""
    for option, value in given.items():
        kinds = OPTIONS[option][0]
        if value is not None and kind not in kinds:
            applies = [name for k, name in KINDS.items() if k in kinds]
            listed = ", ".join(applies[:-1]) + " and " + applies[-1] if len(applies) > 1 else applies[0]
            raise UserError(f"{option} is for {MEANINGS.get(option, listed)}; this checkpoint is one of the "
                            f"{KINDS.get(kind, kind)}")
    base = {"--num-samples": 10, "--seed": 0, **DEFAULTS.get(kind, {})}
    return {**base, **{k: v for k, v in given.items() if v is not None}}
