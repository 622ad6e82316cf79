"""Where dl keeps what it derives from the user's data (decoded images, token ids), so a second run starts at once.

Never inside the user's data folder: dataset.cache_dir, else $DL_CACHE_DIR, else $XDG_CACHE_HOME/dlcli (~/.cache/dlcli).
Entries are named by a digest of what they were made from; a changed source gets a new entry, never a stale one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any


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
