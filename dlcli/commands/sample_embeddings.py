"""`dl sample` for word embeddings: the words nearest a word or a vector sum ("king - man + woman")."""

from __future__ import annotations

from rich.table import Table
from torch import Tensor

from dlcli.base.console import make_console
from dlcli.base.errors import UserError
from dlcli.base.targets import model_name
from dlcli.commands.restore import Restored
from dlcli.data.word_vectors import neighbours, unit_rows


def sample_embeddings(r: Restored, word: str | None, analogy: str | None, topn: int) -> None:
    """`dl sample CKPT [--word W | --analogy "king - man + woman"] [--topn N]`: ranked words with cosine."""
    vocab = r.ckpt["meta"]["vocab"]
    index = {w: i for i, w in enumerate(vocab)}
    unit = unit_rows(r.model.vectors())
    lower = r.ckpt["meta"].get("lowercase", True)
    console = make_console()
    queries: list[tuple[str, Tensor, list[int]]] = []
    if analogy:
        terms = parse_analogy(analogy, lower)
        missing = [w for _, w in terms if w not in index]
        if missing:
            raise UserError(f"--analogy {analogy!r}: not in the vocabulary: {', '.join(missing)}")
        q = sum(sign * unit[index[w]] for sign, w in terms)
        queries.append((analogy, q, [index[w] for _, w in terms]))
    words = [word] if word else ([] if analogy else r.cfg.dataset.get("probes") or vocab[:5])
    for w in words:
        w = w.lower() if lower else w
        if w not in index:
            raise UserError(f"--word {w}: not in the vocabulary ({len(vocab)} words, e.g. "
                            f"{', '.join(vocab[:8])})")
        queries.append((w, unit[index[w]], [index[w]]))
    for label, q, exclude in queries:
        table = Table(title=f"{model_name(r.cfg.model)}: nearest to {label}", title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("word")
        table.add_column("cosine", justify="right")
        for i, (w, s) in enumerate(neighbours(unit, vocab, q[None], [exclude], topn)[0], 1):
            table.add_row(str(i), w, f"{s:.4f}")
        console.print(table)


def parse_analogy(text: str, lowercase: bool) -> list[tuple[int, str]]:
    """'king - man + woman' -> [(+1, king), (-1, man), (+1, woman)]."""
    tokens = text.replace("+", " + ").replace("-", " - ").split()
    terms, sign = [], 1
    expect_word = True
    for t in tokens:
        if t in "+-":
            if expect_word:
                raise UserError(f"--analogy {text!r}: two operators in a row; write it like 'king - man + woman'")
            sign, expect_word = (1 if t == "+" else -1), True
            continue
        if not expect_word:
            raise UserError(f"--analogy {text!r}: put + or - between words, e.g. 'king - man + woman'")
        terms.append((sign, t.lower() if lowercase else t))
        expect_word = False
    if not terms or expect_word:
        raise UserError(f"--analogy {text!r}: write words joined by + and -, e.g. 'king - man + woman'")
    return terms
