"""`dl export CKPT`: a word2vec checkpoint's vectors in the word2vec text or binary format (gensim reads both)."""

from __future__ import annotations

from pathlib import Path

from dlcli.base.console import make_console
from dlcli.base.errors import UserError
from dlcli.base.targets import model_name
from dlcli.commands.restore import restore
from dlcli.data.word_vectors import save_word2vec


def export_cli(path: str, overrides: list[str], binary: bool, out: str | None, force: bool = False) -> Path:
    """`dl export CKPT [--binary] [--out FILE] [--force]`: the word vectors in word2vec format. The run's own
    vectors.txt/.bin is dl's to rewrite; any other existing file only with --force."""
    r = restore(path, overrides)
    if r.ckpt["meta"].get("kind") != "embedding":
        raise UserError(f"{path}: dl export writes word vectors; this is a {model_name(r.cfg.model)} checkpoint "
                        "(train model=skipgram or model=cbow)")
    default = r.path.parent.parent / ("vectors.bin" if binary else "vectors.txt")
    dest = Path(out).expanduser() if out else default
    if dest.is_dir():
        raise UserError(f"--out {out}: that is a directory; name a file, e.g. --out {dest / default.name}")
    if dest.exists() and not force and dest.resolve() != default.resolve():
        raise UserError(f"--out {out}: the file exists; add --force to replace it, or name another file "
                        "(nothing was written)")
    try:
        save_word2vec(dest, r.ckpt["meta"]["vocab"], r.model.vectors(), binary=binary)
    except OSError as e:
        raise UserError(f"--out {dest}: cannot write it ({e.strerror}); name a file in a directory you can "
                        "write") from None
    make_console().print(f"wrote {len(r.ckpt['meta']['vocab'])} vectors to {dest}")
    return dest
