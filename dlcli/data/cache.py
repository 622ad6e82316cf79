"""Where dl keeps what it derives from the user's data (decoded images, token ids), so a second run starts at once.

Never inside the user's data folder: dataset.cache_dir, else $DL_CACHE_DIR, else $XDG_CACHE_HOME/dlcli (~/.cache/dlcli).
Entries are named by a digest of what they were made from; a changed source gets a new entry, never a stale one.
An entry of several arrays (a corpus: word ids and sentence starts) is `<name>.<array>` files plus `<name>.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


def cache_dir(cfg: Any, kind: str) -> Path:
    """The folder for one kind of cache entry ("images", "tokens")."""
    where = cfg.get("cache_dir") or os.environ.get("DL_CACHE_DIR")
    if not where:
        where = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "dlcli"
    return Path(where).expanduser() / kind


def content_digest(path: Path, *settings: Any) -> str:
    """A digest of a file's bytes and the settings that shape what is derived from it (blake2b: ~1 GB/s here)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    h.update(repr(settings).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------- entries of several arrays (corpora)
def array_file(entry: Path, name: str) -> Path:
    return entry.parent / f"{entry.name}.{name}"


@contextmanager
def new_entry(entry: Path, names: list[str]) -> Iterator[dict[str, BinaryIO]]:
    """Binary files `<entry>.<name>` to write, made as temp files beside them and moved into place when the block ends
    (all removed if it raises): a stopped run leaves no half entry. Write the entry's meta (write_meta) after: last."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    temps: list[Path] = []
    files: dict[str, BinaryIO] = {}
    try:
        for name in names:
            fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=f".{entry.name}.{name}.", suffix=".tmp")
            temps.append(Path(tmp))
            files[name] = os.fdopen(fd, "wb")
        yield files
        for f in files.values():
            f.close()
        for name, tmp in zip(names, temps):
            os.replace(tmp, array_file(entry, name))
    except BaseException:
        for f in files.values():
            f.close()
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise


def write_meta(entry: Path, meta: dict, arrays: dict[str, tuple[np.dtype, int]]) -> None:
    """The entry's description, written last: its presence says the arrays (name -> dtype, length) are whole."""
    record = {**meta, "arrays": {k: [np.dtype(t).name, int(n)] for k, (t, n) in arrays.items()}}
    array_file(entry, "json").write_text(json.dumps(record))


def map_entry(entry: Path) -> tuple[dict, dict[str, np.ndarray]] | None:
    """An entry's meta and its arrays, memory-mapped (read only); None when it is absent or not whole (a run stopped
    while writing it: it is made again)."""
    try:
        meta = json.loads(array_file(entry, "json").read_text())
        arrays = {}
        for name, (dtype, n) in meta.pop("arrays").items():
            path = array_file(entry, name)
            if path.stat().st_size != n * np.dtype(dtype).itemsize:
                return None
            # (an empty file cannot be mapped)
            arrays[name] = np.memmap(path, dtype=dtype, mode="r") if n else np.zeros(0, dtype)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta, arrays
