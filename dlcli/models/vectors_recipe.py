"""model.pretrained_embeddings=skipgram:gutenberg: word vectors that dl makes itself, once, and reuses.

A recipe is `MODEL:DATASET [override ...]` with MODEL cbow or skipgram: the `dl train` command line that makes the
vectors (`skipgram:corpus dataset.path=book.txt trainer.epochs=3`). The first model that names it runs that training in
a process of its own (the public `python -m dlcli train`: nothing here imports the commands layer) into the cache,
`<cache>/vectors/<model>-<dataset>-<digest>/`, keyed by the recipe's words and the data folder ($DL_DATA_DIR); every
later model, in this process or another, reads that run's vectors.txt. A changed corpus at the same place is not
noticed: delete the entry (the line that made it says where) to make it again.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from dlcli.base.console import make_console
from dlcli.base.errors import UserError

KEY = "model.pretrained_embeddings"
RECIPE = re.compile(r"^(skipgram|cbow):(\w+)(?:\s+(.*))?$", re.DOTALL)
# what torchrun / a launcher sets for its processes: the recipe's training is a process of its own, not a rank
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
                    "MASTER_PORT", "DL_RUN_DIR_HELD")
LAUNCH_PREFIXES = ("TORCHELASTIC_", "SUBMITIT_")


def is_recipe(value: str) -> bool:
    return RECIPE.match(value.strip()) is not None


def recipe_vectors(value: str) -> Path:
    """The vectors.txt the recipe makes: from the cache, or trained now (then cached)."""
    model, dataset, rest = RECIPE.match(value.strip()).groups()
    overrides = shlex.split(rest or "")
    if any("=" not in o or o.startswith(("model=", "dataset=", "hydra.")) for o in overrides):
        raise UserError(f"{KEY}={value}: after MODEL:DATASET come key=value overrides of that training "
                        "(not model=, dataset= or hydra.*), e.g. 'skipgram:gutenberg trainer.epochs=2'")
    entry = _cache_root() / "vectors" / f"{model}-{dataset}-{_digest(model, dataset, overrides)}"
    done = entry / "vectors.txt"
    if done.is_file():
        return done
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.with_name(entry.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process making the same vectors: wait for it, then reuse them
        if not done.is_file():
            _train(value, [f"model={model}", f"dataset={dataset}", *overrides], entry)
    return done


def _cache_root() -> Path:
    # data/cache.py's rule ($DL_CACHE_DIR, else $XDG_CACHE_HOME/dlcli): the models layer cannot import the data layer
    where = os.environ.get("DL_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "dlcli"
    return Path(where).expanduser()


def _digest(model: str, dataset: str, overrides: list[str]) -> str:
    data_dir = str(Path(os.environ.get("DL_DATA_DIR") or "data").expanduser().resolve())
    return hashlib.blake2b(repr((model, dataset, overrides, data_dir)).encode(), digest_size=6).hexdigest()


def _train(value: str, args: list[str], entry: Path) -> None:
    """`dl train ARGS` into a fresh folder beside the entry, renamed to it once complete (never half an entry)."""
    staging = entry.with_name(f".{entry.name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    command = ["dl", "train", *args, "trainer.plots=false", "trainer.summary=false"]
    make_console(stderr=True).print(f"pretrained: making the vectors of {value!r} once: {shlex.join(command)} "
                                    f"(cached in {entry})", highlight=False)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES and not k.startswith(LAUNCH_PREFIXES)}
    try:
        code = subprocess.run([sys.executable, "-m", "dlcli", *command[1:], f"hydra.run.dir={staging}"], env=env,
                              stdin=subprocess.DEVNULL).returncode
        if code != 0 or not (staging / "vectors.txt").is_file():
            raise UserError(f"{KEY}={value}: making the vectors failed ({shlex.join(command)} exited {code}; its "
                            "output is above)")
        os.replace(staging, entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
