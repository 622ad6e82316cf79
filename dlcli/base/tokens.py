"""The special tokens every vocabulary of dl's sequence tasks starts with (ids 0-3), shared by data and models, and
the one message for tokens a model never saw."""

from __future__ import annotations

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
PAD, BOS, EOS, UNK = range(4)


def unknown_tokens(tokens: list[str], vocab: list[str], level: str, what: str, which: str = "vocabulary") -> str | None:
    """The one line for tokens a model never saw (None when it knows them all): how many, which, and its
    vocabulary (the characters themselves, or how many words)."""
    known = set(vocab)
    unknown = sorted({t for t in tokens if t not in known})
    if not unknown:
        return None
    shown = ", ".join(repr(t) for t in unknown[:10])
    listing = "".join(vocab) if level == "char" else f"{len(vocab)} words"
    return f"{what} has {len(unknown)} token(s) the model never saw: {shown}; its {which} is {listing!r}"
